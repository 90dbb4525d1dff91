"""Where distributed, precision and compile concerns live, apart from the training loop (as StyleGAN2-ADA's
``torch_utils``): Accelerator construction, precision and loss scalers, per-(seed, rank, step) seeds,
torch.compile, rank-0-only work, and every collective the loop needs (reductions, broadcasts, the replica
check, RNG capture, stop signals). Nothing else in distgan calls torch.distributed."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import signal
import warnings

import numpy as np
import torch
from torch import nn

from distgan.config import Config
from distgan.errors import ConfigError, LaunchError, ReplicaMismatch
from distgan.torch_private import flatten, inductor_fallback_random, non_finite_flag, unflatten


def build_accelerator(cfg: Config):
    """An Accelerator with mixed precision left to distgan (one loss scaler per network, see phases)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    launcher_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher_mp not in ("", "no"):
        raise ConfigError(
            f"the accelerate launcher asks for mixed_precision={launcher_mp!r}; distgan owns precision: set "
            f"mixed_precision: 'no' in the accelerate config and choose runtime.precision=auto|no|bf16|fp16"
        )
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    if cfg.runtime.keep_host_memory:
        keep_freed_host_memory()
    # accelerate's multi-process launcher does not pass `use_cpu` on to the workers; without cpu=True a
    # CPU-only machine would start processes that never join one group (DistributedType.NO).
    cpu = (
        cfg.runtime.cpu
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        or not torch.cuda.is_available()
    )
    acc = Accelerator(
        cpu=cpu,
        mixed_precision="no",
        kwargs_handlers=[
            InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.runtime.pg_timeout_s)),
            # Every parameter of the module DDP wraps gets a gradient in its own phase, so DDP need not
            # search the graph; buffers (BatchNorm statistics) are broadcast from rank 0 each forward.
            DistributedDataParallelKwargs(find_unused_parameters=False, broadcast_buffers=True),
        ],
    )
    check_world_size(acc.num_processes, cfg.runtime.expected_world_size)
    if acc.device.type == "cuda":
        apply_backend_settings(cuda_backend_settings(cfg))
    return acc


def keep_freed_host_memory() -> bool:
    """glibc's malloc serves a block above its mmap threshold (32 MB at most) with its own mmap and unmaps it
    when it is freed, so a CPU step whose activations are that large (a conv net at batch 64) has the kernel
    fault in and zero every page of them again, step after step: 40% of a width-64 R3GAN step's CPU time was
    in the kernel (docs/results.md). mallopt(M_MMAP_MAX, 0) serves every block from the heap, and a trim
    threshold of 2 GiB keeps what is freed there for the next step. Process-wide and for the rest of the
    process. True where applied; False where the C library is not glibc (musl, macOS)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1


def cuda_backend_settings(cfg: Config) -> dict[str, bool]:
    """The cuBLAS/cuDNN switches a CUDA run sets, as ``{path under torch.backends: value}`` (a pure function
    of the config, so what a GPU run gets is checked without one)."""
    return {
        "cuda.matmul.allow_tf32": cfg.runtime.tf32,
        "cudnn.allow_tf32": cfg.runtime.tf32,
        # the conv nets run fixed shapes: let cuDNN time its algorithms once and keep the fastest
        "cudnn.benchmark": True,
    }


def apply_backend_settings(settings: dict[str, bool]) -> None:
    """Set each ``torch.backends`` switch of ``settings``; a name torch no longer has is an error, not a
    silently created attribute."""
    for key, value in settings.items():
        *path, name = key.split(".")
        obj = torch.backends
        for part in path:
            obj = getattr(obj, part)
        if not hasattr(obj, name):
            raise AttributeError(f"torch.backends.{key} does not exist in torch {torch.__version__}")
        setattr(obj, name, value)


def check_world_size(actual: int, expected_cfg: int = 0, env=None) -> None:
    """Fail loudly when the process group is not what the launcher or the config asked for.

    ``torchrun --nproc_per_node 2`` without the CPU flag (or accelerate's ``--cpu --num_processes 2``)
    starts processes that each believe they are alone: the run would train two unsynchronised models.
    """
    env = os.environ if env is None else env
    launched = int(env.get("WORLD_SIZE", "0") or 0)
    if launched and launched != actual:
        raise LaunchError(
            f"the launcher started WORLD_SIZE={launched} processes but they joined a group of {actual}; on CPU use "
            f"`accelerate launch --config_file launch/cpu_debug.yaml` or set ACCELERATE_USE_CPU=1 with torchrun"
        )
    if expected_cfg and expected_cfg != actual:
        raise LaunchError(f"runtime.expected_world_size={expected_cfg} but the process group has {actual} processes")


def resolve_precision(precision: str, device: torch.device, allow_cpu_fp16: bool = False) -> tuple[str, str]:
    """(precision, why): ``auto`` -> bf16 on a GPU with native bf16, else fp32 ('no'). fp16 needs CUDA,
    or the test-only ``runtime.allow_cpu_fp16`` (CPU float16 autocast and GradScaler("cpu"), so every
    loss-scaler path runs in CI)."""
    if precision == "auto":
        if device.type != "cuda":
            return "no", "auto: no GPU, fp32"
        name = torch.cuda.get_device_name(device)
        # including_emulation=False: V100 and T4 "support" bf16 only by emulation, slower than fp32
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"auto: {name} has native bf16"
        return "no", f"auto: {name} has no native bf16 (fp16 with loss scaling: runtime.precision=fp16), fp32"
    if precision == "fp16" and device.type != "cuda" and not allow_cpu_fp16:
        raise ConfigError(
            "runtime.precision=fp16 needs a CUDA GPU (loss scaling); on the CPU use 'no' or 'bf16' "
            "(runtime.allow_cpu_fp16=true is for tests: CPU float16 is slow)"
        )
    return precision, "runtime.precision"


def autocast(precision: str, device: torch.device):
    if precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device, init_scale: float = 2.0**16):
    """One GradScaler per network for fp16, so D's overflow never skips G's step; None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type, init_scale=init_scale)


def step_generator_index(device: torch.device, current_device=None) -> int | None:
    """Which generator :func:`seed_step` seeds: None for the CPU's default generator, else the index into
    ``torch.cuda.default_generators`` of ``device`` (the current CUDA device when it has no index)."""
    if device.type != "cuda":
        return None
    if device.index is not None:
        return device.index
    return (current_device or torch.cuda.current_device)()


def seed_step(device: torch.device, seed: int) -> None:
    """Seed the generator that noise and dropout of a step draw from: this device's only. (torch.manual_seed
    would also seed every other visible GPU, and initialise their generators, at every step.)"""
    index = step_generator_index(device)
    if index is None:
        torch.default_generator.manual_seed(seed)
    else:
        torch.cuda.default_generators[index].manual_seed(seed)


def found_non_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """1.0 (a 0-d device tensor) if any of ``tensors`` holds an inf or NaN, with no host sync."""

    return non_finite_flag(tensors)


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks, in place (a no-op for one process); returns it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def all_reduce_mean_(tensors):
    """Average a tensor, or a list of tensors (in one flat buffer), over all ranks, in place; returns it."""
    import torch.distributed as dist

    if isinstance(tensors, torch.Tensor):
        dist.all_reduce(tensors)
        return tensors.div_(dist.get_world_size())
    flat = flatten(tensors)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for t, f in zip(tensors, unflatten(flat, tensors)):
        t.copy_(f)
    return tensors


def step_seed(seed: int, rank: int, step: int, salt: int = 0) -> int:
    """A 63-bit seed from (seed, rank, step): noise and dropout of a step do not depend on history."""
    x = (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9 + step * 0x94D049BB133111EB + salt) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
    x ^= x >> 32
    return x & (2**63 - 1)


def compile_options(cfg: Config, device: torch.device | None = None) -> dict:
    """The keyword arguments of ``torch.compile`` for ``cfg.compile`` on ``device``; reduce-overhead (CUDA
    graphs) off CUDA is a ConfigError."""
    if cfg.compile.mode == "reduce-overhead" and device is not None and device.type != "cuda":
        raise ConfigError(
            f"compile.mode=reduce-overhead is CUDA graphs: GPU only, and this run's device is {device}; on the "
            f"CPU use compile.mode=default"
        )
    # dynamic=False: D sees two batch sizes (2B real+fake in its phase, B in G's); with dynamic shapes the
    # second would trigger a recompile into a slower symbolic-shape graph. Two static graphs instead.
    return {"mode": None if cfg.compile.mode == "default" else cfg.compile.mode, "dynamic": False}


def maybe_compile(module: nn.Module, cfg: Config, device: torch.device | None = None) -> nn.Module:
    """torch.compile before DDP wrapping: accelerate's dynamo_backend on a DDP module compiles little."""
    if not cfg.compile.enabled:
        return module
    options = compile_options(cfg, device)
    if cfg.compile.fallback_random:
        inductor_fallback_random()
    return torch.compile(module, **options)


def convert_sync_batchnorm(modules: list[nn.Module], device: torch.device, world: int, enabled: bool) -> list:
    """``modules`` with BatchNorm layers made SyncBatchNorm when ``enabled`` (model.sync_batchnorm) and
    there are several ranks; refused off CUDA (torch's SyncBatchNorm is GPU-only). Unchanged otherwise."""
    if not enabled or world == 1:
        return list(modules)
    if device.type != "cuda":
        raise ConfigError(
            "model.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm is GPU-only); "
            "on CPUs leave it false: BatchNorm statistics are then rank 0's, broadcast by DDP"
        )
    return [nn.SyncBatchNorm.convert_sync_batchnorm(m) for m in modules]


def wrap_ddp(acc, module: nn.Module, device: torch.device) -> nn.Module:
    """``acc.prepare(module)``: DDP over the ranks. On the CPU, DDP's "Grad strides do not match bucket view
    strides" warning is silenced: there it is a false alarm of R1/R2's double backward through oneDNN
    convolutions, whose weight gradients (every 1x1 convolution, the per-channel basis) differ from the
    weights' strides only in dimensions of size 1. Autograd's layout contract ignores those; DDP's check
    compares strides literally. The memory layout, the bucket copy and every result are the same. On CUDA
    the warning stays: with channels_last a mismatch there can be real."""
    if device.type == "cpu":
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides", category=UserWarning)
    return acc.prepare(module)


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last (NHWC) on CUDA, where convolutions use tensor cores without layout transposes;
    contiguous (NCHW) elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def to_memory_format(module: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """``module`` with its 4-d weights in ``memory_format`` if it has convolutions (an MLP is left as it is)."""
    if any(isinstance(x, nn.Conv2d | nn.ConvTranspose2d) for x in module.modules()):
        return module.to(memory_format=memory_format)
    return module


class RankZero:
    """The one place rank-0-only work goes through."""

    def __init__(self, accelerator):
        self.acc = accelerator
        self.main = accelerator.is_main_process
        self.world = accelerator.num_processes

    def print(self, *args, **kwargs):
        if self.main:
            kwargs.setdefault("flush", True)
            print(*args, **kwargs)

    def run(self, fn, *args, **kwargs):
        """``fn`` on rank 0 only, no synchronisation (logging, progress)."""
        return fn(*args, **kwargs) if self.main else None

    def collective(self, fn, *args, **kwargs):
        """``fn`` on rank 0; every rank returns its result or raises its exception (a collective: all call it).

        Without this, a rank-0 failure (a full disk, an unwritable run dir) leaves the other ranks waiting
        at the next collective until the process-group timeout.
        """
        out = [None, None]
        if self.main:
            try:
                out[0] = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                out[1] = e
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(out, from_process=0)
        if out[1] is not None:
            raise out[1]
        return out[0]


def on_every_rank(fn, world: int, error_cls: type[Exception]):
    """``fn()`` on every rank, then agree (a collective: all call it): if it raised on any rank, every rank
    raises, so none goes on to wait for the failed one at the next collective until the timeout.
    A rank that failed raises its own exception; the others ``error_cls`` naming it."""
    result, error = None, None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - re-raised below, here or on the other ranks
        error = e
    failures = gather_objects(None if error is None else f"{type(error).__name__}: {error}", world)
    if error is not None:
        raise error
    failed = [(r, msg) for r, msg in enumerate(failures) if msg is not None]
    if failed:
        raise error_cls("; ".join(f"rank {r} failed: {msg}" for r, msg in failed))
    return result


def leave_process_group() -> None:
    """Destroy the default process group, if there is one; local, no barrier. A process that exits with a
    live gloo group can abort in teardown ("terminate called without an active exception", exit -6)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def backend() -> str:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"


def broadcast_(tensors, src: int = 0) -> None:
    """Rank ``src``'s values of one tensor or a list of tensors on every rank, in place (no-op alone)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for t in [tensors] if isinstance(tensors, torch.Tensor) else tensors:
        dist.broadcast(t, src=src)


def gather_objects(obj, world: int) -> list:
    """Every rank's ``obj``, in rank order, on every rank (a collective; ``[obj]`` alone)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------ replica check
_CHECKSUM_WEIGHTS: dict = {}


def param_checksums(modules: dict[str, nn.Module], device) -> tuple[list[str], torch.Tensor]:
    """An int64 checksum of the raw bits of every parameter and buffer: any bit flip changes it, and so does
    a swap of two elements (each position has its own weight)."""
    tensors = {f"{m}.{k}": t for m, mod in modules.items() for k, t in (*mod.named_parameters(), *mod.named_buffers())}
    n = max(t.numel() for t in tensors.values())
    w = _CHECKSUM_WEIGHTS.get(device)
    if w is None or w.numel() < n:  # computed once per run: the modulo over millions of int64 is the costly part
        w = _CHECKSUM_WEIGHTS[device] = torch.arange(1, n + 1, device=device, dtype=torch.int64) % 1_000_003
    sums = []
    for t in tensors.values():
        t = t.detach().contiguous().reshape(-1)  # 1-d, so 0-d buffers (num_batches_tracked) can be viewed too
        bits = t.view(torch.int32) if t.element_size() == 4 else t.view(torch.uint8).to(torch.int32)
        sums.append((bits.to(torch.int64) * w[: bits.numel()].to(bits.device)).sum())  # (integer dot: not on CUDA)
    return list(tensors), torch.stack(sums).to(device)


def check_replicas(acc, modules: dict[str, nn.Module], step: int) -> None:
    """Every rank compares checksums of every parameter and buffer; a mismatch raises ReplicaMismatch on
    every rank, naming the first tensor that differs and the ranks that hold another value."""
    world = acc.num_processes
    if world == 1:
        return
    names, sums = param_checksums(modules, acc.device)
    gathered = acc.gather(sums.unsqueeze(0)).reshape(world, -1)
    bad = (gathered != gathered[0]).any(0).nonzero().flatten().tolist()
    if bad:
        ranks = (gathered[:, bad[0]] != gathered[0, bad[0]]).nonzero().flatten().tolist()
        raise ReplicaMismatch(
            f"replicas diverged at step {step}: tensor {names[bad[0]]!r} differs between rank 0 and "
            f"rank(s) {ranks} ({len(bad)} tensors in all); this is a bug in synchronisation, not your data. "
            f"The last good checkpoint is kept; please report it with RUN/runs.jsonl"
        )


# ------------------------------------------------------------------------------------ RNG capture
def rng_state() -> dict:
    """This process's RNG states as tensors and lists (loadable with weights_only=True)."""
    st = np.random.get_state()
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": torch.from_numpy(st[1].astype(np.int64)),
        "numpy_pos": int(st[2]),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.empty(0, dtype=torch.uint8),
    }


def set_rng_state(r: dict) -> None:
    torch.set_rng_state(r["torch"])
    random.setstate((r["python"][0], tuple(r["python"][1]), r["python"][2]))
    np.random.set_state(("MT19937", r["numpy"].numpy().astype(np.uint32), r["numpy_pos"], 0, 0.0))
    if torch.cuda.is_available() and r["cuda"].numel():
        torch.cuda.set_rng_state(r["cuda"])


# ------------------------------------------------------------------------------------ stop signals
class StopSignals:
    """SIGTERM and SIGUSR1 (SLURM's warning before a time limit) set ``received``; the ranks agree on it
    at the next log tick. A context manager: the previous handlers come back on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received = 0
        self._previous: dict = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def _on_signal(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
