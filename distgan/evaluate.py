"""Score a checkpoint (or an .npz of samples).

    python -m distgan.evaluate --checkpoint runs/paper --metrics parzen [--num 10000] [--seed 0] [--json out.json]

Metrics: ``parzen`` (the paper's Parzen-window log-likelihood of the MNIST test set) and ``nn``
(nearest-neighbour distances to the training set: the memorisation check printed beside Parzen).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

METRICS = ("parzen", "nn")


def evaluate_images(images_u8: torch.Tensor, data_root: str, metrics=METRICS) -> dict:
    from distgan.data.mnist import load_split
    from distgan.metrics.parzen import nearest_neighbour_check, parzen

    x = images_u8.float().flatten(1) / 255.0
    valid = load_split(data_root, "valid", download=False)[0][:1000].float().flatten(1) / 255.0
    test = load_split(data_root, "test", download=False)[0].float().flatten(1) / 255.0
    out = {}
    if "parzen" in metrics:
        out.update(parzen(x, valid, test))
    if "nn" in metrics:
        train = load_split(data_root, "train", download=False)[0].float().flatten(1) / 255.0
        out.update(nearest_neighbour_check(x, train, test))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.evaluate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="run dir or checkpoint directory")
    src.add_argument("--samples", help="an .npz written by distgan.sample (key 'images')")
    p.add_argument("--metrics", default="parzen", help=f"comma list of {','.join(METRICS)} or 'all'")
    p.add_argument("--num", type=int, default=10_000, help="samples to generate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["ema", "raw"], default="ema")
    p.add_argument("--data-root", default=None, help="MNIST root (default: $DISTGAN_DATA_DIR, else the run's data.root)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    metrics = METRICS if args.metrics == "all" else tuple(m.strip() for m in args.metrics.split(","))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        print(f"distgan: unknown metric(s) {unknown}; choose from {list(METRICS)} or 'all'", file=sys.stderr)
        return 2
    import os

    from distgan.checkpoint import CheckpointError
    from distgan.config import ConfigError
    from distgan.data.mnist import DataError

    try:
        if args.checkpoint:
            from distgan.sample import generate, load_generator

            G, cfg, path = load_generator(args.checkpoint, args.weights)
            images = generate(G, cfg, args.num, args.seed)
            source = {"checkpoint": str(path), "weights": args.weights, "seed": args.seed}
            manifest = json.loads((path / "manifest.json").read_text())
            root = (args.data_root or os.environ.get("DISTGAN_DATA_DIR")
                    or manifest["config"].get("data", {}).get("root", "data"))
        else:
            images = torch.from_numpy(np.load(args.samples)["images"])
            source = {"samples": args.samples}
            root = args.data_root or os.environ.get("DISTGAN_DATA_DIR") or "data"
        t0 = time.time()
        res = evaluate_images(images, root, metrics)
    except (CheckpointError, ConfigError, DataError) as e:
        print(f"distgan: {e}", file=sys.stderr)
        return 2
    res = {**source, "num": int(images.shape[0]), **res, "eval_seconds": round(time.time() - t0, 1)}
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if "parzen_ll" in res:
        print(f"Parzen log-likelihood: {res['parzen_ll']:.1f} +- {res['parzen_se']:.1f} nats (sigma {res['parzen_sigma']:.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
