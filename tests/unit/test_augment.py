"""Differentiable augmentation (distgan/augment.py): differentiable in the pixels, reaching G, the same
policies on the real and fake halves of every D forward, seeded from (seed, rank, step), and an exact resume
with it on; the probability p per policy and image, and ADA's controller of p (hand-computed moves, logged,
checkpointed: an exact resume mid-interval)."""

import math

import pytest
import torch
from safetensors.torch import load_file

from distgan.augment import AUGMENT_SALT, POLICIES, AdaptiveP, Augment, color, cutout, translation
from distgan.config import ConfigError, load
from distgan.runtime import step_seed
from distgan.trainer import Trainer
from tests.helpers import train_here

TINY = [
    "model.generator=r3gan",
    "model.discriminator=r3gan",
    "model.width=8",
    "model.blocks=1",
    "model.cardinality=4",
    "model.z_dim=16",
    "loss.name=rpgan",
    "loss.r1_gamma=0.1",
    "loss.r2_gamma=0.1",
    "loss.r1_every=1",
    "train.batch_size=8",
    "ema.enabled=false",
    "data.augment=translation,cutout,color",
]


def seeded(policies, seed):
    a = Augment(policies, torch.device("cpu"))
    a.reseed(seed)
    return a


@pytest.mark.parametrize("fn", [color, translation, cutout])
def test_each_policy_is_differentiable_in_the_pixels(fn):
    """gradcheck (float64 central differences) of the image -> augmented image map at fixed random draws."""
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, requires_grad=True)

    def f(t):
        return fn(t, torch.Generator().manual_seed(5))

    assert torch.autograd.gradcheck(f, (x,))
    assert not torch.equal(f(x), x), "the policy left the images unchanged"


def test_policies_do_what_they_say():
    x = torch.arange(2 * 64, dtype=torch.float32).view(2, 1, 8, 8) + 1  # no zero pixel
    g = torch.Generator().manual_seed(0)
    shifted = translation(x, g)
    for i in range(2):  # a whole-pixel shift: every nonzero output pixel is a pixel of the same image
        kept = shifted[i][shifted[i] != 0]
        assert set(kept.tolist()) <= set(x[i].flatten().tolist())
    cut = cutout(x, torch.Generator().manual_seed(0))
    holes = (cut == 0).flatten(1).sum(1)
    assert holes.gt(0).all() and holes.le(16).all()  # at most a 4x4 square of the 8x8 image
    assert torch.equal(cut[cut != 0], x[cut != 0])
    c = color(torch.zeros(4, 3, 8, 8), torch.Generator().manual_seed(0))
    assert c.flatten(1).std(1).max() < 1e-6 and c.flatten(1).mean(1).abs().max() > 0  # brightness shift only


def test_same_seed_same_draws_ranks_and_steps_differ():
    x = torch.randn(6, 3, 16, 16)
    a = lambda rank, step: seeded(POLICIES, step_seed(0, rank, step, AUGMENT_SALT))(x)  # noqa: E731
    assert torch.equal(a(0, 3), a(0, 3))
    assert not torch.equal(a(0, 3), a(1, 3)) and not torch.equal(a(0, 3), a(0, 4))


def test_unknown_policy_fails_at_config_load():
    with pytest.raises(ConfigError, match=r"data.augment='translation,flip'.*unknown augmentation \['flip'\]"):
        load(None, ["data.augment=translation,flip"], env={})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.augment=cutout", "data.augment_p=1.5"], r"data.augment_p=1.5 is a probability"),
        (["data.ada_target=0.6"], r"data.ada_target adapts .* data.augment is empty"),
        (["data.augment=cutout", "data.ada_target=1.2"], r"data.ada_target=1.2: a target"),
        (["data.augment=cutout", "data.ada_target=0.6", "data.ada_interval=0"], r"data.ada_interval=0 must be > 0"),
    ],
)
def test_bad_probability_settings_fail_at_config_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(None, overrides, env={})


def test_probability_per_policy_and_image():
    """p = 0: every image untouched; p = 1 with masks drawn: every image changed; p = 0.5: each image is
    cut out or not, with the count of cut-out images in a binomial(400, 0.5) range of 8 standard deviations."""
    x = torch.randn(400, 1, 8, 8)

    def run(p):
        a = Augment(("cutout",), torch.device("cpu"), p=p, masked=True)
        a.reseed(3)
        return a(x)

    assert torch.equal(run(0.0), x)
    changed = lambda y: (y != x).flatten(1).any(1)  # noqa: E731
    assert changed(run(1.0)).all()
    n = changed(run(0.5)).sum().item()
    assert abs(n - 200) <= 8 * math.sqrt(400 * 0.25), n


def test_ada_controller_moves_p_by_the_sign_of_r_t():
    """Step size = images per step x interval / ada_images; r_t = mean sign of D(x) (of D(x) - D(G(z)) for a
    relativistic loss); p clamped to [0, 1]; the running sums restart after each adjustment."""
    aug = Augment(("cutout",), torch.device("cpu"), p=0.0, masked=True)
    ada = AdaptiveP(aug, target=0.6, interval=4, images=1000, images_per_step=50)  # 0.2 per adjustment
    real, fake = torch.tensor([2.0, 1.0, 0.5, -1.0]), torch.tensor([3.0, 0.0, 0.0, 0.0])
    ada.observe(real, fake)  # r_t = (1 + 1 + 1 - 1) / 4 = 0.5 < 0.6: p would fall, and stays at 0
    ada.adjust()
    assert ada.figures().tolist() == [0.0, 0.5] and ada.sums.tolist() == [0.0, 0.0]
    for _ in range(3):
        ada.observe(real.abs(), fake)  # r_t = 1 > 0.6
        ada.adjust()
    assert ada.figures().tolist() == pytest.approx([0.6, 1.0], abs=1e-6)
    ada.relativistic = True  # signs of 2-3, 1-0, 0.5-0, 1-0: r_t = 0.5
    ada.observe(real.abs(), fake)
    ada.adjust()
    assert ada.figures().tolist() == pytest.approx([0.4, 0.5], abs=1e-6)
    for _ in range(6):
        ada.observe(-real.abs(), fake)
        ada.adjust()
    assert ada.figures().tolist() == pytest.approx([0.0, -1.0])


@pytest.fixture(scope="module")
def aug_trainer(tmp_path_factory, data_dir):
    cfg = load(None, [*TINY, "train.progress=false", "wandb.mode=disabled"], env={"DISTGAN_DATA_DIR": data_dir})
    return Trainer(cfg, tmp_path_factory.mktemp("run"))


def test_d_and_g_phases_judge_augmented_real_and_fake_halves_alike(aug_trainer):
    """What D receives in both phases is augment(cat[real, fake]): one call, the same policies on both
    halves (each image its own draw); and G's gradient passes through the augmentation."""
    tr = aug_trainer
    seen = []
    hook = tr.D.module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        x, z = tr.real_batch(0, 0), tr.noise(8)
        with torch.no_grad():
            fake = tr.G.module(z)
        tr.augment.reseed(7)
        tr.gan.d_step([x], [z])
        tr.augment.reseed(7)
        expect = tr.augment(torch.cat([x, fake]))
        assert torch.equal(seen[0], expect)
        assert not torch.equal(seen[0][:8], x) and not torch.equal(seen[0][8:], fake)  # both halves augmented
        g_before = [p.detach().clone() for p in tr.G.module.parameters()]
        tr.gan.g_step([z], [x])
        assert len(seen) == 2 and seen[1].shape == (16, 1, 28, 28)
        grads = [p.grad for p in tr.G.module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
        assert any(not torch.equal(a, b) for a, b in zip(g_before, tr.G.module.parameters()))
    finally:
        hook.remove()


@pytest.mark.parametrize("ada", [False, True], ids=["fixed-p", "adaptive-p"])
def test_resume_is_exact_with_augmentation_on(tmp_path, data_dir, ada):
    """4 steps straight against 2 steps, a stop, and a resume to 4: the same G and D, bit for bit (an
    augmentation generator whose state carried over from step to step, not reseeded from (seed, rank, step),
    would draw differently after the resume). The comparison can fail: step 2's weights differ from step 4's.
    With ADA (an adjustment every 3 steps: the checkpoint at step 2 holds sums of an unfinished interval),
    also the same p and r_t at step 4, which a resume that dropped the sums would not give."""
    env = {"DISTGAN_DATA_DIR": data_dir, "WANDB_MODE": "disabled"}
    common = [*TINY, "train.ckpt_every=2", "train.log_every=2"]
    if ada:
        common += ["data.ada_target=0.6", "data.ada_interval=3", "data.ada_images=240", "data.augment_p=0.5"]
    train_here(tmp_path / "a", *common, "train.max_steps=4", env=env)
    train_here(tmp_path / "b", *common, "train.max_steps=2", env=env)
    train_here(tmp_path / "b", *common, "train.max_steps=4", "train.resume=auto", env=env)

    def weights(run, step=4):
        d = tmp_path / run / "checkpoints" / f"step-{step:09d}"
        return {f.name: load_file(f) for f in sorted(d.glob("*.safetensors"))}

    a, b, c = weights("a"), weights("b"), weights("a", step=2)
    assert a.keys() == b.keys() and any(k.startswith("G") for k in a)
    for f in a:
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), f"{f}:{k}"
    assert any(not torch.equal(a[f][k], c[f][k]) for f in a for k in a[f])
    if ada:
        state = lambda run, step: torch.load(  # noqa: E731
            tmp_path / run / "checkpoints" / f"step-{step:09d}" / "state.pt", weights_only=True
        )["ada"]
        mid, end, resumed = state("a", 2), state("a", 4), state("b", 4)
        assert mid["sums"][1] == 2 * 8 and mid["p"] == 0.5  # two steps observed, no adjustment yet
        # one adjustment at step 3 of +-(8 images x 3 steps) / 240 = 0.1, on r_t over 24 images; step 4 observed
        assert round(end["p"].item(), 6) in (0.4, 0.6) and end["sums"][1] == 8 and end["rt"] != 0
        for k in end:
            assert torch.equal(end[k], resumed[k]), k
