"""Every private torch API distgan uses (all in distgan/torch_private.py), called once: a torch release that
removes or changes one fails here, by name, not inside a training run."""

import pytest
import torch

from distgan import torch_private as tp


def test_non_finite_flag():
    assert tp.non_finite_flag([torch.ones(3), torch.zeros(2)]).item() == 0.0
    assert tp.non_finite_flag([torch.ones(3), torch.tensor([1.0, float("nan")])]).item() == 1.0
    assert tp.non_finite_flag([torch.tensor([float("inf")])]).item() == 1.0


def test_fused_optimizer_devices_lists_the_cpu_and_cuda():
    devices = tp.fused_optimizer_devices()
    assert "cpu" in devices and "cuda" in devices


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_fused_step_unless_skips_in_the_kernel(kind):
    """The fused kernels read ``found_inf``: with finite gradients only it can make them skip. The same call
    with 0 must update (a kernel that ignored the attribute would skip nothing and fail the first check)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    if kind == "adam":
        opt = torch.optim.Adam([p], lr=0.1, fused=True)
    else:
        opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=True)
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)  # as distgan.trainer.build_optimizer
    p.grad = torch.ones(5)
    before = p.detach().clone()
    tp.fused_step_unless(opt, torch.ones(()))
    assert torch.equal(p, before), "found_inf=1 did not skip the update"
    assert not hasattr(opt, "found_inf"), "found_inf left behind for a GradScaler to read"
    if kind == "adam":
        assert opt.state[p]["step"].item() == 0 and torch.equal(opt.state[p]["exp_avg"], torch.zeros(5))
    else:
        assert torch.equal(opt.state[p]["momentum_buffer"], torch.zeros(5))
    tp.fused_step_unless(opt, torch.zeros(()))
    assert not torch.equal(p, before), "found_inf=0 skipped the update"
    assert not hasattr(opt, "found_inf")
    if kind == "adam":
        assert opt.state[p]["step"].item() == 1


def test_fused_step_unless_refuses_an_unfused_optimizer():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="not fused"):
        tp.fused_step_unless(torch.optim.SGD([p], lr=0.1, foreach=True), torch.zeros(()))


def test_flatten_round_trip():
    ts = [torch.randn(3, 2), torch.randn(5)]
    flat = tp.flatten(ts)
    assert flat.shape == (11,)
    assert all(torch.equal(a, b) for a, b in zip(tp.unflatten(flat, ts), ts))


def test_foreach_lerp_and_copy():
    a, b = [torch.zeros(3)], [torch.ones(3)]
    tp.lerp_(a, b, 0.25)
    assert torch.equal(a[0], torch.full((3,), 0.25))
    tp.copy_(a, b)
    assert torch.equal(a[0], b[0])


def test_is_batchnorm_knows_every_kind():
    assert tp.is_batchnorm(torch.nn.BatchNorm1d(2)) and tp.is_batchnorm(torch.nn.BatchNorm2d(2))
    assert tp.is_batchnorm(torch.nn.SyncBatchNorm(2)) and not tp.is_batchnorm(torch.nn.LayerNorm(2))


def test_inductor_fallback_random_switch_exists():
    import torch._inductor.config as inductor_config

    before = inductor_config.fallback_random
    try:
        tp.inductor_fallback_random()
        assert inductor_config.fallback_random is True
    finally:
        inductor_config.fallback_random = before


def test_dispatch_mode_sees_operations():
    seen = []

    class Mode(tp.dispatch_mode()):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Mode():
        torch.ones(2) + 1
    assert any("add" in s for s in seen)
