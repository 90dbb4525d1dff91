"""Score a checkpoint, an .npz of samples, or real MNIST images (the floors), fully offline.

    python -m distgan.evaluate --checkpoint runs/dcgan [--metrics all|fd,cs,modes,pr,nn,parzen] [--num 10000]
                               [--json out.json]
    accelerate launch -m distgan.evaluate --checkpoint runs/dcgan ...   # each rank generates its share
    python -m distgan.evaluate --samples samples.npz --metrics parzen,nn
    python -m distgan.evaluate --real train --num 10000 --metrics all   # real vs real: what "perfect" scores
    python -m distgan.evaluate --checkpoint runs/wds32 --metrics fid,kid --num 50000   # Inception FID-50k
    python -m distgan.evaluate --samples DIR|x.npz|SHARDS --reference DIR|SHARDS|stats.safetensors --metrics fid,kid
    python -m distgan.evaluate --make-reference SHARDS|DIR|mnist:test --out stats.safetensors

Metrics (``distgan.metrics.suite``): ``fd`` Frechet distance in the MNIST classifier's features (not
Inception FID), ``cs`` classifier score, ``modes`` class coverage and KL to uniform, ``pr`` precision,
recall, density and coverage (k=3), ``nn`` memorisation check against the training set, ``parzen``
the paper's Parzen log-likelihood. Reference set: the 10,000 MNIST test images. ``fid``, ``kid``, ``is``
and ``ipr`` are the Inception metrics of any images (``distgan.metrics.fidelity``, docs/evaluation.md).

Under ``accelerate launch`` the samples are cut into fixed blocks of ``--block`` noise vectors; rank r
generates blocks r, r+W, ... and their classifier features; rank 0 gathers them in block order. Since
every block is computed the same way whatever the world size, the figures equal the 1-process ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from distgan.atomic import atomic_write_text
from distgan.checkpoint import CheckpointError
from distgan.config import ConfigError
from distgan.data import data_root
from distgan.data.mnist import DataError, load_split
from distgan.data.source import validation_source
from distgan.generate import fixed_noise, generate
from distgan.metrics import fidelity, inception, overfit, suite
from distgan.metrics.classifier import classifier_info, features_and_probs, load_classifier
from distgan.metrics.suite import FIGURES, parse_metrics
from distgan.runtime import gather_objects, leave_process_group
from distgan.sample import load_generator

OVERFIT_NUM = 2000
"""``eval.metrics=overfit``: at most this many images in each of its three sets (fewer if ``eval.num`` or the
held-out set is smaller)."""


def generate_blocks(
    G,
    cfg,
    num: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    block: int = 500,
    device="cpu",
    features: bool = True,
    extractor=None,
    classifier: str | None = None,
) -> dict[int, dict]:
    """{block index: {"images", "features", "probs"[, "inception"]}} for this rank's blocks of the ``num``
    samples: uint8 images, the MNIST classifier's features and class probabilities (``features``), and the
    Inception features (given torch-fidelity's ``extractor``). ``classifier``: a classifier file of
    ``train_classifier --shards`` in place of the shipped MNIST one.

    The noise for all ``num`` samples comes from one CPU generator seeded with ``seed``, so sample i is
    the same whichever rank makes it (and equals ``distgan.sample`` with the same seed).
    """

    z = fixed_noise(num, cfg.model.z_dim, cfg.model.noise, seed)
    clf = load_classifier(classifier, device=str(device)) if features else None
    out = {}
    for b in range(rank, (num + block - 1) // block, world):
        imgs = generate(G, z[b * block : (b + 1) * block], device, block)
        f, p = features_and_probs(imgs, clf, batch_size=block, device=str(device)) if features else (None, None)
        out[b] = {"images": imgs, "features": f, "probs": p}
        if extractor is not None:
            out[b]["inception"] = inception.features(imgs, extractor, device=device)
    return out


def assemble(blocks: dict[int, dict]) -> dict:
    """Concatenate blocks in index order: {"images", "features", "probs"[, "inception"]} (None where absent)."""
    parts = [blocks[b] for b in sorted(blocks)]
    keys = ("images", "features", "probs")
    out = {k: torch.cat([p[k] for p in parts]) if parts[0][k] is not None else None for k in keys}
    if "inception" in parts[0]:
        out["inception"] = fidelity.assemble({i: p["inception"] for i, p in enumerate(parts)})
    return out


def gather_blocks(blocks: dict[int, dict], world: int) -> dict[int, dict]:
    """Every rank's blocks on every rank (a collective; a no-op for one process)."""

    merged: dict = {}
    for d in gather_objects(blocks, world):
        merged.update(d)
    return merged


class InTrainingEval:
    """``eval.every``: the generator scored on ``eval.num`` fixed-noise samples against held-out images, so
    model selection never sees the test set: MNIST's validation split (train[50000:60000]) for the
    classifier metrics, and for the Inception metrics (any dataset) the reference statistics of that split
    or of the run's held-out shards (``data.val_urls``, ``data.holdout_shards``), made once (cached).

    Every rank generates its blocks and their features; rank 0 computes the figures from the gathered
    blocks and every rank receives them, so ``best`` is decided alike everywhere."""

    def __init__(self, cfg, rank0, rank: int, world: int, device):

        self.cfg, self.rank0, self.rank, self.world, self.device = cfg, rank0, rank, world, device
        self.metrics = suite.parse_metrics(cfg.eval.metrics)
        self.best = BestRule(cfg.eval.best_metric)
        self.extractor = self.reference = None
        self.classifier = cfg.eval.classifier or None
        self.classifier_reference = "valid"
        self.gap = None
        if cfg.eval.every and "overfit" in self.metrics:
            self.gap = overfit.Gap(
                overfit.training_source(cfg),
                "mnist:valid" if cfg.data.dataset == "mnist" else validation_source(cfg),
                cfg.data.root,
                min(cfg.eval.num, OVERFIT_NUM),
                cfg.model.noise,
                cfg.eval.seed,
                device,
            )
        if cfg.eval.every and self.classifier:  # fails before anything is written when it does not fit the data
            check_classifier(self.classifier, cfg.data.image_shape)
            self.classifier_reference = validation_source(cfg)
        if cfg.eval.every and suite.needs_inception(self.metrics):
            # before anything is written: missing or wrong weights end the start with exit 2
            weights = inception.find_weights(cfg.eval.inception_weights)
            self.extractor = inception.load_extractor(weights, device)
            source = fidelity.Source(validation_source(cfg), cfg.data.root)
            self.reference, hit = fidelity.cached_reference(
                source, weights, cfg.eval.reference_num or None, rank, world, cfg.eval.block, device
            )
            rank0.print(
                f"[distgan] Inception reference: {self.reference.meta['num']} held-out images of {source.spec} "
                f"({'cached' if hit else 'computed'}; weights {weights})"
            )

    def score(self, G, D=None, G_train=None) -> dict:
        """The figures of ``eval.metrics`` for generator ``G`` (the EMA one, if kept); ``overfit`` also needs
        D and the generator D trains against (``G_train``)."""

        e = self.cfg.eval
        samples = [m for m in self.metrics if m not in suite.D_METRICS]
        blocks = (
            {}
            if not samples
            else generate_blocks(
                G,
                self.cfg,
                e.num,
                e.seed,
                self.rank,
                self.world,
                e.block,
                self.device,
                features=bool(suite.FEATURE_METRICS & set(self.metrics)),
                extractor=self.extractor,
                classifier=self.classifier,
            )
        )
        blocks = gather_blocks(blocks, self.world)

        def compute():
            res = self.gap.figures(D, G_train if G_train is not None else G) if self.gap else {}
            if not samples:
                return res
            a = assemble(blocks)
            res |= suite.compute(
                a["images"],
                self.metrics,
                self.cfg.data.root,
                a["features"],
                a["probs"],
                reference=self.classifier_reference,
                classifier=self.classifier,
            )
            if self.extractor is not None:
                res.update(fidelity.figures(a["inception"], self.reference, self.metrics))
            return {k: v for k, v in res.items() if isinstance(v, (int, float))}

        return self.rank0.collective(compute)

    def summary(self, step: int, figures: dict, seconds: float) -> str:
        """The console line of one evaluation."""

        shown = " | ".join(f"{k} {figures[k]:.4g}" for k in FIGURES if k in figures and k != "modes")
        if "modes" in figures:
            shown += f" | modes {figures['modes']}/{figures['modes_total']}"
        b = self.best.best
        best = f" | best {b['metric']} {b['value']:.4g} at step {b['step']}" if b else ""
        return f"[distgan] eval step {step}: {shown}{best} ({seconds:.1f} s)"


def check_classifier(path: str, image_shape) -> None:
    """DataError unless the classifier file loads and was trained on images of ``image_shape`` (C, H, W)."""
    info = classifier_info_of(path)
    c, h, _ = image_shape
    if (int(info.get("channels", 1)), int(info.get("image_size", 28))) != (c, h):
        raise DataError(
            f"classifier {path} was trained on {info.get('channels', 1)}-channel {info.get('image_size', 28)} px "
            f"images, the data are {c}x{h}x{h}; train one on these shards with python -m "
            f"distgan.metrics.train_classifier --shards PATTERN --out FILE"
        )


def classifier_info_of(path: str) -> dict:
    load_classifier(path)  # a missing or unreadable file: DataError naming it
    return classifier_info(path)


class BestRule:
    """Which evaluation made ``checkpoints/best``: the best value of ``metric`` so far (a figure of
    ``distgan.metrics.suite.FIGURES``; its catalogue entry says which way is better); '' keeps none."""

    def __init__(self, metric: str):
        self.metric = metric
        self.best: dict | None = None  # {"metric", "value", "step"}

    def update(self, step: int, figures: dict) -> bool:
        """Record an evaluation; True if it is a new best (the caller then writes checkpoints/best)."""
        if not self.metric:
            return False

        value = float(figures[self.metric])
        sign = -1.0 if FIGURES[self.metric].lower_is_better else 1.0
        if self.best is None or sign * value > sign * self.best["value"]:
            self.best = {"metric": self.metric, "value": value, "step": step}
            return True
        return False

    def restore(self, saved: dict | None) -> None:
        """The best of a resumed run, unless another figure selects from now on (then a new best starts)."""
        self.best = saved if saved is not None and saved.get("metric") == self.metric else None


def _print_table(res: dict) -> None:
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if "parzen_ll" in res:
        print(
            f"Parzen log-likelihood: {res['parzen_ll']:.1f} +- {res['parzen_se']:.1f} nats "
            f"(sigma {res['parzen_sigma']:.4f})"
        )


def main(argv=None) -> int:

    p = argparse.ArgumentParser(prog="python -m distgan.evaluate", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", help="run dir (its latest good checkpoint) or a checkpoint dir such as RUN/checkpoints/best"
    )
    src.add_argument(
        "--samples",
        help="images to score: an .npz written by distgan.sample (key 'images'), a folder of images or a shard pattern",
    )
    src.add_argument("--real", choices=["train", "valid", "test"], help="score the first --num real images of a split")
    src.add_argument(
        "--make-reference",
        metavar="SOURCE",
        help="write Inception reference statistics (--out) of a folder, shard pattern, .npz or mnist[:split]",
    )
    p.add_argument("--metrics", default="fd,cs,modes,pr", help="comma list of metrics or 'all' (default %(default)s)")
    p.add_argument("--num", type=int, default=None, help="samples to generate or read (default 10000; all of a source)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=["ema", "raw"], default="ema")
    p.add_argument("--block", type=int, default=500, help="samples per generation block (default %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: this rank's GPU if any, else cpu)")
    p.add_argument(
        "--data-root", default=None, help="MNIST root (default: $DISTGAN_DATA_DIR, else the run's data.root)"
    )
    p.add_argument(
        "--reference",
        default=None,
        help="what the Inception metrics compare against: a reference statistics file, a folder, shard pattern, "
        ".npz or mnist[:split] (default: MNIST's test set for 28x28 runs, the run's data.val_urls for shard runs)",
    )
    p.add_argument("--inception-weights", default="", help="torch-fidelity's Inception weights file (see docs)")
    p.add_argument(
        "--classifier",
        default=None,
        help="a classifier of train_classifier --shards for fd,cs,modes,pr on your data (needs --reference)",
    )
    p.add_argument("--out", default=None, help="with --make-reference: the statistics file to write")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    try:
        metrics = parse_metrics(args.metrics)
    except ValueError as e:
        print(f"distgan: {e}", file=sys.stderr)
        return 2
    if set(metrics) & set(suite.D_METRICS):
        print(
            f"distgan: {sorted(set(metrics) & set(suite.D_METRICS))} measure the discriminator while it trains: "
            f"set it in the run's eval.metrics (its figures are in metrics.jsonl as eval/d_*), not here",
            file=sys.stderr,
        )
        return 2
    if (args.num is not None and args.num <= 0) or args.block <= 0:
        print(f"distgan: --num and --block must be positive (got {args.num}, {args.block})", file=sys.stderr)
        return 2
    if bool(args.make_reference) != bool(args.out):
        print("distgan: --make-reference SOURCE and --out FILE go together", file=sys.stderr)
        return 2

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _evaluate(args, metrics, 0, 1, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # under accelerate launch / torchrun
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    code = _evaluate(args, metrics, state.process_index, state.num_processes, args.device or str(state.device))
    # Every rank leaves together and takes its process group down: a rank that exits while rank 0 still
    # scores, with gloo's threads alive, can abort in teardown ("terminate called without an active
    # exception", exit -6). An exception skips this: the launcher then stops the other ranks.
    state.wait_for_everyone()
    leave_process_group()
    return code


def _reference(args, cfg_data: dict | None, root: str, weights, rank: int, world: int, device) -> fidelity.Reference:
    """The Inception reference of --reference, else the default of the run (see --reference's help)."""
    spec = args.reference
    if spec is None:
        data = cfg_data or {}
        if data.get("dataset", "mnist") == "mnist":
            spec = "mnist:test"
        else:
            from distgan.config import build
            from distgan.data.source import split_urls

            known = ("dataset", "urls", "image_size", "channels", "val_urls", "holdout_shards")
            spec = split_urls(build({"data": {k: data[k] for k in known if k in data}}).data)[1]
        if not spec:
            raise DataError("the Inception metrics need --reference (a statistics file, folder, shards or .npz)")
    if spec.endswith(".safetensors"):
        return fidelity.Reference.load(spec, inception.weights_hash(weights))
    ref, _ = fidelity.cached_reference(fidelity.Source(spec, root), weights, None, rank, world, args.block, device)
    return ref


def _evaluate(args, metrics, rank: int, world: int, device: str) -> int:
    t0 = time.time()
    num = args.num
    try:
        weights = extractor = None
        if args.make_reference or suite.needs_inception(metrics):
            weights = inception.find_weights(args.inception_weights)
            extractor = inception.load_extractor(weights, device)
        if args.make_reference:
            root = data_root(args.data_root)
            ref = fidelity.make_reference(
                fidelity.Source(args.make_reference, root), weights, num, rank, world, args.block, device
            )
            if rank == 0:
                ref.save(args.out)
                print(
                    f"[distgan] wrote {args.out}: {ref.meta['num']} images of {args.make_reference}, content "
                    f"{ref.meta['content']}, weights {ref.meta['feature_net']} ({time.time() - t0:.0f} s)"
                )
            return 0
        cfg_data = None
        incep = None
        feats = probs = None
        if args.checkpoint:
            G, cfg, path = load_generator(args.checkpoint, args.weights, device)
            blocks = gather_blocks(
                generate_blocks(
                    G,
                    cfg,
                    num or 10_000,
                    args.seed,
                    rank,
                    world,
                    args.block,
                    device,
                    features=bool(suite.FEATURE_METRICS & set(metrics)),
                    extractor=extractor,
                    classifier=args.classifier,
                ),
                world,
            )
            a = assemble(blocks)
            images, feats, probs, incep = a["images"], a["features"], a["probs"], a.get("inception")
            manifest = json.loads((path / "manifest.json").read_text())  # verified by load_generator
            source = {
                "checkpoint": str(path),
                "step": manifest["step"],
                "weights": args.weights,
                "seed": args.seed,
                "world_size": world,
            }
            cfg_data = manifest["config"].get("data", {})
            root = data_root(args.data_root, cfg_data.get("root"))
        elif args.samples:
            root = data_root(args.data_root)
            images = fidelity.Source(args.samples, root).load(num)
            source = {"samples": args.samples}
        else:
            root = data_root(args.data_root)
            images = load_split(root, args.real, download=False)[0][: num or 10_000]
            source = {"real": args.real}
        if extractor is not None:
            ref = _reference(args, cfg_data, root, weights, rank, world, device)
            if incep is None:
                incep = fidelity.extract(images, extractor, rank, world, args.block, device)
            source["reference"] = args.reference or ref.meta.get("source")
        if args.classifier and not args.reference:
            raise DataError("--classifier compares against held-out images of your data: pass --reference SOURCE")
        res = (
            suite.compute(
                images, metrics, root, feats, probs, args.reference if args.classifier else "test", args.classifier
            )
            if rank == 0
            else {}
        )
        if extractor is not None and rank == 0:
            res.update(fidelity.figures(incep, ref, metrics))
    except (CheckpointError, ConfigError, DataError, FileNotFoundError, ValueError) as e:
        print(f"distgan: {e}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    res = {**source, "num": int(images.shape[0]), **res, "eval_seconds": round(time.time() - t0, 1)}
    _print_table(res)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
