"""Generate images from a checkpoint.

    python -m distgan.sample --checkpoint runs/paper --num 10000 --out samples.npz [--seed 0] [--weights ema|raw]
    python -m distgan.sample --checkpoint runs/paper --num 64 --out grid.png
    python -m distgan.sample --checkpoint runs/paper --interpolate 8 --out walk.gif [--num 16] [--frames 12]

``--checkpoint`` is a run dir (its latest good checkpoint) or one checkpoint directory. The npz holds
``images``: uint8 ``[N, C, H, W]``. Same checkpoint + same seed + same device = the same bytes.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
import torch

from distgan import checkpoint as ckpt_lib
from distgan.atomic import atomic_path, atomic_write_bytes
from distgan.checkpoint import CheckpointError
from distgan.config import ConfigError, build
from distgan.generate import fixed_noise, generate
from distgan.networks import build_networks
from distgan.tracking import image_grid, save_png


def load_generator(checkpoint: str | os.PathLike, weights: str = "ema", device="cpu"):
    """(generator in eval mode, its Config, the checkpoint directory) from a run dir or checkpoint."""

    path = ckpt_lib.resolve(checkpoint)
    manifest = ckpt_lib.verify(path)
    # Only the model section and the image shape decide the generator; other sections may come from
    # another version, and the data need not be present where the samples are drawn.
    data = manifest["config"].get("data", {})
    cfg = build(
        {
            "model": manifest["config"]["model"],
            "data": {k: data[k] for k in ("dataset", "urls", "image_size", "channels") if k in data},
        }
    )
    G, _ = build_networks(cfg)
    name = {"ema": "G_ema.safetensors", "raw": "G.safetensors"}[weights]
    if weights == "ema" and not (path / name).exists():
        print(f"[distgan] {path} has no EMA weights (ema.enabled=false); using the raw generator", file=sys.stderr)
        name = "G.safetensors"
    ckpt_lib.load_weights(path, name, G)
    return G.to(device).eval(), cfg, path


def generate_seeded(G, cfg, num: int, seed: int, batch_size: int = 500, device="cpu") -> torch.Tensor:
    """uint8 ``[num, C, H, W]``; the noise comes from a CPU generator seeded with ``seed``."""

    return generate(G, fixed_noise(num, cfg.model.z_dim, cfg.model.noise, seed), device, batch_size)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation row by row (keeps Gaussian noise at a typical norm along the path)."""
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.arccos((an * bn).sum(1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


@torch.no_grad()
def latent_walk(G, cfg, walks: int, keyframes: int, frames: int, seed: int, device="cpu") -> torch.Tensor:
    """uint8 ``[T, walks, C, H, W]``: each walk passes through ``keyframes`` random latents and back to the
    first, ``frames`` steps per segment. Gaussian noise is interpolated on the sphere (slerp), uniform noise
    linearly (it stays inside the box)."""

    keys = fixed_noise(keyframes * walks, cfg.model.z_dim, cfg.model.noise, seed).reshape(keyframes, walks, -1)
    out = []
    for k in range(keyframes):
        a, b = keys[k], keys[(k + 1) % keyframes]
        for f in range(frames):
            t = f / frames
            z = slerp(a, b, t) if cfg.model.noise == "normal" else a + (b - a) * t
            out.append(generate(G, z, device))
    return torch.stack(out)


def write_gif(frames_u8: torch.Tensor, out: Path, ms_per_frame: int = 80) -> None:
    """``[T, N, C, H, W]`` -> an animated GIF of grids, written atomically, looping forever."""
    from PIL import Image

    imgs = []
    for frame in frames_u8:
        arr = image_grid(frame)
        imgs.append(Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=ms_per_frame, loop=0)


def write_output(images: torch.Tensor, out: Path) -> None:
    """Write an .npz (key ``images``) or a .png grid atomically: no partial file where a good one was."""

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        save_png(image_grid(images), out)
        return
    buf = io.BytesIO()
    np.savez(buf, images=images.numpy())
    atomic_write_bytes(out, buf.getvalue())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run dir or checkpoint directory")
    p.add_argument(
        "--num",
        type=int,
        default=None,
        help="number of images (default 64), or of parallel walks with --interpolate (default 16)",
    )
    p.add_argument("--out", required=True, help="output .npz (key 'images', uint8 [N,C,H,W]), .png grid, or .gif walk")
    p.add_argument(
        "--interpolate",
        type=int,
        default=0,
        metavar="K",
        help="write latent-space walks through K random points (needs --out *.gif)",
    )
    p.add_argument("--frames", type=int, default=12, help="frames between two points of a walk (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["ema", "raw"], default="ema", help="EMA generator (default) or trained G")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.interpolate:
        if out.suffix != ".gif" or args.interpolate < 2 or args.frames < 1:
            print(
                f"distgan: --interpolate K needs K >= 2, --frames >= 1 and --out ending in .gif (got K="
                f"{args.interpolate}, --frames {args.frames}, --out {out})",
                file=sys.stderr,
            )
            return 2
    elif out.suffix not in (".npz", ".png"):
        print(f"distgan: --out {out} must end in .npz or .png (or .gif with --interpolate K)", file=sys.stderr)
        return 2
    args.num = args.num if args.num is not None else (16 if args.interpolate else 64)
    if args.num <= 0:
        print(f"distgan: --num must be positive, got {args.num}", file=sys.stderr)
        return 2

    try:
        G, cfg, path = load_generator(args.checkpoint, args.weights, args.device)
    except (CheckpointError, ConfigError) as e:
        print(f"distgan: {e}", file=sys.stderr)
        return 2
    if args.interpolate:
        frames = latent_walk(G, cfg, args.num, args.interpolate, args.frames, args.seed, args.device)
        write_gif(frames, out)
        print(
            f"[distgan] wrote {out}: {args.num} walks through {args.interpolate} points, {frames.shape[0]} frames, "
            f"from {path} ({args.weights} weights, seed {args.seed})"
        )
        return 0
    images = generate_seeded(G, cfg, args.num, args.seed, device=args.device)
    write_output(images, out)
    print(f"[distgan] wrote {out} ({tuple(images.shape)} uint8) from {path} ({args.weights} weights, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
