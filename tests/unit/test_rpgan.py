"""RpGAN and the zero-centred gradient penalties R1/R2 (R3GAN's objective): values by hand on tiny nets, the
penalties' parameter gradients against finite differences, and G's phase pairing each fake with a real."""

import math

import pytest
import torch
from torch import nn
from torch.autograd.gradcheck import GradcheckError

from distgan.config import load
from distgan.losses import LOSSES, gradient_penalties
from distgan.trainer import Trainer


def softplus(t):
    return math.log1p(math.exp(t))


def test_rpgan_by_hand_pairs_real_i_with_fake_i():
    r, f = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([2.0, -0.5, 1.0])
    loss = LOSSES["rpgan"]
    # D minimises softplus(-(D(x_i) - D(G(z_i)))), G the same with the roles swapped
    expect_d = sum(softplus(-(a - b)) for a, b in zip(r.tolist(), f.tolist())) / 3
    expect_g = sum(softplus(-(b - a)) for a, b in zip(r.tolist(), f.tolist())) / 3
    assert math.isclose(loss.d(r, f).item(), expect_d, rel_tol=1e-6)
    assert math.isclose(loss.g(f, r).item(), expect_g, rel_tol=1e-6)
    # the pairing matters: the same logits paired otherwise give another loss (the loss is not of the means)
    assert not math.isclose(loss.d(r, f.flip(0)).item(), expect_d, rel_tol=1e-3)
    assert loss.needs_real_in_g and not any(LOSSES[k].needs_real_in_g for k in ("minimax", "nonsaturating", "hinge"))
    with pytest.raises(ValueError, match="pairs each fake with a real"):
        loss.g(f, None)
    big = torch.tensor([80.0, -80.0])
    assert torch.isfinite(loss.d(big, -big)) and torch.isfinite(loss.g(big, -big))


def test_penalties_by_hand_on_a_quadratic_d():
    """D(x) = sum_j a_j x_j^2 + b: grad_x D = 2 a x, so R1 = mean_i sum_j (2 a_j x_ij)^2, R2 alike on fakes."""
    a = torch.tensor([0.5, -1.0, 2.0, 0.25])

    def D(x):
        return (a * x.flatten(1) ** 2).sum(1) + 3.0

    x, y = torch.tensor([[1.0, 2.0, -1.0, 0.0], [0.5, 0.0, 1.0, -2.0]]), torch.tensor([[0.0, 1.0, 1.0, 4.0]])
    r1, r2 = gradient_penalties(D, x.view(2, 1, 2, 2), y.view(1, 1, 2, 2))
    by_hand = [sum((2 * aj * xj) ** 2 for aj, xj in zip(a.tolist(), row)) for row in x.tolist()]
    assert math.isclose(r1.item(), sum(by_hand) / 2, rel_tol=1e-6)
    assert math.isclose(r2.item(), sum((2 * aj * yj) ** 2 for aj, yj in zip(a.tolist(), y[0].tolist())), rel_tol=1e-6)
    r1_only, none = gradient_penalties(D, x.view(2, 1, 2, 2))
    assert none is None and r1_only.item() == r1.item()


def test_penalty_gradients_match_finite_differences():
    """What d_reg_step minimises: the parameter gradients of gamma/2 (R1 + R2) through the double backward,
    against central differences in float64 (torch.autograd.gradcheck, its default eps 1e-6, atol 1e-5)."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 16, 1)).double()
    x, y = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    names = [n for n, _ in D.named_parameters()]

    def objective(*params):
        f = lambda t: torch.func.functional_call(D, dict(zip(names, params)), (t,)).squeeze(1)  # noqa: E731
        r1, r2 = gradient_penalties(f, x, y)
        return 0.5 * r1 + 0.25 * r2

    params = tuple(p.detach().clone().requires_grad_(True) for p in D.parameters())
    assert torch.autograd.gradcheck(objective, params)
    # negative control: the same check fails for a gradient that is off by a factor of 2

    class Halved(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            return g * 0.5  # wrong on purpose

    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(lambda *p: Halved.apply(objective(*p)), params)


@pytest.fixture(scope="module")
def rp_trainer(tmp_path_factory, data_dir):
    cfg = load(
        None,
        [
            "model.generator=r3gan",
            "model.discriminator=r3gan",
            "model.width=8",
            "model.blocks=1",
            "model.cardinality=4",
            "loss.name=rpgan",
            "loss.r1_gamma=1",
            "loss.r2_gamma=2",
            "loss.r1_every=1",
            "train.batch_size=6",
            "train.progress=false",
            "wandb.mode=disabled",
            "ema.enabled=false",
        ],
        env={"DISTGAN_DATA_DIR": data_dir},
    )
    return Trainer(cfg, tmp_path_factory.mktemp("run"))


def test_g_phase_pairs_fakes_with_the_reals_it_is_given(rp_trainer):
    tr = rp_trainer
    x, z = tr.real_batch(0, 0), tr.noise(6)
    with pytest.raises(ValueError, match="pass g_step one real batch per noise"):
        tr.gan.g_step([z])
    with torch.no_grad():
        real_l, fake_l = tr.D.module(torch.cat([x, tr.G.module(z)])).chunk(2)
    expect = LOSSES["rpgan"].g(fake_l, real_l)
    d0 = [p.detach().clone() for p in tr.D.module.parameters()]
    got = tr.gan.g_step([z], [x])
    assert torch.equal(got, expect.reshape(1))
    assert all(torch.equal(a, b) for a, b in zip(d0, tr.D.module.parameters())), "G's phase changed D"
    assert all(p.grad is None for p in tr.D.module.parameters()), "G's phase computed D gradients"


def test_d_reg_step_penalises_the_reals_and_the_last_fakes(rp_trainer):
    """d_reg_step's [R1, R2] are the penalties of the last D update's reals and fakes (kept by d_step since
    R2 is on), and the update moves D."""
    tr = rp_trainer
    assert tr.gan.keep_fakes
    x = tr.real_batch(1, 0)
    tr.gan.d_step([x], [tr.noise(6)])
    (fake,) = tr.gan.last_fakes
    assert fake.shape == x.shape and not fake.requires_grad
    r1, r2 = gradient_penalties(tr.D.module, x, fake)
    d0 = [p.detach().clone() for p in tr.D.module.parameters()]
    got = tr.gan.d_reg_step([x], tr.gan.last_fakes, 1.0, 2.0, 1)
    assert torch.equal(got, torch.stack([r1.detach(), r2.detach()]))
    assert got.gt(0).all() and any(not torch.equal(a, b) for a, b in zip(d0, tr.D.module.parameters()))
