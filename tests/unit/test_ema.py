import math

import torch
from torch import nn

from distgan.ema import ema_beta, make_ema, update_ema


def test_halflife_in_images():
    beta = ema_beta(batch_images=100, halflife_images=1000)
    assert math.isclose(beta ** 10, 0.5, rel_tol=1e-9)  # 10 updates of 100 images = one half-life


def test_rampup_caps_halflife_early():
    early = ema_beta(100, 10_000, images_seen=1000, rampup=0.05)   # half-life capped at 50 images
    late = ema_beta(100, 10_000, images_seen=10**7, rampup=0.05)
    assert math.isclose(early, 0.5 ** 2, rel_tol=1e-9)
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
