"""Throughput benchmark: the trainer's loop (eager and compiled) against a textbook loop, one table.

    python -m distgan.bench --config configs/mnist_paper.yaml [--steps 200] [--compile off,on,reduce-overhead]
                            [--precision no,bf16,fp16,auto] [--repeats 3] [--quick]
    python -m distgan.bench --stream --config configs/webdataset_64.yaml data.urls='shards/train-{000000..000009}.tar'
    python -m distgan.bench --data-only --config configs/webdataset_64.yaml data.urls='...'
    python -m distgan.bench --inception [--images 256] [--inception-weights FILE]
    python -m distgan.bench --convs --config configs/mnist_r3gan.yaml [--steps 10] [--repeats 5]

``--convs``: the regularised D update of a residual (r3gan) config, its grouped 3x3 convolutions against
dense ones (``model.cardinality=1``), and the other memory layout (channels-last against NCHW), interleaved in
one process so a shared machine's load hits all alike. The trainer's layout comes first, as the baseline:
channels-last on CUDA, NCHW elsewhere.

``--inception``: Inception feature extraction (FID's cost) through distgan against torch-fidelity's own
loop on the same images, with the ceiling the GEMM rate allows for the network's FLOPs per image.

``--stream``: the trainer fed from shards (DataLoader workers decoding) against the same trainer fed
from the same images held in memory (``data.in_memory=true``), side by side. ``--data-only``: the
loader alone (no model), images/s per rank for 0 workers and for ``data.workers``.

Every row runs in its own process (clean memory figures, no compile cache shared with another row),
rows are interleaved over ``--repeats`` rounds and the median is printed. Both loops do the same
maths per step (Algorithm 1: k D updates on fresh real images and noise, then a G update on fresh
noise) and the table prints each one's FLOPs per image, counted by torch's FlopCounterMode on one
step, so no speed can come from doing less. The textbook loop is what most GAN tutorials write:
torchvision's MNIST dataset with per-sample ToTensor/Normalize through a DataLoader, eager fp32,
separate real/fake D passes, a G step that also computes D's gradients, default optimizers and
``.item()`` on both losses every step, fp32 (TF32 off, cuDNN's too).

Besides images/s the table prints, per step: *kernels* (operations that reach torch's dispatcher and are
not views: each is at least one kernel launch on a GPU; on a GPU the profiler's CUDA kernel count), and
*host ms*: the same loop on the same device with the networks at width 8 and a batch of 8, where the
arithmetic is negligible and what is left is Python, dispatch and launches. On a GPU, a step cannot be
faster than its host time: the launch-bound ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from distgan.config import ConfigError, build, load
from distgan.data.mnist import ensure_mnist
from distgan.data.sampler import BatchLayout
from distgan.data.stream import StreamBatches, check_urls, expand_urls
from distgan.generate import sample_noise
from distgan.networks import build_networks
from distgan.runtime import preferred_memory_format
from distgan.torch_private import dispatch_mode
from distgan.trainer import Trainer

# Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets, by precision: fp32 is the CUDA cores' rate
# (what runs when TF32 is off), tf32/bf16/fp16 the tensor cores'. Matched in order: a PCIe or NVL part must
# not get its SXM sibling's figures.
GPU_PEAKS = [
    (r"H200.*NVL", "H200 NVL", {"fp32": 60.0, "tf32": 418.0, "bf16": 835.0, "fp16": 835.0}),
    (r"H200", "H200 SXM", {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0, "fp16": 989.0}),
    (r"H100.*NVL", "H100 NVL", {"fp32": 60.0, "tf32": 418.0, "bf16": 835.0, "fp16": 835.0}),
    (r"H100.*PCIe", "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    (r"H100", "H100 SXM", {"fp32": 67.0, "tf32": 494.0, "bf16": 989.0, "fp16": 989.0}),
    (r"A100", "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    (r"L40S", "L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0}),
    (r"V100", "V100", {"fp32": 15.7, "fp16": 125.0}),
    (r"T4\b", "T4", {"fp32": 8.1, "fp16": 65.0}),
]


def gpu_peak(name: str, precision: str) -> tuple[str, float] | None:
    """(the part, its dense peak TFLOP/s for ``precision`` (fp32, tf32, bf16, fp16)) or None if unknown."""
    import re

    for pattern, part, peaks in GPU_PEAKS:
        if re.search(pattern, name):
            return (part, peaks[precision]) if precision in peaks else None
    return None


def precision_label(precision: str, device: torch.device, tf32: bool) -> str:
    """The arithmetic a row really runs: 'no' is TF32 on a GPU that allows it, else true fp32."""
    if precision in ("bf16", "fp16"):
        return precision
    return "tf32" if device.type == "cuda" and tf32 else "fp32"


class OpCounter:
    """Counts operations that reach the dispatcher and are not views (each is at least one GPU kernel)."""

    def __enter__(self):

        counter = self

        class Mode(dispatch_mode()):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if not func.is_view and func.namespace != "profiler":
                    counter.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self._mode = 0, Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def kernels_per_step(step, device: torch.device, compiled: bool, n: int = 3) -> float | None:
    """Kernels one call of ``step`` launches: the CUDA profiler's count on a GPU; on a CPU the dispatcher's
    non-view operations (None for compiled code: inductor's CPU kernels are not visible there)."""
    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                step()
            torch.cuda.synchronize(device)
        return sum(1 for e in prof.events() if e.device_type.name == "CUDA") / n
    if compiled:
        return None
    with OpCounter() as c:
        for _ in range(n):
            step()
    return c.n / n


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, out_shape, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward`` with groups counted. torch's own formula (as of torch
    2.14) counts the weight gradient of a grouped convolution as if it were dense, ``groups`` times too
    many (pytorch/pytorch#183405): 4x for the r3gan networks' 3x3 layers, which put their rows above the
    GEMM ceiling. Each gradient is one multiply-add per multiply-add of the forward, so each costs what the
    forward costs; the weight's shape already holds ``in_channels / groups``."""
    from torch.utils.flop_counter import conv_flop_count

    transposed, output_mask = args[4], args[7]
    # The forward's output is grad_out; for a transposed convolution the forward's spatial extent is the input's.
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=bool(transposed))
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: _conv_backward_flops}) as fc:
        fn()
    return float(fc.get_total_flops())


def _peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole process, KiB on Linux


def row_trainer(cfg, steps: int, warmup: int, host: bool = True) -> dict:
    """The trainer's own loop body: schedule, Algorithm-1 step, metrics accumulated on device."""

    with tempfile.TemporaryDirectory(prefix="distgan-bench-") as run_dir:  # config.yaml, runs.jsonl: removed after
        out = _row_trainer(Trainer(cfg, run_dir), cfg, steps, warmup, time.perf_counter())
    if host:  # the same loop with the arithmetic taken away: what is left is host time
        out["host_ms"] = 1e3 * row_trainer(host_config(cfg), steps, warmup, host=False)["s_per_step"]
    return out


def host_config(cfg):
    """``cfg`` with the arithmetic taken away: every network stage 8 channels wide (``model.widths`` cleared,
    or a per-stage config would keep its full widths), a batch of 8, no BatchNorm recomputation."""
    d = cfg.to_dict()
    return build(
        {
            **d,
            "model": {**d["model"], "width": 8, "widths": []},
            "train": {**d["train"], "batch_size": 8, "grad_accum": 1},
            "ema": {**d["ema"], "bn_batches": 0},
        }
    )


def _row_trainer(tr, cfg, steps: int, warmup: int, t_build: float) -> dict:
    dev = tr.device
    acc = torch.zeros(4, device=dev)

    def step(s):
        tr.schedule(s)
        d, g = tr.train_step(s)
        acc.add_(torch.cat([d, g]))

    t0 = time.perf_counter()
    for s in range(warmup):  # includes compilation when enabled
        step(s)
    _sync(dev)
    warm_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        step(s)
    acc.tolist()  # the loop reads metrics every log_every steps; once here
    _sync(dev)
    dt = (time.perf_counter() - t0) / steps
    # Phase split on a separate short pass: synchronising between phases distorts the steady state.
    phases = {"data": 0.0, "D": 0.0, "G": 0.0}
    n_ph = max(3, steps // 10)
    k, accum = cfg.train.d_steps, cfg.train.grad_accum
    for s in range(warmup + steps, warmup + steps + n_ph):
        torch.manual_seed(s)
        for i in range(k):
            _sync(dev)
            a = time.perf_counter()
            reals = [tr.real_batch(s * k + i, m) for m in range(accum)]
            zs = [tr.noise(n) for n in tr.micro_sizes]
            _sync(dev)
            b = time.perf_counter()
            tr.gan.d_step(reals, zs)
            _sync(dev)
            c = time.perf_counter()
            phases["data"] += b - a
            phases["D"] += c - b
        a = time.perf_counter()
        tr.gan.g_step([tr.noise(n) for n in tr.micro_sizes], reals if tr.gan.loss.needs_real_in_g else None)
        tr.gan.end_step()
        _sync(dev)
        phases["G"] += time.perf_counter() - a
    # Kernels and FLOPs of one step. A lazy R1 update (once in loss.r1_every steps) is left out: a step without
    # it is counted. R1/R2 every step (r1_every=1, the R3GAN recipe) is part of every step and counted.
    # FLOPs counted eagerly: compiled code runs inductor kernels the counter cannot see.
    s_next = warmup + steps + n_ph
    while (cfg.loss.r1_gamma or cfg.loss.r2_gamma) and cfg.loss.r1_every > 1 and s_next % cfg.loss.r1_every == 0:
        s_next += 1
    kernels = kernels_per_step(lambda: step(s_next), dev, cfg.compile.enabled)
    with torch.compiler.set_stance("force_eager"):
        flops = _flops(lambda: tr.train_step(s_next))
    return {
        "s_per_step": dt,
        "phases_ms": {p: 1e3 * v / n_ph for p, v in phases.items()},
        "flops_step": flops,
        "kernels_step": kernels,
        "warmup_s": warm_s,
        "compile_s": warm_s - warmup * dt,
        "build_s": t0 - t_build - warm_s,
        "precision": precision_label(tr.precision, dev, cfg.runtime.tf32),
        "device": str(dev),
        "peak_mem_mb": _peak_mem_mb(dev),
    }


def row_textbook(cfg, steps: int, warmup: int) -> dict:
    """What a tutorial writes. Same networks, same Algorithm-1 maths, none of the trainer's choices."""
    import torchvision
    from torchvision import transforms

    dev = torch.device("cuda" if torch.cuda.is_available() and not cfg.runtime.cpu else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # a tutorial's fp32: torch's default for matmuls, and
    torch.backends.cudnn.allow_tf32 = False  # not cuDNN's (whose default is TF32 for convolutions)
    torch.manual_seed(cfg.train.seed)
    G, D = build_networks(cfg)
    G, D = G.to(dev), D.to(dev)
    lo, hi = G.data_range
    raw = ensure_mnist(cfg.data.root, download=cfg.data.download)
    root = raw.parent.parent if raw.name == "raw" else cfg.data.root
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((-lo / (hi - lo),), (1 / (hi - lo),))])
    ds = torchvision.datasets.MNIST(str(root), train=True, download=False, transform=tf)
    dl = torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    o = cfg.optim
    if o.name == "sgd":
        opt_d = torch.optim.SGD(D.parameters(), lr=o.lr, momentum=o.momentum)
        opt_g = torch.optim.SGD(G.parameters(), lr=o.lr_g or o.lr, momentum=o.momentum)
    else:
        opt_d = torch.optim.Adam(D.parameters(), lr=o.lr, betas=tuple(o.betas))
        opt_g = torch.optim.Adam(G.parameters(), lr=o.lr_g or o.lr, betas=tuple(o.betas))
    bce = torch.nn.BCEWithLogitsLoss()
    it = iter(dl)
    B, z_dim = cfg.train.batch_size, cfg.model.z_dim
    phases = {"data": 0.0, "D": 0.0, "G": 0.0}

    def next_batch():
        nonlocal it
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(dl)
            x, _ = next(it)
        return x.to(dev)

    def step(timed=False):
        for _ in range(cfg.train.d_steps):
            a = time.perf_counter()
            x = next_batch()
            z = sample_noise(B, z_dim, cfg.model.noise, dev)
            if timed:
                _sync(dev)
            b = time.perf_counter()
            opt_d.zero_grad()
            real = D(x)
            fake = D(G(z).detach())
            loss_d = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
            loss_d.backward()
            opt_d.step()
            loss_d.item()
            c = time.perf_counter()
            phases["data"] += b - a
            phases["D"] += c - b
        a = time.perf_counter()
        opt_g.zero_grad()
        out = D(G(sample_noise(B, z_dim, cfg.model.noise, dev)))
        loss_g = bce(out, torch.ones_like(out))
        loss_g.backward()
        opt_g.step()
        loss_g.item()
        phases["G"] += time.perf_counter() - a

    for _ in range(warmup):
        step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    dt = (time.perf_counter() - t0) / steps
    for p in phases:
        phases[p] = 0.0
    n_ph = max(3, steps // 10)
    for _ in range(n_ph):
        step(timed=True)
    return {
        "s_per_step": dt,
        "phases_ms": {p: 1e3 * v / n_ph for p, v in phases.items()},
        "flops_step": _flops(step),
        "kernels_step": kernels_per_step(step, dev, False),
        "host_ms": None,
        "warmup_s": None,
        "build_s": None,
        "precision": "fp32",
        "device": str(dev),
        "peak_mem_mb": _peak_mem_mb(dev),
    }


def gemm_shapes(cfg) -> list[tuple[int, int, int, int]]:
    """(groups, M, K, N) of the GEMMs the model's Linear and Conv2d layers are (a convolution as im2col: M =
    batch x output pixels, K = input channels per group x kernel area, N = output channels per group), at
    the batch of a step: G's at B, D's at 2B (real and fake together), from one recorded forward."""
    G, D = build_networks(cfg)
    B, shapes = cfg.train.batch_size, []

    def record(m, args, out):
        if isinstance(m, torch.nn.Linear):
            shapes.append((1, args[0].shape[0], m.in_features, m.out_features))
        else:
            g, (kh, kw) = m.groups, m.kernel_size
            rows = out.shape[0] * out.shape[2] * out.shape[3]
            shapes.append((g, rows, m.in_channels // g * kh * kw, m.out_channels // g))

    layers = [m for net in (G, D) for m in net.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    hooks = [m.register_forward_hook(record) for m in layers]
    try:
        with torch.no_grad():
            fake = G(sample_noise(B, cfg.model.z_dim, cfg.model.noise))
            D(torch.cat([fake, fake]))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def gemm_reference(cfg, repeats: int = 20) -> float:
    """GFLOP/s of plain fp32 matmuls of the model's Linear and Conv2d (im2col) shapes (forward) on this
    device; a grouped convolution's groups as one batched matmul."""

    dev = torch.device("cuda" if torch.cuda.is_available() and not cfg.runtime.cpu else "cpu")
    shapes = gemm_shapes(cfg)
    mats = [(torch.randn(g, m, k, device=dev), torch.randn(g, k, n, device=dev)) for g, m, k, n in shapes]
    flops = sum(2 * g * m * k * n for g, m, k, n in shapes)
    for a, w in mats:
        a @ w
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for a, w in mats:
            a @ w
    _sync(dev)
    return flops * repeats / (time.perf_counter() - t0) / 1e9


def gemm_ceiling(cfg, n: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of one large square fp32 matmul (n x n x n) on this device: what its GEMMs reach at best."""
    dev = torch.device("cuda" if torch.cuda.is_available() and not cfg.runtime.cpu else "cpu")
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    a @ b
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(dev)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def row_data(cfg, steps: int, warmup: int) -> dict:
    """The stream alone: batches of this rank's micro-batch size pulled through the DataLoader."""

    urls = expand_urls(cfg.data.urls)
    check_urls(urls)
    B = cfg.train.batch_size

    sb = StreamBatches(
        urls,
        BatchLayout(B, 0, 1),
        cfg.data.image_shape,
        cfg.train.seed,
        cfg.data.workers,
        cfg.data.shuffle_buffer,
        "cpu",
    )
    for j in range(warmup):
        sb.batch(j)
    t0 = time.perf_counter()
    for j in range(warmup, warmup + steps):
        sb.batch(j)
    dt = (time.perf_counter() - t0) / steps
    return {
        "s_per_step": dt,
        "workers": cfg.data.workers,
        "skipped": sb.skipped,
        "device": "cpu",
        "precision": "-",
        "peak_mem_mb": _peak_mem_mb(torch.device("cpu")),
    }


def _measure_row(row: str, config: str, overrides: list[str], steps: int, warmup: int) -> dict:

    cfg = load(config, overrides + ["train.progress=false", "wandb.mode=disabled"])
    fn = {"textbook": row_textbook, "trainer": row_trainer, "data": row_data}[row]
    out = fn(cfg, steps, warmup)
    out["gemm_gflops"] = gemm_reference(cfg) if row == "textbook" else None
    out["gemm_ceiling_gflops"] = gemm_ceiling(cfg) if row == "textbook" else None
    out["torch"] = torch.__version__
    out["threads"] = torch.get_num_threads()
    if torch.cuda.is_available() and not cfg.runtime.cpu:
        out["gpu"] = torch.cuda.get_device_name()
    return out


def _run_row(args) -> None:
    out = _measure_row(args._row, args.config, args.overrides, args.steps, args.warmup)
    print("BENCH-ROW " + json.dumps(out), flush=True)


def _spawn(args, row: str, overrides: list[str]) -> dict:
    """One row in a fresh process (clean peak memory, no compile cache shared with another row); with
    ``--quick`` (a check that every row runs, not a measurement) in this process."""
    if args.quick:
        return _measure_row(row, args.config, [*args.overrides, *overrides], args.steps, args.warmup)
    cmd = [
        sys.executable,
        "-m",
        "distgan.bench",
        "--_row",
        row,
        "--config",
        args.config,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        *args.overrides,
        *overrides,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    for line in p.stdout.splitlines():
        if line.startswith("BENCH-ROW "):
            return json.loads(line[len("BENCH-ROW ") :])
    raise RuntimeError(f"bench row {row} {overrides} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/mnist_paper.yaml")
    p.add_argument("--steps", type=int, default=200, help="timed steps per row (default %(default)s)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation happens here)")
    p.add_argument(
        "--compile",
        default="off,on",
        help="trainer rows: comma list of off, on, reduce-overhead (CUDA graphs, GPU only); both = off,on",
    )
    p.add_argument(
        "--precision", default="no", help="trainer rows: comma list of no, bf16, fp16, auto (default %(default)s)"
    )
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is shown")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few steps, one round, rows in this process: checks that every row runs (no figures to quote)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--stream", action="store_true", help="trainer from shards vs from memory (webdataset configs)")
    mode.add_argument("--data-only", action="store_true", help="the shard loader alone (webdataset configs)")
    mode.add_argument("--inception", action="store_true", help="Inception feature extraction, img/s")
    mode.add_argument("--convs", action="store_true", help="r3gan: grouped vs dense 3x3 (and NHWC vs NCHW on CUDA)")
    p.add_argument("--images", type=int, default=256, help="--inception: images per row (default %(default)s)")
    p.add_argument("--inception-weights", default="", help="--inception: weights (default: random, same speed)")
    p.add_argument("--_row", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides for every row (section.key=value)")
    args = p.parse_args(argv)
    if args._row:
        _run_row(args)
        return 0
    if args.quick:
        args.steps, args.warmup, args.repeats = 5, 2, 1
    if args.stream or args.data_only:
        return _main_stream(args)
    if args.inception:
        return _main_inception(args)
    if args.convs:
        return _main_convs(args)
    try:
        textbook_fits(load(args.config, args.overrides), args.config)
        rows = [("textbook", "eager", []), *trainer_rows(args.precision, args.compile)]
    except (ValueError, ConfigError) as e:
        print(f"distgan: {e}", file=sys.stderr)
        return 2
    results: dict[int, list[dict]] = {i: [] for i in range(len(rows))}
    for _ in range(args.repeats):
        for i, (row, _, ov) in enumerate(rows):
            results[i].append(_spawn(args, row, ov))
    _print_table(args, rows, results)
    return 0


def textbook_fits(cfg, config: str) -> None:
    """The textbook row reads torchvision's MNIST (1 channel, 28 px): refuse a config whose networks take
    other images before any row starts, rather than fail inside one."""
    d = cfg.data
    if (d.channels, d.image_size) != (1, 28):
        raise ValueError(
            f"the table's textbook loop reads MNIST (1 channel, 28 px) and {config} makes {d.channels}-channel "
            f"{d.image_size} px images; for this config use --stream (the trainer from shards against the same "
            f"images in memory) or --convs (r3gan), or run the table on an MNIST config"
        )


COMPILE_MODES = {
    "off": ("eager", ["compile.enabled=false"]),
    "on": ("compiled", ["compile.enabled=true", "compile.mode=default"]),
    "reduce-overhead": ("cudagraph", ["compile.enabled=true", "compile.mode=reduce-overhead"]),
}


def trainer_rows(precisions: str, compiles: str) -> list[tuple[str, str, list[str]]]:
    """(loop, mode, overrides) for every precision x compile mode asked for."""
    modes = [m.strip() for m in compiles.replace("both", "off,on").split(",") if m.strip()]
    precs = [p.strip() for p in precisions.split(",") if p.strip()]
    bad = [m for m in modes if m not in COMPILE_MODES] + [p for p in precs if p not in ("no", "bf16", "fp16", "auto")]
    if bad or not modes or not precs:
        raise ValueError(
            f"unknown --compile/--precision value(s) {bad}; --compile takes off,on,reduce-overhead "
            f"and --precision no,bf16,fp16,auto"
        )
    return [
        ("trainer", COMPILE_MODES[m][0], [f"runtime.precision={p}", *COMPILE_MODES[m][1]]) for p in precs for m in modes
    ]


def inception_throughput(num: int, repeats: int, weights: str = "", device=None) -> list[str]:
    """Inception extraction img/s through distgan and through torch-fidelity's own batch loop on the same
    images, with the ceiling the GEMM rate allows for the network's FLOPs per image: the report's lines."""
    from torch.utils.data import Dataset
    from torch_fidelity.utils import get_featuresdict_from_dataset

    from distgan.metrics import fidelity, inception

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        if weights:
            path, what = inception.find_weights(weights), "the given weights"
        else:  # the speed does not depend on the values
            path, what = inception.write_random_weights(os.path.join(tmp, "w.pth")), "random weights"
        net = inception.load_extractor(path, dev)
    images = torch.randint(0, 256, (num, 3, 32, 32), dtype=torch.uint8)

    class Images(Dataset):
        def __len__(self):
            return images.shape[0]

        def __getitem__(self, i):
            return images[i]

    def ours():
        fidelity.extract(images, net, block=inception.BATCH, device=dev)

    def library():
        get_featuresdict_from_dataset(Images(), net, inception.BATCH, dev.type == "cuda", True, False)

    flops = _flops(lambda: net(images[:1].to(dev)))
    n = 4096 if dev.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    a @ b
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(dev)
    gemm = 2 * n**3 * 10 / (time.perf_counter() - t0)
    rows = {"torch-fidelity loop": library, "distgan extract": ours}
    times: dict[str, list[float]] = {k: [] for k in rows}
    ours()  # warm-up (allocator, oneDNN/cuDNN plans)
    for _ in range(repeats):
        for k, fn in rows.items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[k].append(num / (time.perf_counter() - t0))
    ceiling = gemm / flops
    from importlib.metadata import version

    out = [
        f"Inception-v3 features (torch-fidelity {version('torch-fidelity')}, {what}), {num} images of 32x32 "
        f"resized to 299, batches of {inception.BATCH}, {dev}, {torch.get_num_threads()} threads, fp32, median of "
        f"{repeats}",
        f"{'row':<22} {'img/s':>8} {'vs library':>10} {'% of ceiling':>13}",
    ]
    ref = statistics.median(times["torch-fidelity loop"])
    for k, v in times.items():
        m = statistics.median(v)
        out.append(f"{k:<22} {m:>8.1f} {m / ref:>9.2f}x {100 * m / ceiling:>12.1f}%")
    out.append(
        f"ceiling: {flops / 1e9:.2f} GFLOP per image (FlopCounterMode) at {gemm / 1e9:.0f} GFLOP/s "
        f"(fp32 {n}x{n} GEMM here) = {ceiling:.1f} img/s"
    )
    return out


def _main_inception(args) -> int:
    for line in inception_throughput(args.images, args.repeats, args.inception_weights):
        print(line)
    return 0


def _main_convs(args) -> int:
    """Median ms of one R1 + R2 + RpGAN-sized D update (forward, backward and the penalties' double backward
    of D on a [real, fake] batch) per variant, the variants interleaved in every round."""
    from distgan.losses import gradient_penalties
    from distgan.networks import RESNETS

    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as e:
        print(f"distgan: {e}", file=sys.stderr)
        return 2
    if cfg.model.discriminator not in RESNETS:
        print(f"distgan: --convs needs a residual discriminator {sorted(RESNETS)}", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if torch.cuda.is_available() and not cfg.runtime.cpu else "cpu")
    card = cfg.model.cardinality or 8
    # The trainer's layout first (its baseline), dense 3x3 in it, then grouped in the other layout.
    own = preferred_memory_format(dev) if cfg.runtime.channels_last else torch.contiguous_format
    other = torch.contiguous_format if own == torch.channels_last else torch.channels_last
    tag = {torch.channels_last: "NHWC", torch.contiguous_format: "NCHW"}
    variants = [
        (f"grouped (cardinality {card}) {tag[own]}", {}, own),
        (f"dense 3x3 {tag[own]}", {"cardinality": 1}, own),
        (f"grouped (cardinality {card}) {tag[other]}", {}, other),
    ]
    nets, B = [], cfg.train.batch_size
    x = torch.rand(2 * B, *cfg.data.image_shape, device=dev) * 2 - 1
    for name, over, layout in variants:
        c = build({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], **over}})
        torch.manual_seed(0)
        D = build_networks(c)[1].to(dev).to(memory_format=layout)
        conv_weights = sum(m.weight.numel() for m in D.modules() if isinstance(m, torch.nn.Conv2d))
        nets.append((name, D, conv_weights, x.contiguous(memory_format=layout)))

    def update(D, x):
        D.zero_grad(set_to_none=True)
        D(x).sum().backward()
        r1, r2 = gradient_penalties(D, x[:B], x[B:])
        (r1 + r2).backward()

    times = {name: [] for name, *_ in nets}
    for _, D, _, xl in nets:  # warm-up
        update(D, xl)
    for _ in range(args.repeats):
        for name, D, _, xl in nets:
            _sync(dev)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                update(D, xl)
            _sync(dev)
            times[name].append(1e3 * (time.perf_counter() - t0) / args.steps)
    print(
        f"distgan.bench --convs | config {args.config} | D on {2 * B} images | device {dev} | threads "
        f"{torch.get_num_threads()} | {args.steps} updates per round, median of {args.repeats} interleaved rounds"
    )
    base = statistics.median(times[nets[0][0]])
    for name, _, conv_params, _ in nets:
        ms = statistics.median(times[name])
        print(f"{name:<36}{ms:>9.1f} ms{ms / base:>7.2f}x  conv weights {conv_params}")
    return 0


def _main_stream(args) -> int:

    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as e:
        print(f"distgan: {e}", file=sys.stderr)
        return 2
    if cfg.data.dataset != "webdataset":
        print(
            f"distgan: --stream and --data-only need a webdataset config; {args.config} has data.dataset="
            f"{cfg.data.dataset}",
            file=sys.stderr,
        )
        return 2
    if args.data_only:
        rows = [
            ("data", "workers=0", ["data.workers=0"]),
            ("data", f"workers={cfg.data.workers}", [f"data.workers={cfg.data.workers}"]),
        ]
    else:
        prec = [f"runtime.precision={args.precision}", f"compile.enabled={args.compile == 'on'}"]
        rows = [
            ("trainer", "memory", prec + ["data.in_memory=true"]),
            ("trainer", "stream", prec + ["data.in_memory=false"]),
        ]
    results: dict[int, list[dict]] = {i: [] for i in range(len(rows))}
    for _ in range(args.repeats):
        for i, (row, _, ov) in enumerate(rows):
            results[i].append(_spawn(args, row, ov))
    med = {
        i: min(rs, key=lambda r: abs(r["s_per_step"] - statistics.median(x["s_per_step"] for x in rs)))
        for i, rs in results.items()
    }
    imgs = cfg.train.batch_size * (1 if args.data_only else cfg.train.d_steps)
    first = med[0]
    print(
        f"distgan.bench {'--data-only' if args.data_only else '--stream'} | config {args.config} | image "
        f"{'x'.join(map(str, cfg.data.image_shape))} | batch {cfg.train.batch_size} | torch {first['torch']} | device "
        f"{first['device']}{' ' + first.get('gpu', '') if first.get('gpu') else ''} | threads {first['threads']} | "
        f"{args.steps} timed steps, median of {args.repeats}"
    )
    hdr = f"{'row':<9}{'mode':<12}{'img/s':>10}{'ms/step':>10}{'vs first':>10}{'peak MB':>9}"
    print(hdr)
    print("-" * len(hdr))
    base = imgs / med[0]["s_per_step"]
    for i, (row, mode, _) in enumerate(rows):
        ips = imgs / med[i]["s_per_step"]
        print(
            f"{row:<9}{mode:<12}{ips:>10.0f}{1e3 * med[i]['s_per_step']:>10.2f}{ips / base:>10.2f}"
            f"{med[i]['peak_mem_mb']:>9.0f}"
        )
    if not args.data_only:
        print(
            f"streaming runs at {100 * (imgs / med[1]['s_per_step']) / base:.1f}% of the in-memory "
            f"images/s (data.workers={cfg.data.workers})"
        )
    return 0


def _print_table(args, rows, results) -> None:

    cfg = load(args.config, args.overrides)
    med = {
        i: min(rs, key=lambda r: abs(r["s_per_step"] - statistics.median(x["s_per_step"] for x in rs)))
        for i, rs in results.items()
    }
    print(format_table(args.config, cfg, rows, med, args.steps, args.repeats))


def format_table(config: str, cfg, rows, med: dict, steps: int, repeats: int) -> str:
    """The bench table as text: one line per row, then the references and the launch-bound ceiling."""
    imgs = cfg.train.batch_size * cfg.train.d_steps
    first = med[0]
    gpu = first.get("gpu", "")
    out = [
        f"distgan.bench | config {config} | batch {cfg.train.batch_size} | k={cfg.train.d_steps} | "
        f"torch {first['torch']} | device {first['device']}{' ' + gpu if gpu else ''} | threads {first['threads']} "
        f"| {steps} timed steps, median of {repeats}"
    ]
    hdr = (
        f"{'loop':<9}{'mode':<10}{'prec':<6}{'img/s':>9}{'ms/step':>9}{'ratio':>7}{'kernels':>8}{'host ms':>8}"
        f"{'data ms':>8}{'D ms':>8}{'G ms':>8}{'MFLOP/img':>10}{'TFLOP/s':>9}{'% peak':>8}{'peak MB':>8}"
        f"{'compile s':>10}"
    )
    out += [hdr, "-" * len(hdr)]
    base_ips = imgs / med[0]["s_per_step"]
    na = float("nan")
    for i, (row, mode, _) in enumerate(rows):
        r = med[i]
        ips = imgs / r["s_per_step"]
        f = r.get("flops_step")
        tflops = f / r["s_per_step"] / 1e12 if f else na
        peak = gpu_peak(gpu, r["precision"]) if gpu else None
        pct = f"{100 * tflops / peak[1]:.2f}" if peak and f else "-"
        compile_s = r.get("compile_s") if mode != "eager" else None
        ph = r["phases_ms"]
        kern = f"{r['kernels_step']:.0f}" if r.get("kernels_step") is not None else "-"
        host = f"{r['host_ms']:.2f}" if r.get("host_ms") is not None else "-"
        out.append(
            f"{row:<9}{mode:<10}{r['precision']:<6}{ips:>9.0f}{1e3 * r['s_per_step']:>9.2f}{ips / base_ips:>7.2f}"
            f"{kern:>8}{host:>8}{ph['data']:>8.2f}{ph['D']:>8.2f}{ph['G']:>8.2f}"
            f"{(f or na) / imgs / 1e6:>10.2f}{tflops:>9.3f}{pct:>8}{r['peak_mem_mb']:>8.0f}"
            f"{(f'{compile_s:.1f}' if compile_s is not None else '-'):>10}"
        )
    if first.get("gemm_gflops"):
        out.append(
            f"reference: fp32 GEMMs of the model's Linear and Conv2d (im2col) shapes run at "
            f"{first['gemm_gflops']:.1f} GFLOP/s here"
        )
    if first.get("gemm_ceiling_gflops"):
        ceil = first["gemm_ceiling_gflops"]
        reach = ", ".join(
            f"{row} {mode} {100 * med[i]['flops_step'] / med[i]['s_per_step'] / 1e9 / ceil:.1f}%"
            for i, (row, mode, _) in enumerate(rows)
            if med[i].get("flops_step") and med[i]["precision"] == "fp32"
        )
        out.append(
            f"GEMM ceiling: a 1024^3 fp32 matmul runs at {ceil:.1f} GFLOP/s here"
            + (f"; the fp32 rows reach {reach} of it" if reach else "")
        )
    if gpu and (p := gpu_peak(gpu, "bf16")):
        out.append(
            f"% peak: of the {p[0]}'s dense datasheet peak for the row's precision (fp32 = CUDA cores, "
            f"tf32/bf16/fp16 = tensor cores)"
        )
    elif gpu:
        out.append(f"% peak: no datasheet figures for {gpu!r} in distgan.bench.GPU_PEAKS")
    trainer = [med[i] for i, (row, _, _) in enumerate(rows) if row == "trainer" and med[i].get("host_ms")]
    if trainer:
        h = min(r["host_ms"] for r in trainer)
        out.append(
            f"launch-bound ceiling: {h:.2f} ms of host time per step even with no arithmetic, so at most "
            f"{1e3 / h:.0f} steps/s = {imgs * 1e3 / h:.0f} img/s per process at this batch; more images per "
            f"step (a larger per-GPU batch) or fewer launches (CUDA graphs) raise it"
        )
    out.append(
        "kernels: dispatched non-view ops per step (CUDA profiler kernels on a GPU); host ms: the same loop at "
        "width 8 and batch 8; peak MB: CUDA max allocated on a GPU, else the process's max RSS"
    )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
