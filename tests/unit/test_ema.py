import math

import torch
from torch import nn

from distgan.ema import ema_beta, make_ema, recalibrate_batchnorm, update_ema


def test_halflife_in_images():
    beta = ema_beta(batch_images=100, halflife_images=1000)
    assert math.isclose(beta**10, 0.5, rel_tol=1e-9)  # 10 updates of 100 images = one half-life


def test_rampup_caps_halflife_early():
    early = ema_beta(100, 10_000, images_seen=1000, rampup=0.05)  # half-life capped at 50 images
    late = ema_beta(100, 10_000, images_seen=10**7, rampup=0.05)
    assert math.isclose(early, 0.5**2, rel_tol=1e-9)
    assert math.isclose(late, 0.5 ** (100 / 10_000), rel_tol=1e-9)


def test_update_is_a_lerp_and_copies_buffers():
    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    e = make_ema(m)
    assert all(not p.requires_grad for p in e.parameters())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
        m[1].running_mean.fill_(3.0)
    before = [p.clone() for p in e.parameters()]
    update_ema(e, m, beta=0.75)
    for b, pe, pm in zip(before, e.parameters(), m.parameters()):
        torch.testing.assert_close(pe, 0.75 * b + 0.25 * pm)
    assert torch.equal(e[1].running_mean, m[1].running_mean)


def test_batchnorm_recalibration_gives_the_average_net_its_own_statistics():
    from distgan.networks.dcgan import DCGANGenerator28

    torch.manual_seed(0)
    G = DCGANGenerator28(z_dim=8, width=4)
    ema = make_ema(G)
    with torch.no_grad():  # the live net moves on; the average keeps the old weights but copies G's buffers
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        G.train()
        G(torch.randn(32, 8))
    update_ema(ema, G, beta=1.0)
    bn = ema.fc[1]
    assert torch.equal(bn.running_mean, G.fc[1].running_mean)

    batches = [torch.randn(16, 8) for _ in range(3)]
    seen = []
    h = ema.fc[0].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    assert recalibrate_batchnorm(ema, batches)
    h.remove()
    expect_mean = torch.stack([o.mean(0) for o in seen]).mean(0)
    expect_var = torch.stack([o.var(0, unbiased=True) for o in seen]).mean(0)
    torch.testing.assert_close(bn.running_mean, expect_mean)
    torch.testing.assert_close(bn.running_var, expect_var)
    assert not torch.allclose(bn.running_mean, G.fc[1].running_mean)
    assert bn.momentum == G.fc[1].momentum and not ema.training  # settings restored
    assert int(bn.num_batches_tracked) == 3


def test_batchnorm_recalibration_leaves_nets_without_batchnorm_alone():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    before = [p.clone() for p in net.parameters()]
    assert not recalibrate_batchnorm(net, [torch.randn(2, 4)])
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_trainer_recalibrates_only_the_average_and_only_for_output(tmp_path, data_dir):
    """Grids and checkpoints see recomputed statistics; G, D and the EMA weights train exactly as without."""
    from distgan.checkpoint import load_weights
    from distgan.config import load
    from distgan.trainer import Trainer

    common = [
        "model.generator=dcgan28",
        "model.discriminator=dcgan28",
        "model.width=8",
        "model.noise=normal",
        "train.batch_size=16",
        "train.max_steps=4",
        "train.sample_every=2",
        "train.ckpt_every=2",
        "train.log_every=2",
        "train.progress=false",
        "wandb.mode=disabled",
    ]
    runs = {}
    for n in (0, 5):
        cfg = load(None, [*common, f"ema.bn_batches={n}"], env={"DISTGAN_DATA_DIR": data_dir})
        runs[n] = Trainer(cfg, tmp_path / f"bn{n}")
        runs[n].train()
    a, b = runs[0], runs[5]
    for x, y in zip(
        [*a.G.module.state_dict().values(), *a.D.module.state_dict().values()],
        [*b.G.module.state_dict().values(), *b.D.module.state_dict().values()],
    ):
        assert torch.equal(x, y)
    for x, y in zip(a.G_ema.parameters(), b.G_ema.parameters()):
        assert torch.equal(x, y)
    bn_a, bn_b = a.G_ema.fc[1], b.G_ema.fc[1]
    assert torch.equal(bn_a.running_mean, a.G.module.fc[1].running_mean)  # bn_batches=0: G's statistics
    assert not torch.allclose(bn_b.running_mean, bn_a.running_mean)
    saved = make_ema(b.G.module)
    load_weights(b.run_dir / "checkpoints" / "step-000000004", "G_ema.safetensors", saved)
    assert torch.equal(saved.fc[1].running_mean, bn_b.running_mean)
