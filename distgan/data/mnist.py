"""MNIST from torchvision's idx files, as uint8 tensors; splits as in the paper's code.

train = train-images[0:50000], valid = train-images[50000:60000], test = t10k-images.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = {"train": ("train", 0, 50_000), "valid": ("train", 50_000, 60_000), "test": ("test", 0, 10_000)}


from distgan.errors import DataError  # noqa: E402


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a cut or damaged download
        raise DataError(
            f"{path} is truncated or not valid gzip ({type(e).__name__}: {e}); delete it and "
            f"download MNIST again (data.download=true), or point DISTGAN_DATA_DIR at an intact copy"
        ) from None
    if len(data) < 8 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number); delete it and download MNIST again")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: expected unsigned bytes (0x08), found type code {dtype_code:#x}")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(
            f"{path} is truncated: header says {dims}, found {body.size} bytes of data; delete it and "
            f"download MNIST again, or point DISTGAN_DATA_DIR at an intact copy"
        )
    return body.reshape(dims)


def _find_raw(root: Path) -> Path | None:
    for cand in (root / "MNIST" / "raw", root / "raw", root):
        if all(((cand / f).exists() or (cand / (f + ".gz")).exists()) for pair in FILES.values() for f in pair):
            return cand
    return None


def _missing_message(root: Path, reason: str) -> str:
    names = ", ".join(f for pair in FILES.values() for f in pair)
    return (
        f"MNIST not found under {root} ({reason}). Expected {root}/MNIST/raw/ holding {names} "
        f"(torchvision's layout, optionally .gz). Point data.root or the DISTGAN_DATA_DIR environment "
        f"variable at the directory that contains MNIST/, or allow a download (data.download=true, needs internet)."
    )


def ensure_mnist(root: str | os.PathLike, download: bool = True) -> Path:
    """Return the directory with the idx files, downloading with torchvision when allowed."""
    root = Path(root)
    raw = _find_raw(root)
    if raw is not None:
        return raw
    if not download:
        raise DataError(_missing_message(root, "data.download=false"))
    try:
        import torchvision

        torchvision.datasets.MNIST(str(root), train=True, download=True)
        torchvision.datasets.MNIST(str(root), train=False, download=True)
    except Exception as e:  # offline, or a mirror refused: one clear message instead of a traceback
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(_missing_message(root, f"download failed, offline? {type(e).__name__}: {first}")) from None
    raw = _find_raw(root)
    if raw is None:
        raise DataError(_missing_message(root, "download finished but the files are not there"))
    return raw


def _path(raw: Path, name: str) -> Path:
    p = raw / name
    return p if p.exists() else raw / (name + ".gz")


def load_split(root: str | os.PathLike, split: str, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 ``[N, 1, 28, 28]`` and labels as int64 ``[N]`` for ``train``, ``valid`` or ``test``."""
    if split not in SPLITS:
        raise ValueError(f"unknown MNIST split {split!r}; choose one of {sorted(SPLITS)}")
    raw = ensure_mnist(root, download)
    source, lo, hi = SPLITS[split]
    img_name, lbl_name = FILES[source]
    try:
        images = _read_idx(_path(raw, img_name))
        labels = _read_idx(_path(raw, lbl_name))
    except OSError as e:
        raise DataError(
            f"cannot read MNIST under {raw}: {e}. Check permissions or point DISTGAN_DATA_DIR elsewhere"
        ) from None
    images = torch.from_numpy(images[lo:hi].copy()).unsqueeze(1)
    labels = torch.from_numpy(labels[lo:hi].astype(np.int64))
    return images, labels


def split_files(root: str | os.PathLike, split: str) -> list[Path]:
    """The idx files a split is read from (its images file: what a content hash of the split covers)."""
    raw = ensure_mnist(root, download=False)
    return [_path(raw, FILES[SPLITS[split][0]][0])]
