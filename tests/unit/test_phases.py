"""Algorithm 1 ordering on the real trainer: k D updates (each on fresh data and noise), then one G update."""

import pytest
import torch

from distgan.config import load
from distgan.trainer import Trainer


class RecordingTrainer(Trainer):
    """The two documented data hooks overridden to record what each step asks for, while ``record`` is set."""

    record: dict | None = None

    def real_batch(self, global_batch_index, micro_index):
        if self.record is not None:
            self.record["batches"].append(global_batch_index)
        return super().real_batch(global_batch_index, micro_index)

    def noise(self, n):
        z = super().noise(n)
        if self.record is not None:
            self.record["noises"].append(z)
        return z


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, data_dir):
    cfg = load(
        None,
        ["train.d_steps=2", "train.batch_size=20", "train.progress=false", "wandb.mode=disabled"],
        env={"DISTGAN_DATA_DIR": data_dir},
    )
    return RecordingTrainer(cfg, tmp_path_factory.mktemp("run"))


def snapshot(m):
    return [p.detach().clone() for p in m.parameters()]


def changed(before, m):
    return any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_d_step_changes_d_not_g(trainer):
    g0, d0 = snapshot(trainer.G.module), snapshot(trainer.D.module)
    trainer.G.opt.zero_grad(set_to_none=True)
    trainer.gan.d_step([trainer.real_batch(0, 0)], [trainer.noise(trainer.micro_sizes[0])])
    assert changed(d0, trainer.D.module) and not changed(g0, trainer.G.module)
    assert all(p.grad is None for p in trainer.G.module.parameters()), "D's phase built a graph for G"


def test_g_step_changes_g_not_d(trainer):
    g0 = snapshot(trainer.G.module)
    trainer.gan.d_step([trainer.real_batch(0, 0)], [trainer.noise(trainer.micro_sizes[0])])  # D has momentum now
    d1 = snapshot(trainer.D.module)
    trainer.D.opt.zero_grad(set_to_none=True)
    trainer.gan.g_step([trainer.noise(trainer.micro_sizes[0])])
    assert changed(g0, trainer.G.module) and not changed(d1, trainer.D.module)
    assert all(p.grad is None for p in trainer.D.module.parameters()), "G's phase computed D gradients"
    assert all(p.requires_grad for p in trainer.D.module.parameters()), "D left frozen after G's phase"


def test_k_d_updates_then_one_g_update_on_fresh_batches(trainer):
    order, batches, noises = [], [], []
    hooks = [
        trainer.D.opt.register_step_post_hook(lambda *a: order.append("D")),
        trainer.G.opt.register_step_post_hook(lambda *a: order.append("G")),
    ]
    trainer.record = {"batches": batches, "noises": noises}
    try:
        trainer.train_step(3)
        trainer.train_step(4)
    finally:
        for h in hooks:
            h.remove()
        trainer.record = None
    assert order == ["D", "D", "G", "D", "D", "G"]
    assert batches == [6, 7, 8, 9]  # a fresh global batch for every D update
    assert len(noises) == 6 and all(not torch.equal(a, b) for i, a in enumerate(noises) for b in noises[i + 1 :])


def test_step_is_reproducible_from_seed_rank_step(trainer):
    torch.manual_seed(123)  # whatever the global state, a step draws from (seed, rank, step)
    state = {k: v.clone() for k, v in trainer.G.module.state_dict().items()}
    d_state = {k: v.clone() for k, v in trainer.D.module.state_dict().items()}
    g_opt, d_opt = trainer.G.opt.state_dict(), trainer.D.opt.state_dict()
    import copy

    g_opt, d_opt = copy.deepcopy(g_opt), copy.deepcopy(d_opt)
    trainer.train_step(10)
    after = [p.clone() for p in trainer.G.module.parameters()]
    trainer.G.module.load_state_dict(state)
    trainer.D.module.load_state_dict(d_state)
    trainer.G.opt.load_state_dict(g_opt)
    trainer.D.opt.load_state_dict(d_opt)
    torch.manual_seed(999)
    trainer.train_step(10)
    for a, b in zip(after, trainer.G.module.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 6, 8, 16, 32])
@pytest.mark.parametrize("batch, accum", [(100, 1), (64, 1), (100, 3)])
def test_batch_layout_at_every_world_size_the_readme_names(world, batch, accum):
    """Any world size up to the batch: shares differ by at most one image, tile the global batch, and the
    loss weights make DDP's average of rank gradients the mean over the global batch (sum of w / W = 1)."""
    from distgan.data.sampler import BatchLayout

    if batch < world * accum:
        with pytest.raises(Exception, match="smaller than world size"):
            BatchLayout(batch, 0, world, accum)
        return
    layouts = [BatchLayout(batch, r, world, accum) for r in range(world)]
    sizes = layouts[0].rank_sizes
    assert sum(sizes) == batch and max(sizes) - min(sizes) <= 1
    assert [lay.rank_starts[r] for r, lay in enumerate(layouts)] == [sum(sizes[:r]) for r in range(world)]
    for lay in layouts:
        assert sum(lay.micro_sizes) == lay.per_rank and min(lay.micro_sizes) >= 1
    total = sum(sum(lay.loss_weights) for lay in layouts) / world
    assert total == pytest.approx(1.0, rel=1e-12)
    if batch % (world * accum) == 0:  # an even split weighs every micro-step 1/A, exactly as before
        assert all(w == 1 / accum for lay in layouts for w in lay.loss_weights)
