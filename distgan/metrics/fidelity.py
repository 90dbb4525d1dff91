"""Inception FID, KID, Inception Score and precision/recall of any images, and reference statistics.

The figures are torch-fidelity's own functions applied to torch-fidelity's features (``inception.py``):
``fid_statistics_to_metric``, ``kid_features_to_metric`` (unbiased MMD, 100 subsets of up to 1000),
``isc_features_to_metric`` (10 splits) and ``prc_features_to_metric`` (k = 3), so a distgan figure is the
figure ``fidelity --input1 A --input2 B`` prints for the same images and weights (tested).

Work across ranks: a set of N images is cut into fixed blocks of ``block`` images; rank r computes blocks
r, r + W, ... and every rank receives all features once (one gather). A sample's features depend only on
its block, so the statistics are those of one process.

Reference statistics (``make_reference``) are a safetensors file: ``mu`` and ``sigma`` (FID; float32 and
float64, as torch-fidelity computes them),
``features`` (float32 pool features, for KID and precision/recall) and metadata: the number of images, the
feature network's hash, the resize, the data's content hash (shard, file or MNIST bytes) and its source.
:func:`cached_reference` finds a file made from the same bytes with the same weights in
``$DISTGAN_CACHE_DIR/inception`` or makes it; a file given by path is checked against the weights in use.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distgan.errors import DataError
from distgan.metrics import inception
from distgan.metrics.inception import LOGITS, POOL

KIND = "distgan-inception-reference"
FORMAT = 1
IMAGE_EXTS = "png,jpg,jpeg"
"""What a folder source is read for: torch-fidelity's defaults, searched recursively, sorted by real path."""


class ReferenceError(DataError):
    """A reference statistics file is corrupt, not a reference, or made with other weights (exit code 2)."""


# --------------------------------------------------------------------------------- image sources
@dataclass
class Source:
    """A set of images named on a command line or in a config: ``mnist[:split]``, an .npz of samples,
    a shard pattern (``dir/train-{000000..000009}.tar``) or a folder of images."""

    spec: str
    data_root: str = "data"

    @property
    def kind(self) -> str:
        s = self.spec
        if s == "mnist" or s.startswith("mnist:"):
            return "mnist"
        if s.endswith(".npz"):
            return "npz"
        if ".tar" in s:
            return "shards"
        if Path(s).is_dir():
            return "folder"
        raise DataError(
            f"{s!r} is not an image source: give a folder of images, an .npz written by distgan.sample, a shard "
            f"pattern such as 'shards/val-{{000000..000003}}.tar', or mnist[:train|valid|test]"
        )

    def _split(self) -> str:
        split = self.spec.partition(":")[2] or "test"
        if split not in ("train", "valid", "test"):
            raise DataError(f"{self.spec!r}: the MNIST split must be train, valid or test")
        return split

    def files(self) -> list[Path]:
        """The files whose bytes are the data (for the content hash)."""
        k = self.kind
        if k == "mnist":
            from distgan.data.mnist import split_files

            return split_files(self.data_root, self._split())
        if k == "npz":
            return [Path(self.spec)]
        if k == "shards":
            from distgan.data.stream import expand_urls, local_path

            paths = [local_path(u) for u in expand_urls(self.spec)]
            return [p for p in paths if p is not None]
        from torch_fidelity.utils import glob_samples_paths

        return [Path(p) for p in glob_samples_paths(self.spec, True, IMAGE_EXTS, verbose=False)]

    def content_hash(self) -> str:
        """sha256 over the data's bytes (and its kind, and MNIST's split), read in chunks: a changed byte in any
        shard or image gives another hash. Remote shards (pipe:, http) are hashed by their decoded pixels."""
        h = hashlib.sha256(f"{self.kind}:{self._split() if self.kind == 'mnist' else ''}".encode())
        files = self.files()
        if self.kind == "shards" and not files:
            h.update(self.load().numpy().tobytes())
            return h.hexdigest()[:16]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{self.spec}: {len(missing)} files missing, first {missing[0]}")
        for f in files:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]

    def load(self, num: int | None = None) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` (the first ``num`` if given)."""
        k = self.kind
        if k == "mnist":
            from distgan.data.mnist import load_split

            images = load_split(self.data_root, self._split(), download=False)[0]
        elif k == "npz":
            try:
                images = torch.from_numpy(np.load(self.spec)["images"])
            except (OSError, KeyError, ValueError) as e:
                raise DataError(f"cannot read samples {self.spec}: {e}; pass an .npz from distgan.sample") from None
        elif k == "shards":
            images = _read_shards(self.spec)
        else:
            images = _read_folder(self.files(), self.spec)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"{self.spec}: expected uint8 images [N, 1 or 3, H, W], got {tuple(images.shape)}")
        images = images[:num] if num else images
        if images.shape[0] < 2:
            raise DataError(f"{self.spec}: {images.shape[0]} images; statistics need at least 2")
        return images


def _read_folder(files: list[Path], where: str) -> torch.Tensor:
    """As torch-fidelity reads a folder: each file opened with PIL and converted to RGB."""
    from PIL import Image

    if not files:
        raise DataError(f"no images ({IMAGE_EXTS}) under {where}")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise DataError(f"cannot read image {f}: {e}") from None
        if out and a.shape != out[0].shape:
            raise DataError(
                f"{f} is {a.shape[1]}x{a.shape[0]} but {files[0]} is {out[0].shape[1]}x{out[0].shape[0]}: a folder "
                f"must hold one image size (make shards of one size with distgan.data.make_shards --size N)"
            )
        out.append(a)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _read_shards(pattern: str) -> torch.Tensor:
    from distgan.data.stream import check_urls, expand_urls, read_all, shard_meta

    urls = expand_urls(pattern)
    check_urls(urls)
    meta = shard_meta(urls) or {}
    shape = meta.get("image_shape") or _first_image_shape(urls)
    images, _, skipped = read_all(urls, tuple(shape))
    if skipped:
        print(f"[distgan] skipped {skipped} unreadable samples in {pattern}", file=sys.stderr)
    return images


def _first_image_shape(urls: list[str]) -> tuple[int, int, int]:
    """(C, H, W) of the first image of the first shard (shards without make_shards' meta file)."""
    import io
    import tarfile

    from PIL import Image

    from distgan.data.stream import IMAGE_KEYS, local_path

    path = local_path(urls[0])
    if path is None:
        raise DataError(f"{urls[0]}: remote shards need their -meta.json (make_shards writes it) for the image size")
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile() and m.name.rsplit(".", 1)[-1].lower() in IMAGE_KEYS:
                with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                    return (1 if im.mode == "L" else 3, im.size[1], im.size[0])
    raise DataError(f"shard {path} holds no image")


# --------------------------------------------------------------------------------- extraction
def extract(
    images_u8: torch.Tensor, extractor, rank: int = 0, world: int = 1, block: int = 64, device="cpu"
) -> dict[str, torch.Tensor]:
    """Inception features of every image, this rank computing blocks rank, rank + W, ... of ``block`` images,
    then every rank receiving all of them (a collective under several processes)."""
    from distgan.runtime import gather_objects

    n = images_u8.shape[0]
    mine = {
        b: inception.features(images_u8[b * block : (b + 1) * block], extractor, block, device)
        for b in range(rank, (n + block - 1) // block, world)
    }
    return assemble({k: v for d in gather_objects(mine, world) for k, v in d.items()})


def assemble(blocks: dict[int, dict]) -> dict[str, torch.Tensor]:
    """Concatenate per-block feature dicts in block order."""
    keys = sorted(blocks)
    return {name: torch.cat([blocks[b][name] for b in keys]) for name in (POOL, LOGITS)}


# --------------------------------------------------------------------------------- reference statistics
@dataclass
class Reference:
    """FID statistics and features of a reference set, with where they came from."""

    mu: np.ndarray
    sigma: np.ndarray
    features: torch.Tensor
    meta: dict

    @classmethod
    def from_features(cls, pool: torch.Tensor, meta: dict) -> Reference:
        from torch_fidelity.metric_fid import fid_features_to_statistics

        st = fid_features_to_statistics(pool)
        return cls(st["mu"], st["sigma"], pool, {**meta, "num": int(pool.shape[0])})

    def save(self, path: str | os.PathLike) -> Path:
        """Atomically (a reader sees the old file or the new one)."""
        from safetensors.torch import save_file

        from distgan.atomic import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "mu": torch.from_numpy(np.ascontiguousarray(self.mu)),
            "sigma": torch.from_numpy(np.ascontiguousarray(self.sigma)),
            "features": self.features.contiguous(),
        }
        meta = {"kind": KIND, "format": str(FORMAT), **{k: json.dumps(v) for k, v in self.meta.items()}}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, weights_hash: str | None = None) -> Reference:
        """A reference file, refused by name when it is unreadable, not a reference, or (given
        ``weights_hash``) made with other Inception weights."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("mu", "sigma", "features")}
        except Exception as e:  # noqa: BLE001 - every unreadable file is reported the same way
            raise ReferenceError(
                f"reference statistics {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); it is corrupt "
                f"or not a distgan reference: remake it with python -m distgan.evaluate --make-reference SOURCE "
                f"--out {path}"
            ) from None
        if raw.get("kind") != KIND:
            raise ReferenceError(f"{path} is a safetensors file but not distgan reference statistics (no kind={KIND})")
        meta = {k: json.loads(v) for k, v in raw.items() if k not in ("kind", "format")}
        if weights_hash is not None and meta.get("feature_net") != weights_hash:
            raise ReferenceError(
                f"reference statistics {path} were made with Inception weights {meta.get('feature_net')}, but the "
                f"weights in use are {weights_hash}: figures from two networks do not compare. Remake it with "
                f"python -m distgan.evaluate --make-reference {meta.get('source', 'SOURCE')} --out {path}"
            )
        if tensors["features"].shape[0] != meta.get("num") or tensors["mu"].shape != (tensors["features"].shape[1],):
            raise ReferenceError(f"reference statistics {path} are inconsistent (num, mu and features disagree)")
        return cls(tensors["mu"].numpy(), tensors["sigma"].numpy(), tensors["features"], meta)


def make_reference(
    source: Source,
    weights: Path,
    num: int | None = None,
    rank: int = 0,
    world: int = 1,
    block: int = 64,
    device="cpu",
    content: str | None = None,
) -> Reference:
    """Reference statistics of ``source`` (its first ``num`` images), extracted across ranks; ``content``:
    its content hash when the caller has it already (the bytes are read once)."""
    content = content or source.content_hash()
    images = source.load(num)
    feats = extract(images, inception.load_extractor(weights, device), rank, world, block, device)
    meta = {
        "source": source.spec,
        "content": content,
        "feature_net": inception.weights_hash(weights),
        "resize": inception.RESIZE,
        "layer": POOL,
        "image_shape": list(images.shape[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Reference.from_features(feats[POOL], meta)


def _cache_dir() -> Path:
    return Path(os.environ.get("DISTGAN_CACHE_DIR") or Path.home() / ".cache" / "distgan") / "inception"


def cached_reference(
    source: Source, weights: Path, num: int | None = None, rank: int = 0, world: int = 1, block: int = 64, device="cpu"
) -> tuple[Reference, bool]:
    """(reference statistics of ``source``, whether they came from the cache). A collective: every rank calls it.

    The cache file is named by the data's content hash, the weights' hash and ``num``: data that changed,
    or other weights, give another name (a miss); a file whose metadata disagree with its name, or that
    cannot be read, is recomputed (with a note), never used."""
    from distgan.runtime import gather_objects

    key_parts = [source.content_hash(), inception.weights_hash(weights), inception.RESIZE, str(num or "all")]
    path = _cache_dir() / f"ref-{hashlib.sha256('|'.join(key_parts).encode()).hexdigest()[:20]}.safetensors"
    found = None
    if rank == 0 and path.exists():
        try:
            ref = Reference.load(path, key_parts[1])
            if ref.meta.get("content") == key_parts[0]:
                found = ref
            else:
                print(f"[distgan] {path} does not match its data; recomputing", file=sys.stderr)
        except ReferenceError as e:
            print(f"[distgan] {e}; recomputing", file=sys.stderr)
    hit = gather_objects(found is not None, world)[0]
    if hit:
        return gather_objects(found, world)[0], True
    ref = make_reference(source, weights, num, rank, world, block, device, content=key_parts[0])
    if rank == 0:
        try:
            ref.save(path)
        except OSError as e:  # a read-only cache only costs recomputation
            print(f"[distgan] could not cache reference statistics at {path}: {e}", file=sys.stderr)
    return ref, False


# --------------------------------------------------------------------------------- figures
def figures(samples: dict[str, torch.Tensor], ref: Reference, metrics, kid_subset_size: int = 1000) -> dict:
    """The requested Inception figures of sample features against ``ref``, by torch-fidelity's functions."""
    out: dict = {}
    pool = samples[POOL]
    if "fid" in metrics:
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

        st = fid_features_to_statistics(pool)
        out["fid"] = fid_statistics_to_metric(st, {"mu": ref.mu, "sigma": ref.sigma}, False)[
            "frechet_inception_distance"
        ]
    if "kid" in metrics:
        from torch_fidelity.metric_kid import kid_features_to_metric

        size = min(kid_subset_size, pool.shape[0], ref.features.shape[0])
        k = kid_features_to_metric(pool, ref.features, kid_subset_size=size, verbose=False)
        out["kid"], out["kid_std"], out["kid_subset"] = (
            k["kernel_inception_distance_mean"],
            k["kernel_inception_distance_std"],
            size,
        )
    if "is" in metrics:
        from torch_fidelity.metric_isc import isc_features_to_metric

        s = isc_features_to_metric(samples[LOGITS])
        out["is"], out["is_std"] = s["inception_score_mean"], s["inception_score_std"]
    if "ipr" in metrics:
        from torch_fidelity.metric_prc import prc_features_to_metric

        p = prc_features_to_metric(pool, ref.features, verbose=False)
        out["inception_precision"], out["inception_recall"] = p["precision"], p["recall"]
    return out
