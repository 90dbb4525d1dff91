"""Run outputs on rank 0: a JSON-lines metrics log, sample grids, the progress bar and W&B."""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import torch

from distgan.atomic import append_line, atomic_path, atomic_write_text


def wandb_mode(configured: str) -> str:
    """The resolved ``wandb.mode`` ($WANDB_MODE was applied by config.load): ``auto`` is online only when
    an API key is set."""
    if configured != "auto":
        return configured
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> uint8 ``[H', W', C]`` grid, ``nrow`` images per row (default: a square), a
    ``pad``-pixel black border around every image (torchvision's make_grid layout, without importing it)."""
    import einops  # here, not at the top: training and the GPU check run where einops is not installed

    n, c, h, w = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = -(-n // nrow)
    cells = torch.zeros(rows * nrow, c, h + pad, w + pad, dtype=images.dtype)
    cells[:n, :, pad:, pad:] = images
    grid = einops.rearrange(cells, "(r k) c h w -> (r h) (k w) c", k=nrow)
    return torch.nn.functional.pad(grid, (0, 0, 0, pad, 0, pad)).numpy()  # the border after the last row/column


def save_png(array_hwc: np.ndarray, path: Path) -> None:
    from PIL import Image

    img = Image.fromarray(array_hwc[..., 0] if array_hwc.shape[-1] == 1 else array_hwc)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


class NullTracker:
    """What ranks other than 0 hold: every call is a no-op."""

    active = False

    def log(self, step, metrics):
        pass

    def advance(self, n=1):
        pass

    def grid(self, step, images):
        pass

    def write(self, line):
        pass

    def close(self):
        pass


class Tracker(NullTracker):
    """Rank 0's tracker: metrics.jsonl, sample grids, progress bar and W&B."""

    active = True

    def __init__(self, cfg, run_dir: Path, total_steps: int, start_step: int):
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        self.bar, self.lines, self.total = None, False, total_steps
        if cfg.train.progress:
            if sys.stderr.isatty():  # a bar for people; tqdm draws on stderr
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
            else:  # a log file (SLURM): one plain line per log tick instead of a redraw several times a second
                self.lines = True
        self.wandb = None
        mode = wandb_mode(cfg.wandb.mode)
        if mode != "disabled":
            import wandb

            id_file = run_dir / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
            atomic_write_text(id_file, run_id + "\n")
            self.wandb = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity or None,
                name=cfg.wandb.name or run_dir.name,
                id=run_id,
                resume="allow",
                dir=str(run_dir),
                mode=mode,
                config=cfg.to_dict(),
            )
        self.t0 = time.time()

    def log(self, step: int, metrics: dict) -> None:
        rec = {"step": step, "time": round(time.time() - self.t0, 3), **metrics}
        append_line(self.metrics_path, json.dumps(rec))
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        short = {"loss/D": "lossD", "loss/G": "lossG", "D(x)": "D(x)", "D(G(z))": "D(G(z))", "img/s": "img/s"}
        if self.bar is not None:
            self.bar.set_postfix({v: f"{metrics[k]:.3g}" for k, v in short.items() if k in metrics}, refresh=False)
        elif self.lines and "loss/D" in metrics:
            figures = " | ".join(f"{v} {metrics[k]:.4g}" for k, v in short.items() if k in metrics)
            skipped = sum(metrics.get(k, 0) for k in ("skipped/D", "skipped/G"))
            print(
                f"[distgan] step {step}/{self.total} | {figures}" + (f" | skipped {skipped:g}" if skipped else ""),
                flush=True,
            )

    def write(self, line: str) -> None:
        """A console line that does not break the progress bar."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def grid(self, step: int, images: torch.Tensor) -> None:
        try:
            arr = image_grid(images)
            save_png(arr, self.run_dir / "samples" / f"step-{step:09d}.png")
        except ImportError as e:  # a GPU box with torch and accelerate alone (launch/gpu_check.sh): no grids
            if not getattr(self, "_warned_png", False):
                print(f"[distgan] {e.name} is not installed: sample grids are not written", flush=True)
                self._warned_png = True
            return
        if self.wandb is not None:
            import wandb

            self.wandb.log({"samples": wandb.Image(arr)}, step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
