"""Run outputs on rank 0: a JSON-lines metrics log, sample grids, the progress bar and W&B."""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from pathlib import Path

import numpy as np
import torch


def wandb_mode(configured: str) -> str:
    """The resolved ``wandb.mode`` ($WANDB_MODE was applied by config.load): ``auto`` is online only when
    an API key is set."""
    if configured != "auto":
        return configured
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def image_grid(images: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` -> uint8 ``[H', W', C]`` grid with a 2-pixel border."""
    import torchvision

    nrow = nrow or int(math.ceil(math.sqrt(images.shape[0])))
    grid = torchvision.utils.make_grid(images, nrow=nrow, padding=2, pad_value=0)
    return grid.permute(1, 2, 0).numpy()


def save_png(array_hwc: np.ndarray, path: Path) -> None:
    from PIL import Image

    path = Path(path)
    img = Image.fromarray(array_hwc[..., 0] if array_hwc.shape[-1] == 1 else array_hwc)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


class NullTracker:
    """What ranks other than 0 hold: every call is a no-op."""

    active = False

    def log(self, step, metrics): pass
    def advance(self, n=1): pass
    def grid(self, step, images): pass
    def write(self, line): pass
    def close(self): pass


class Tracker(NullTracker):
    """Rank 0's tracker: metrics.jsonl, sample grids, progress bar and W&B."""

    active = True

    def __init__(self, cfg, run_dir: Path, total_steps: int, start_step: int):
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        self.bar = None
        if cfg.train.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.wandb = None
        mode = wandb_mode(cfg.wandb.mode)
        if mode != "disabled":
            import wandb

            id_file = run_dir / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
            id_file.write_text(run_id + "\n")
            self.wandb = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity or None,
                                    name=cfg.wandb.name or run_dir.name, id=run_id, resume="allow",
                                    dir=str(run_dir), mode=mode, config=cfg.to_dict())
        self.t0 = time.time()

    def log(self, step: int, metrics: dict) -> None:
        rec = {"step": step, "time": round(time.time() - self.t0, 3), **metrics}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.bar is not None:
            short = {"img/s": "img_s", "loss/D": "lossD", "loss/G": "lossG", "D(x)": "D(x)", "D(G(z))": "D(G(z))"}
            self.bar.set_postfix({v: f"{metrics[k]:.3g}" for k, v in short.items() if k in metrics}, refresh=False)

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
        arr = image_grid(images)
        save_png(arr, self.run_dir / "samples" / f"step-{step:09d}.png")
        if self.wandb is not None:
            import wandb

            self.wandb.log({"samples": wandb.Image(arr)}, step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
