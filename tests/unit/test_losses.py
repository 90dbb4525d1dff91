import math

import torch

from distgan.losses import LOSSES


def sig(t):
    return 1 / (1 + math.exp(-t))


def test_minimax_matches_algorithm_1_by_hand():
    r, f = torch.tensor([0.3, -1.2]), torch.tensor([2.0, -0.5])
    # D ascends log D(x) + log(1 - D(G(z))); its loss is the negative mean.
    expect_d = -sum(math.log(sig(a)) + math.log(1 - sig(b)) for a, b in zip(r.tolist(), f.tolist())) / 2
    assert math.isclose(LOSSES["minimax"].d(r, f).item(), expect_d, rel_tol=1e-6)
    # G descends log(1 - D(G(z))).
    expect_g = sum(math.log(1 - sig(b)) for b in f.tolist()) / 2
    assert math.isclose(LOSSES["minimax"].g(f).item(), expect_g, rel_tol=1e-6)


def test_nonsaturating_g_by_hand():
    f = torch.tensor([2.0, -0.5, 0.0])
    expect = -sum(math.log(sig(b)) for b in f.tolist()) / 3
    assert math.isclose(LOSSES["nonsaturating"].g(f).item(), expect, rel_tol=1e-6)
    assert LOSSES["nonsaturating"].d is LOSSES["minimax"].d


def test_hinge_by_hand():
    r, f = torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.25])
    assert math.isclose(LOSSES["hinge"].d(r, f).item(), ((0.5 + 0) + (0 + 1.25)) / 2, rel_tol=1e-6)
    assert math.isclose(LOSSES["hinge"].g(f).item(), (2.0 - 0.25) / 2, rel_tol=1e-6)


def test_losses_stay_finite_when_saturated():
    big = torch.tensor([80.0, -80.0])
    for loss in LOSSES.values():
        assert torch.isfinite(loss.d(big, -big)) and torch.isfinite(loss.g(big, -big))
    assert LOSSES["nonsaturating"].g(torch.tensor([-80.0])).item() > 79  # -log sigmoid(-80) ~ 80
