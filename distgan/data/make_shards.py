"""Write WebDataset tar shards from a folder of images, MNIST, or Stacked MNIST.

    python -m distgan.data.make_shards --from DIR_OF_IMAGES --out shards/ --size 64 --shard-size 5000
    python -m distgan.data.make_shards --from mnist --out shards/mnist --size 32
    python -m distgan.data.make_shards --from stacked_mnist --out shards/stacked --num 128000
    python -m distgan.data.make_shards --from colour_mnist --num 5000 --size 32 --folder rgb32/   # a folder

``colour_mnist``: MNIST digits painted in a random colour on a random, darker background: an RGB dataset
with 10 classes that this offline machine can make (the small-data and 32 px examples of the docs use it).
``--folder DIR`` writes PNG files into one sub-folder per class instead of shards: the folder that
``--from DIR`` (and ``distgan.evaluate --samples DIR``) read.

Each sample is ``{key}.png`` (or ``.jpg`` with ``--format jpg``) resized so its short side is ``--size``
and centre-cropped to a square, plus ``{key}.cls`` with an integer class when there is one: the index
of the image's top-level sub-folder (sorted names) for a folder, the digit for MNIST, and
``100 a + 10 b + c`` for a Stacked MNIST triple (digits a, b, c in the R, G, B channels).

A folder's images are written in a random order drawn from ``--seed``, so every shard holds every class.
Shards are ``OUT/{prefix}-000000.tar ...``, each written to a temporary name and renamed when complete,
plus ``OUT/{prefix}-meta.json`` (count, shards, image shape, classes). An output folder that already
holds shards with this prefix is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

from distgan.atomic import atomic_path, atomic_write_text
from distgan.data import data_root
from distgan.data.mnist import DataError, load_split

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def resize_center_crop(img, size: int):
    """Short side to ``size`` (bicubic when shrinking uses a box filter first), then a centre square."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0 if scale < 1 else None)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def folder_samples(root: Path, channels: int, size: int, seed: int = 0):
    """(PIL image, class or None, name) for every image under ``root``; classes from top-level folders.

    In a seeded random order (``torch.randperm`` of the sorted paths): sorted paths would fill the first shards
    with the first class and the last with the last, so a held-out shard (``data.holdout_shards``) or a
    shuffle buffer would see one class."""
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"distgan: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    files = [files[i] for i in torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))]
    top = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    classes = {name: i for i, name in enumerate(top)}

    def gen():
        for p in files:
            parts = p.relative_to(root).parts
            try:
                with Image.open(p) as im:
                    img = im.convert("L" if channels == 1 else "RGB")
            except (UnidentifiedImageError, OSError) as e:
                print(f"distgan: skipping unreadable image {p}: {e}", file=sys.stderr)
                continue
            yield resize_center_crop(img, size), (classes[parts[0]] if len(parts) > 1 else None), str(p)

    return len(files), gen(), top


def mnist_samples(root: str, split: str, channels: int, size: int):
    from PIL import Image

    images, labels = load_split(root, split)

    def gen():
        for x, y in zip(images, labels):
            img = Image.fromarray(x[0].numpy(), "L")
            if channels == 3:
                img = img.convert("RGB")
            yield resize_center_crop(img, size), int(y), None

    return images.shape[0], gen(), [str(d) for d in range(10)]


def stacked_mnist_samples(root: str, split: str, num: int, seed: int, size: int):
    """Stacked MNIST (Metz et al. 2017; Srivastava et al. 2017; Lin et al. 2018): three random MNIST digits
    as the R, G and B channels; 1000 classes ``100 a + 10 b + c``."""
    from PIL import Image

    images, labels = load_split(root, split)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, images.shape[0], (num, 3), generator=g)

    def gen():
        for row in idx:
            rgb = images[row, 0].permute(1, 2, 0).numpy()  # [28, 28, 3]
            a, b, c = (int(labels[i]) for i in row)
            yield (
                resize_center_crop(Image.fromarray(np.ascontiguousarray(rgb), "RGB"), size),
                100 * a + 10 * b + c,
                None,
            )

    return num, gen(), [f"{i:03d}" for i in range(1000)]


def colour_mnist_samples(root: str, split: str, num: int, seed: int, size: int):
    """MNIST digit i painted in a random colour over a random background at most half as bright."""
    from PIL import Image

    images, labels = load_split(root, split)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, images.shape[0], (num,), generator=g)
    fg = torch.rand(num, 3, generator=g) * 0.6 + 0.4  # colours of the stroke and the ground, per image
    bg = torch.rand(num, 3, generator=g) * fg * 0.5

    def gen():
        for i, j in enumerate(idx.tolist()):
            a = images[j, 0].float()[..., None] / 255.0  # [28, 28, 1] stroke opacity
            rgb = ((a * fg[i] + (1 - a) * bg[i]) * 255).round().to(torch.uint8).numpy()
            yield resize_center_crop(Image.fromarray(rgb, "RGB"), size), int(labels[j]), None

    return num, gen(), [str(d) for d in range(10)]


def write_folder(samples, total: int, out: Path, classes: list[str], progress: bool = True) -> dict:
    """PNG files ``OUT/{class}/{index:07d}.png`` (each written atomically)."""
    from tqdm import tqdm

    count = 0
    for img, cls, _ in tqdm(samples, total=total, unit="img", disable=not progress, desc=f"writing {out}"):
        d = out / (classes[cls] if cls is not None else "all")
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / f"{count:07d}.png") as tmp:
            img.save(tmp, format="PNG")
        count += 1
    return {"samples": count, "folder": str(out), "classes": len(classes)}


def encode(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG" if fmt == "png" else "JPEG", **({"quality": 95} if fmt == "jpg" else {}))
    return buf.getvalue()


def write_shards(samples, total: int, out: Path, prefix: str, shard_size: int, fmt: str, progress: bool = True) -> dict:
    """Write ``samples`` (PIL image, class or None, source) into shards, each one atomically (written beside
    its name, fsynced, renamed: distgan.atomic); returns the summary."""
    import itertools

    import webdataset as wds
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    shards, count, nbytes, shape = [], 0, 0, None
    it = iter(samples)
    bar = tqdm(total=total, unit="img", disable=not progress, desc=f"writing {out}/{prefix}-*.tar")
    for shard in itertools.count():
        first = next(it, None)
        if first is None:
            break
        final = out / f"{prefix}-{shard:06d}.tar"
        with atomic_path(final) as tmp, wds.TarWriter(str(tmp)) as writer:
            for img, cls, _ in itertools.chain([first], itertools.islice(it, shard_size - 1)):
                sample = {"__key__": f"{count:09d}", fmt: encode(img, fmt)}
                if cls is not None:
                    sample["cls"] = str(cls).encode()
                writer.write(sample)
                shape = [1 if img.mode == "L" else 3, img.size[1], img.size[0]]
                count += 1
                bar.update(1)
        shards.append(final.name)
        nbytes += final.stat().st_size
    bar.close()
    return {
        "samples": count,
        "shards": len(shards),
        "bytes": nbytes,
        "image_shape": shape,
        "format": fmt,
        "files": shards,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.data.make_shards", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--from", dest="source", required=True, help="a folder of images, 'mnist', 'stacked_mnist' or 'colour_mnist'"
    )
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="output folder of shards")
    dest.add_argument("--folder", help="write PNG files into one sub-folder per class here instead of shards")
    p.add_argument("--size", type=int, default=None, help="square image size (default 64 for folders, 28 for MNIST)")
    p.add_argument("--shard-size", type=int, default=5000, help="samples per shard (default %(default)s)")
    p.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=None,
        help="1 (grayscale) or 3 (RGB); default 3 for folders and stacked_mnist, 1 for mnist",
    )
    p.add_argument("--format", choices=["png", "jpg"], default="png")
    p.add_argument("--split", choices=["train", "valid", "test"], default="train", help="MNIST split (default train)")
    p.add_argument("--num", type=int, default=128_000, help="stacked_mnist: samples (default %(default)s, PacGAN's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default=None, help="shard name prefix (default: the split, 'train')")
    p.add_argument("--data-root", default=None, help="MNIST root (default $DISTGAN_DATA_DIR, else ./data)")
    p.add_argument("--overwrite", action="store_true", help="replace shards with this prefix already in --out")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out, prefix = Path(args.out or args.folder), args.prefix or args.split
    if args.shard_size <= 0 or args.num <= 0 or (args.size is not None and args.size < 8):
        print("distgan: --shard-size and --num must be positive and --size at least 8", file=sys.stderr)
        return 2
    existing = sorted(out.glob(f"{prefix}-*.tar")) if out.is_dir() else []
    if args.folder and out.is_dir() and any(out.iterdir()):
        print(f"distgan: {out} is not empty; --folder writes into a new or empty folder. Nothing was written.",
              file=sys.stderr)  # fmt: skip
        return 2
    if existing and not args.overwrite:
        print(
            f"distgan: {out} already holds {len(existing)} shards named {prefix}-*.tar; pass --overwrite to replace "
            f"them or choose another --out/--prefix. Nothing was written.",
            file=sys.stderr,
        )
        return 2

    root = data_root(args.data_root)

    try:
        if args.source == "mnist":
            size, ch = args.size or 28, args.channels or 1
            total, samples, classes = mnist_samples(root, args.split, ch, size)
        elif args.source == "stacked_mnist":
            size, ch = args.size or 28, 3
            if args.channels == 1:
                print("distgan: stacked_mnist has 3 channels; drop --channels 1", file=sys.stderr)
                return 2
            total, samples, classes = stacked_mnist_samples(root, args.split, args.num, args.seed, size)
        elif args.source == "colour_mnist":
            size = args.size or 28
            total, samples, classes = colour_mnist_samples(root, args.split, args.num, args.seed, size)
        else:
            src = Path(args.source)
            if not src.is_dir():
                print(
                    f"distgan: --from {src}: not a folder, nor 'mnist', 'stacked_mnist' or 'colour_mnist'",
                    file=sys.stderr,
                )
                return 2
            size, ch = args.size or 64, args.channels or 3
            total, samples, classes = folder_samples(src, ch, size, args.seed)
    except DataError as e:
        print(f"distgan: {e}", file=sys.stderr)
        return 2
    if args.folder:
        summary = write_folder(samples, total, out, classes, not args.no_progress)
        print(f"[distgan] wrote {summary['samples']} images in {len(classes)} class folders under {out}")
        return 0
    if existing:
        for f in existing:
            f.unlink()
    summary = write_shards(samples, total, out, prefix, args.shard_size, args.format, not args.no_progress)
    summary.update({"source": args.source, "classes": len(classes), "class_names": classes[:1000]})

    atomic_write_text(out / f"{prefix}-meta.json", json.dumps(summary, indent=1) + "\n")
    last = len(summary["files"]) - 1
    print(
        f"[distgan] wrote {summary['samples']} samples in {summary['shards']} shards "
        f"({summary['bytes'] / 1e6:.1f} MB) to {out}/{prefix}-{{000000..{last:06d}}}.tar; image shape "
        f"{summary['image_shape']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
