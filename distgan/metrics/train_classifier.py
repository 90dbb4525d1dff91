"""Reproduce the shipped MNIST feature network, or train the same network on your labelled shards.

    python -m distgan.metrics.train_classifier [--epochs 4] [--seed 0]
                                               [--out distgan/metrics/weights/mnist_classifier.safetensors]
    python -m distgan.metrics.train_classifier --shards 'shards/train-{000000..000009}.tar'
                                               [--val-shards 'shards/val-{000000..000001}.tar'] --out clf.safetensors

MNIST: trains on the first 50,000 training images (the paper's split; 50,000-60,000 is validation) with
random shifts of up to 2 pixels, Adam with a cosine schedule, and reports validation and test
accuracy. Shards: every sample needs a ``.cls`` (make_shards writes the class of a folder's sub-folder);
any size, 1 or 3 channels, as many classes as the labels say; the last tenth is held out for validation
accuracy unless ``--val-shards`` are given. The classifier then gives FD, classifier score, modes and
precision/recall for that data (``eval.classifier``, ``distgan.evaluate --classifier``): an offline
figure for a run when no Inception weights are at hand, comparable between runs on the same data, never
with papers. The weights are written atomically, with the accuracies, the image shape, the classes and the
command in their metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from distgan.atomic import atomic_path
from distgan.data import data_root
from distgan.data.mnist import DataError, load_split
from distgan.metrics.classifier import MEAN, STD, WEIGHTS, MNISTClassifier, features_and_probs


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (zero fill): digits off-centre still classify."""
    b, (h, w) = x.shape[0], x.shape[-2:]
    padded = F.pad(x, (max_shift,) * 4)
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, b), generator=g)).unbind(0)
    out = torch.empty_like(x)
    for i in range(b):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def shard_data(pattern: str, val_pattern: str | None):
    """((train images, labels), (validation images, labels), classes) from labelled shards."""
    from distgan.data.stream import check_urls, expand_urls, read_all, shard_meta
    from distgan.metrics.fidelity import _first_image_shape

    def read(p):
        urls = expand_urls(p)
        check_urls(urls)
        shape = (shard_meta(urls) or {}).get("image_shape") or _first_image_shape(urls)
        x, y, _ = read_all(urls, tuple(shape))
        if (y < 0).any():
            raise DataError(
                f"{p}: {(y < 0).sum().item()} samples have no .cls label; train_classifier needs a class for "
                f"every sample (make_shards --from a folder with one sub-folder per class)"
            )
        return x, y

    x, y = read(pattern)
    if val_pattern:
        vx, vy = read(val_pattern)
    else:
        cut = x.shape[0] - max(1, x.shape[0] // 10)
        x, y, vx, vy = x[:cut], y[:cut], x[cut:], y[cut:]
    return (x, y), (vx, vy), int(max(y.max(), vy.max()).item()) + 1


def accuracy(net: MNISTClassifier, images, labels) -> float:
    _, probs = features_and_probs(images, net)
    return (probs.argmax(1) == labels).double().mean().item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.metrics.train_classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None, help="MNIST root (default $DISTGAN_DATA_DIR, else ./data)")
    p.add_argument("--shards", default=None, help="labelled shards to train on instead of MNIST (needs --out)")
    p.add_argument("--val-shards", default=None, help="with --shards: held-out shards for validation accuracy")
    p.add_argument("--out", default=None, help=f"weights file (default for MNIST: {WEIGHTS})")
    args = p.parse_args(argv)
    if args.shards and not args.out:
        print("distgan: --shards needs --out (the shipped MNIST weights are not overwritten)", file=sys.stderr)
        return 2
    args.out = args.out or str(WEIGHTS)

    root = data_root(args.data_root)
    try:
        if args.shards:
            (train_x, train_y), (valid_x, valid_y), classes = shard_data(args.shards, args.val_shards)
            test_x, test_y = valid_x, valid_y
        else:
            train_x, train_y = load_split(root, "train")
            valid_x, valid_y = load_split(root, "valid")
            test_x, test_y = load_split(root, "test")
            classes = 10
    except DataError as e:
        print(f"distgan: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    # MNIST keeps its pixel statistics (the shipped weights); other data are centred on 0.5
    net = MNISTClassifier(train_x.shape[1], classes, *((MEAN, STD) if not args.shards else (0.5, 0.5)))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(train_x.shape[0] / args.batch_size)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(train_x.shape[0], generator=g)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            x = random_shift(net.prepare(train_x[idx]), 2, g)
            loss = F.cross_entropy(net(x)[1], train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
        net.eval()
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / steps_per_epoch:.4f}, valid accuracy "
            f"{accuracy(net, valid_x, valid_y):.4f} ({time.time() - t0:.0f} s)",
            flush=True,
        )
    net.eval()
    test_acc, valid_acc = accuracy(net, test_x, test_y), accuracy(net, valid_x, valid_y)
    if args.shards:
        print(f"validation accuracy {valid_acc:.4f} on {valid_x.shape[0]} held-out images, {time.time() - t0:.0f} s")
    else:
        print(f"test accuracy {test_acc:.4f} (valid {valid_acc:.4f}), {time.time() - t0:.0f} s")
    from safetensors.torch import save_file

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "test_accuracy": test_acc,
        "valid_accuracy": valid_acc,
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "train_images": args.shards or "train[:50000]",
        **(
            {"channels": net.channels, "image_size": int(train_x.shape[-1]), "num_classes": classes}
            | {"mean": net.mean, "std": net.std, "val_images": args.val_shards or "the last tenth of --shards"}
            if args.shards
            else {}
        ),
        "command": "python -m distgan.metrics.train_classifier " + " ".join(argv if argv is not None else sys.argv[1:]),
    }

    with atomic_path(out) as tmp:
        save_file(
            {k: v.contiguous() for k, v in net.state_dict().items()},
            str(tmp),
            metadata={k: json.dumps(v) for k, v in meta.items()},
        )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
