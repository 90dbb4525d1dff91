"""The private torch APIs distgan relies on, in one place, each with why it is needed.

``tests/unit/test_torch_private.py`` calls every one of them, so a torch release that removes or changes
one fails there, loudly and by name, instead of deep inside a training run.
"""

from __future__ import annotations

import torch


def non_finite_flag(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A float32 0-d tensor on the tensors' device: 1.0 if any element is inf or NaN, else 0.0.

    Why private: ``torch._amp_foreach_non_finite_check_and_unscale_`` is the one kernel that checks a list
    of tensors on the device without a host sync (GradScaler's own check); the public alternatives
    (``torch.isfinite(t).all()`` per tensor) launch two kernels per tensor. Multiplying by 1 is exact.
    """
    if not tensors:
        return torch.zeros(())
    dev = tensors[0].device
    found = torch.zeros((), device=dev)
    if dev not in _ONES:
        _ONES[dev] = torch.ones((), device=dev)
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, _ONES[dev])
    return found


_ONES: dict = {}


def fused_optimizer_devices() -> list[str]:
    """Device types with fused Adam/SGD kernels (one kernel for all tensors, and an on-device skip).

    Why private: ``torch.utils._foreach_utils._get_fused_kernels_supported_devices`` is where torch keeps
    that list; asking for ``fused=True`` elsewhere raises.
    """
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return list(_get_fused_kernels_supported_devices())


def fused_step_unless(opt: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """Step a fused Adam/SGD unless ``found_inf`` (a float32 0-d tensor on the parameters' device) is 1: the
    kernel skips the update on the device (parameters, moments and step count untouched), no host sync.

    Why private: fused optimizers read an undocumented ``found_inf`` attribute of the optimizer (set by
    ``GradScaler.step`` together with ``grad_scale``); there is no public argument. The attribute is removed
    afterwards, so no GradScaler later finds one it did not set (it would compute ``scale * None``).
    """
    if not opt.defaults.get("fused"):
        raise ValueError(f"{type(opt).__name__} is not fused: only fused optimizers read found_inf")
    opt.found_inf = found_inf
    try:
        opt.step()
    finally:
        del opt.found_inf


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One contiguous 1-d tensor holding ``tensors`` (so one all-reduce moves them all).

    Why private: ``torch._utils._flatten_dense_tensors`` is what DDP's own bucketing uses; ``torch.cat``
    of flattened views does the same at the cost of a Python loop.
    """
    return torch._utils._flatten_dense_tensors(tensors)


def unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped like ``like`` (the inverse of :func:`flatten`)."""
    return list(torch._utils._unflatten_dense_tensors(flat, like))


def inductor_fallback_random() -> None:
    """Make inductor draw random numbers (dropout) as eager does (compile.fallback_random).

    Why private: ``torch._inductor.config.fallback_random`` is inductor's own switch; there is no public one.
    """
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config, "fallback_random"):
        raise AttributeError("torch._inductor.config.fallback_random is gone")
    inductor_config.fallback_random = True


def is_batchnorm(module: torch.nn.Module) -> bool:
    """BatchNorm of any dimension, SyncBatchNorm included.

    Why private: ``torch.nn.modules.batchnorm._BatchNorm`` is their one common base class.
    """
    return isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def lerp_(targets: list[torch.Tensor], sources: list[torch.Tensor], weight: float) -> None:
    """``t += weight * (s - t)`` for every pair, in one kernel (the EMA update).

    Why private: ``torch._foreach_lerp_`` is the multi-tensor kernel; a Python loop launches one per tensor.
    """
    torch._foreach_lerp_(targets, sources, weight)


def copy_(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """Copy every source into its target in one kernel (BatchNorm statistics into the EMA)."""
    torch._foreach_copy_(targets, sources)


def dispatch_mode():
    """torch's TorchDispatchMode base class (distgan.bench counts the operations a step dispatches).

    Why private: ``torch.utils._python_dispatch`` is where it lives; there is no public alias.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode
