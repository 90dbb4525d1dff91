"""What only a GPU can show, in one command and under 8 minutes: ``launch/gpu_check.sh`` runs this.

    python -m distgan.gpu_check [--out FILE] [--cpu] [--paper-steps N]

Sections, each in its own time box, each recorded (a failure is a line in the table, not the end):

1. environment: torch, CUDA, GPU, NCCL, native bf16, which optional packages are here;
2. ``distgan.bench`` rows for the paper's MLP, ``mnist_dcgan`` and ``mnist_r3gan``: the textbook loop, then the
   trainer in fp32 (TF32 off), TF32, bf16 and fp16, eager and compiled, and bf16 under CUDA graphs
   (``compile.mode=reduce-overhead``): img/s, ms/step, kernels/step, host ms/step, % of the datasheet peak;
   for R3GAN bf16 channels-last against NCHW and grouped against dense 3x3 convolutions;
3. ``mnist_paper.yaml`` in bf16 + torch.compile, scored on the validation split every few thousand steps:
   the time to the paper's 225 nats (Parzen), and the final Parzen and FD on the test set;
4. ``mnist_dcgan.yaml`` in fp16 with R1: a run straight through and the same run stopped half way and
   resumed, compared tensor by tensor (on a GPU cuDNN's algorithm choice and CUDA's RNG may make a
   resumed run differ in the last bits: measured, not assumed);
5. two processes on one GPU over NCCL, or the reason it cannot run.

Without a GPU (or with ``--cpu``) the same sections run on the CPU at tiny sizes in fp32 and say so
(tests/integration/test_gpu_check.py runs it that way, so it cannot rot before a GPU arrives). Only
torch and accelerate (which brings safetensors, PyYAML and numpy) are needed: W&B, WebDataset, einops,
torchvision and Pillow are optional (W&B is disabled, no grids are drawn, the textbook row needs
torchvision's MNIST dataset); tests/integration/test_gpu_check.py runs it with those five hidden.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Report:
    def __init__(self):
        self.lines: list[str] = []

    def add(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def section(self, title: str) -> None:
        self.add("")
        self.add(f"== {title}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _timed(report: Report, title: str, fn) -> None:
    report.section(title)
    t0 = time.time()
    try:
        fn(report)
    except Exception as e:  # noqa: BLE001 - a failed section is recorded, the next one runs
        report.add(f"FAILED: {type(e).__name__}: {str(e)[:2000]}")
        report.add("".join(traceback.format_exception(e))[-3000:])
    report.add(f"({time.time() - t0:.0f} s)")


def environment(report: Report, gpu: bool) -> None:
    import torch

    report.add(
        f"python {sys.version.split()[0]} | torch {torch.__version__} | CUDA {torch.version.cuda} | "
        f"accelerate {_version('accelerate')} | safetensors {_version('safetensors')}"
    )
    if gpu:
        p = torch.cuda.get_device_properties(0)
        report.add(
            f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible, capability "
            f"{p.major}.{p.minor} | native bf16: {torch.cuda.is_bf16_supported(including_emulation=False)} | "
            f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"
        )
    else:
        report.add(
            "no GPU (or --cpu): every section runs on the CPU at tiny sizes in fp32; figures are not GPU figures"
        )
    opt = {m: _installed(m) for m in ("einops", "yaml", "numpy", "PIL", "torchvision", "wandb", "webdataset")}
    report.add("packages: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in opt.items()))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "-"


# GPU rows per config: every precision and compile mode for the paper's MLP; the main ones for the conv net
ROWS_GPU = {
    "configs/mnist_paper.yaml": [
        ("eager", "fp32, TF32 off", ["runtime.precision=no", "runtime.tf32=false"]),
        ("eager", "", ["runtime.precision=no"]),
        ("eager", "", ["runtime.precision=bf16"]),
        ("compiled", "", ["runtime.precision=bf16", "compile.enabled=true"]),
        ("eager", "", ["runtime.precision=fp16"]),
        ("cudagraph", "", ["runtime.precision=bf16", "compile.enabled=true", "compile.mode=reduce-overhead"]),
    ],
    "configs/mnist_dcgan.yaml": [
        ("eager", "", ["runtime.precision=bf16"]),
        ("compiled", "", ["runtime.precision=bf16", "compile.enabled=true"]),
        ("eager", "", ["runtime.precision=fp16"]),
    ],
    # R3GAN: grouped convolutions and R1 + R2 every step; channels-last measured against NCHW, not assumed
    "configs/mnist_r3gan.yaml": [
        ("eager", "channels-last", ["runtime.precision=bf16"]),
        ("eager", "NCHW", ["runtime.precision=bf16", "runtime.channels_last=false"]),
        ("eager", "dense 3x3 (cardinality 1), channels-last", ["runtime.precision=bf16", "model.cardinality=1"]),
    ],
}
TINY_CPU = {
    "configs/mnist_paper.yaml": ["model.width=32", "train.batch_size=16"],
    "configs/mnist_dcgan.yaml": ["model.width=8", "train.batch_size=16"],
    "configs/mnist_r3gan.yaml": ["model.width=8", "train.batch_size=16"],
}


def bench_rows(report: Report, gpu: bool, quick: bool, spare_s=lambda: float("inf")) -> None:
    import torch

    from distgan import bench
    from distgan.config import load

    steps, warmup = (100, 10) if gpu and not quick else (3, 1)
    have_tv = _installed("torchvision")
    for config, gpu_rows in ROWS_GPU.items():
        base = [] if gpu else TINY_CPU[config]
        todo = [("textbook", "eager", "", [])] if have_tv else []
        todo += (
            [("trainer", m, note, ov) for m, note, ov in gpu_rows]
            if gpu
            else [("trainer", "eager", "", ["runtime.precision=no"])]
        )
        rows, med = [], {}
        for row, mode, note, ov in todo:
            if spare_s() < 0:
                report.add(f"{config} {row} {mode} {' '.join(ov)}: skipped (time budget; --budget-s)")
                continue
            cfg = load(REPO / config, [*base, *ov, "train.progress=false", "wandb.mode=disabled"])
            try:
                if row == "textbook":
                    r = bench.row_textbook(cfg, steps, warmup)
                    r["gemm_gflops"] = bench.gemm_reference(cfg)
                    r["gemm_ceiling_gflops"] = bench.gemm_ceiling(cfg)
                else:  # host time only for eager rows: a compiled tiny twin would compile again
                    r = bench.row_trainer(cfg, steps, warmup, host=mode == "eager")
            except Exception as e:  # noqa: BLE001 - e.g. CUDA graphs refused: the line says why
                report.add(f"{config} {row} {mode} {' '.join(ov)}: FAILED {type(e).__name__}: {str(e)[:300]}")
                continue
            r.update(
                torch=torch.__version__,
                threads=torch.get_num_threads(),
                **({"gpu": torch.cuda.get_device_name()} if gpu else {}),
            )
            med[len(rows)] = r
            rows.append((row, mode, ov))
            if note:
                report.add(f"(row {len(rows)}: {note})")
        if rows:
            report.add(bench.format_table(config, load(REPO / config, base), rows, med, steps, 1))
        if not have_tv:
            report.add("(no textbook row: torchvision is not installed; ratios are against the first trainer row)")


def _train(args: list[str], env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "distgan.train", *args, "train.progress=false", "wandb.mode=disabled"]
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout
    )


def paper_run(report: Report, gpu: bool, work: Path, steps: int, box_s: float) -> None:
    run = work / "paper"
    if gpu:
        every = max(1, steps // 8)
        ov = [
            "runtime.precision=bf16",
            "compile.enabled=true",
            f"train.max_steps={steps}",
            f"eval.every={every}",
            "eval.metrics=parzen,fd",
            "eval.num=10000",
            "eval.best_metric=parzen_ll",
            f"train.ckpt_every={every}",
            "train.sample_every=0",
        ]
        config = "configs/mnist_paper.yaml"
    else:
        ov = [
            "model.width=32",
            "train.max_steps=20",
            "eval.every=10",
            "eval.metrics=parzen,fd",
            "eval.num=200",
            "eval.block=100",
            "eval.best_metric=parzen_ll",
            "train.ckpt_every=10",
            "train.log_every=10",
        ]
        config = "configs/debug.yaml"
    t0 = time.time()
    try:
        p = _train(["--config", config, "--run-dir", str(run), *ov], timeout=box_s)
        code, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        code, err = "timeout", f"stopped after its time box of {box_s:.0f} s"
    wall = time.time() - t0
    rows = (
        [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        if (run / "metrics.jsonl").exists()
        else []
    )
    evals = [r for r in rows if "eval/parzen_ll" in r]
    report.add(f"{config} {' '.join(ov)}: exit {code}, {wall:.0f} s wall (start-up and compile included)")
    if code not in (0, "timeout"):
        report.add(err[-2000:])
    report.add(f"{'step':>7}{'time s':>9}{'Parzen (valid)':>16}{'FD (valid)':>12}")
    for r in evals:
        report.add(
            f"{r['step']:>7}{r['time']:>9.0f}{r['eval/parzen_ll']:>16.1f}{r.get('eval/fd', float('nan')):>12.2f}"
        )
    hit = next((r for r in evals if r["eval/parzen_ll"] >= 225.0), None)
    report.add(
        "time to the paper's 225 nats on the validation split: "
        + (f"{hit['time']:.0f} s of training, step {hit['step']}" if hit else "not reached in this run")
    )
    best = run / "checkpoints" / "best"
    if best.exists():
        out = work / "paper_test.json"
        n = "10000" if gpu else "200"
        e = subprocess.run(
            [
                sys.executable,
                "-m",
                "distgan.evaluate",
                "--checkpoint",
                str(best),
                "--metrics",
                "parzen,fd",
                "--num",
                n,
                "--json",
                str(out),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if e.returncode == 0:
            res = json.loads(out.read_text())
            report.add(
                f"best checkpoint (step {res['step']}) on the test set, {n} samples: Parzen {res['parzen_ll']:.1f} "
                f"+- {res['parzen_se']:.1f} nats, FD {res['fd']:.2f} (the paper: 225 +- 2)"
            )
        else:
            report.add(f"evaluate failed: {e.stderr[-1000:]}")


def resume_check(report: Report, gpu: bool, work: Path) -> None:
    import torch
    from safetensors.torch import load_file

    n = 300 if gpu else 8
    base = [
        f"train.ckpt_every={n // 2}",
        "loss.r1_every=4",
        "eval.every=0",
        "train.sample_every=0",
        f"train.log_every={n // 4}",
    ]
    base += ["runtime.precision=fp16"] if gpu else ["model.width=8", "train.batch_size=16"]
    t0 = time.time()
    from distgan.train import main as train_main

    for name, legs in (("straight", [n]), ("resumed", [n // 2, n])):
        for i, steps in enumerate(legs):  # in this process: each leg is a full start (set-up, resume, checkpoint)
            code = train_main(
                [
                    "--config",
                    str(REPO / "configs/mnist_dcgan.yaml"),
                    "--run-dir",
                    str(work / name),
                    *base,
                    f"train.max_steps={steps}",
                    "train.progress=false",
                    "wandb.mode=disabled",
                    *(["train.resume=auto"] if i else []),
                ]
            )
            if code != 0:
                raise RuntimeError(f"{name} leg {i} exited {code} (its message is above)")
    last = f"step-{n:09d}"
    worst, differing, total = 0.0, 0, 0
    for f in ("G.safetensors", "D.safetensors", "G_ema.safetensors"):
        a = load_file(str(work / "straight" / "checkpoints" / last / f))
        b = load_file(str(work / "resumed" / "checkpoints" / last / f))
        for k in a:
            total += 1
            if not torch.equal(a[k], b[k]):
                differing += 1
                worst = max(worst, (a[k].double() - b[k].double()).abs().max().item())
    prec = "fp16 + R1" if gpu else "fp32 + R1 (tiny, CPU)"
    report.add(
        f"mnist_dcgan {prec}: {n} steps straight vs {n // 2} + resume to {n} ({time.time() - t0:.0f} s): "
        + (
            "bitwise identical"
            if not differing
            else f"{differing} of {total} tensors differ, largest difference {worst:.3g}"
        )
    )


def two_processes(report: Report, gpu: bool, work: Path) -> None:
    """Two ranks over NCCL when there are two GPUs; on one GPU the reason it cannot run (CPU: gloo)."""
    import torch

    if gpu and torch.cuda.device_count() < 2:
        report.add(
            "2 processes on one GPU: not run. accelerate gives rank r the device cuda:r, and NCCL refuses two "
            "ranks on one device ('Duplicate GPU detected'): 2 ranks need 2 GPUs. The gloo version of this "
            "section runs in the tests on the CPU; NCCL across GPUs remains unverified."
        )
        return
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--multi_gpu",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29533",
        "-m",
        "distgan.train",
        "--config",
        "configs/debug.yaml",
        "--run-dir",
        str(work / "two"),
        "train.max_steps=20",
        "eval.every=0",
        "train.progress=false",
        "wandb.mode=disabled",
        "model.width=64",
    ]
    env = dict(os.environ)
    if not gpu:
        env["ACCELERATE_USE_CPU"] = "1"
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    if p.returncode == 0:
        line = next((x for x in p.stdout.splitlines() if "world size" in x), "")
        report.add(
            f"2 processes on {'2 GPUs (NCCL)' if gpu else 'one CPU (gloo)'}: ran 20 steps | {line.strip()[:200]}"
        )
    else:
        why = next(
            (x for x in p.stderr.splitlines() if "Duplicate GPU" in x or "invalid device" in x.lower() or "Error" in x),
            p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "",
        )
        report.add(
            f"2 processes on {'2 GPUs' if gpu else 'one CPU'}: failed (exit {p.returncode}): {why.strip()[:400]}"
        )


def inception_rows(report: Report, gpu: bool) -> None:
    """img/s of Inception features, distgan against torch-fidelity's loop (random weights: same speed)."""
    try:
        import torch_fidelity  # noqa: F401 - it imports torchvision too
    except ImportError as e:
        report.add(
            f"skipped: torch-fidelity cannot be imported ({e}); it needs torchvision. Carry both "
            f"(pip download torch-fidelity==0.4.0 --no-deps) or run python -m distgan.bench --inception"
        )
        return
    from distgan import bench

    for line in bench.inception_throughput(512 if gpu else 8, 3 if gpu else 1):
        report.add(line)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu_check.txt", help="also write the report here (default %(default)s)")
    p.add_argument("--cpu", action="store_true", help="run the CPU version even if a GPU is present")
    p.add_argument(
        "--paper-steps", type=int, default=40_000, help="GPU: steps of the mnist_paper run (default %(default)s)"
    )
    p.add_argument("--quick", action="store_true", help="GPU: 3 bench steps per row (a smoke test of the script)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=450.0,
        help="the whole check's time budget (default %(default)s): bench rows are skipped and the "
        "mnist_paper run is cut to fit, leaving time for the later sections",
    )
    args = p.parse_args(argv)
    missing = [m for m in ("torch", "accelerate", "safetensors", "yaml", "numpy") if not _installed(m)]
    if missing:
        print(f"distgan.gpu_check: missing {missing}; install torch and accelerate", file=sys.stderr)
        return 2
    import torch

    os.environ.setdefault("WANDB_MODE", "disabled")
    gpu = torch.cuda.is_available() and not args.cpu
    report = Report()
    report.add(f"distgan.gpu_check {time.strftime('%Y-%m-%d %H:%M:%S')} | {'GPU' if gpu else 'CPU, tiny sizes, fp32'}")
    t0 = time.time()
    left = lambda: args.budget_s - (time.time() - t0)  # noqa: E731 - every section sees what is left of the budget
    with tempfile.TemporaryDirectory(prefix="distgan-gpu-check-") as tmp:
        work = Path(tmp)
        _timed(report, "1. environment", lambda r: environment(r, gpu))
        _timed(
            report,
            "2. bench: textbook loop vs trainer, per precision and compile mode",
            lambda r: bench_rows(r, gpu, args.quick, lambda: left() - 260),
        )
        _timed(
            report,
            "3. mnist_paper in bf16 + compile: time to the paper's 225 nats"
            if gpu
            else "3. debug config, 20 steps, Parzen and FD (CPU stand-in for the mnist_paper run)",
            lambda r: paper_run(r, gpu, work, args.paper_steps, box_s=max(30.0, min(240.0, left() - 90))),
        )
        _timed(
            report,
            "4. mnist_dcgan fp16 + R1: exact resume" if gpu else "4. mnist_dcgan (tiny) + R1: exact resume",
            lambda r: resume_check(r, gpu, work),
        )
        _timed(report, "5. two processes on one device", lambda r: two_processes(r, gpu, work))
        _timed(report, "6. Inception feature extraction (FID's cost)", lambda r: inception_rows(r, gpu))
    report.add("")
    report.add(f"total {time.time() - t0:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from distgan.atomic import atomic_write_text

    atomic_write_text(out, report.text())
    print(f"[distgan] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
