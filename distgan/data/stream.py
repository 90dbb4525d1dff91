"""Images streamed from WebDataset tar shards (written by ``python -m distgan.data.make_shards``).

Two modes:

- ``resampled`` (training): each (rank, DataLoader worker) draws shards *with replacement* from the
  whole list, from a seed of (seed, rank, worker, start step), and streams forever. Every rank takes
  exactly one batch per micro-step, so ranks never run out at different times (a DDP hang) however
  many shards there are. ``epoch_batches`` cuts the stream into epochs of equal length per rank, the
  last stage of the pipeline (webdataset's ``with_epoch`` advice).
- ``exact`` (evaluation, tests): shard ``i`` goes to rank ``i % W`` and, within it, to worker
  ``(i // W) % workers``; each shard is read once, so the ranks read disjoint shards and together every
  sample. Fewer shards than ranks x workers is an error at start (some reader would get nothing).

Shards are opened through webdataset (local paths, ``file:``, ``pipe:curl ...``, ``pipe:aws s3 cp ...``,
http(s)). Decoding happens on DataLoader workers; a corrupt image or a truncated tar member is skipped
with a warning naming the shard and key, and counted (``skipped``, logged as ``data/skipped``). A
missing local shard or a pattern that expands to nothing fails at start.

What a checkpoint can restore: the trainer restarts the stream from a seed of (seed, rank, worker,
step), so a resumed run is reproducible but reads other samples than an uninterrupted one would;
webdataset keeps no position inside a stream of resampled shards.
"""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distgan.data.mnist import DataError

MODES = ("resampled", "exact")
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp")


def expand_urls(pattern: str) -> list[str]:
    """Brace-expanded shard URLs (``shards/train-{000000..000009}.tar``; ``::`` joins several patterns)."""
    from webdataset.shardlists import expand_urls as wds_expand

    if not pattern or not pattern.strip():
        raise DataError(
            "data.urls is empty; give a shard pattern such as data.urls='shards/train-{000000..000009}.tar'"
        )
    urls = list(wds_expand(pattern.strip()))
    if not urls:
        raise DataError(f"data.urls={pattern!r} expands to no shard")
    return urls


def local_path(url: str) -> Path | None:
    """The file behind a URL that names a local file, else None (pipe:, http:, s3: ... cannot be checked)."""
    if url.startswith("file:"):
        return Path(url[5:])
    if "://" in url or url.startswith("pipe:") or url == "-":
        return None
    return Path(url)


def check_urls(urls: list[str], image_shape=None) -> None:
    """Fail at start, before anything is built: a missing local shard, or (given ``image_shape``) a first
    local shard whose first image has another size or channel count than the config's."""
    missing = [u for u in urls if (p := local_path(u)) is not None and not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(urls)} shards not found, first {missing[0]!r}; check data.urls "
            f"(write shards with `python -m distgan.data.make_shards`)"
        )
    if image_shape is not None:
        check_image_shape(urls, image_shape)


def check_image_shape(urls: list[str], image_shape) -> None:
    """Decode the first image of the first local shard and compare it with ``image_shape`` (C, H, W).
    Remote shards are not opened here: a mismatch there fails at the first batch, with the same message."""
    import tarfile

    path = local_path(urls[0])
    if path is None:
        return
    _, h, w = image_shape
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                ext = member.name.rsplit(".", 1)[-1].lower()
                if member.isfile() and ext in IMAGE_KEYS:
                    data = tar.extractfile(member).read()
                    break
            else:
                raise DataError(
                    f"shard {path} holds no image ({', '.join(IMAGE_KEYS)}); write shards with "
                    f"`python -m distgan.data.make_shards`"
                )
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"shard {path} cannot be read as a tar file: {e}") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
    except (UnidentifiedImageError, OSError):
        return  # a corrupt first sample: the stream skips and counts it
    if size != (w, h):  # channels need no check: decoding converts to the configured ones
        raise DataError(
            f"shard {path} holds {size[0]}x{size[1]} images ({member.name}) but the config expects "
            f"{w}x{h} (data.image_size={h}); set data.image_size={size[1]} or rewrite the shards "
            f"with make_shards --size {h}"
        )


def shard_meta(urls: list[str]) -> dict | None:
    """The ``{prefix}-meta.json`` that make_shards writes beside local shards, or None."""
    import json

    first = local_path(urls[0])
    if first is None:
        return None
    meta = first.parent / f"{first.name.rsplit('-', 1)[0]}-meta.json"
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError):
        return None


def decode_image(data: bytes, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """PNG/JPEG bytes -> uint8 ``[C, H, W]`` with the configured channels. Grayscale is kept as one
    channel when C=1 (webdataset's ``decode("pil")`` would turn it into RGB)."""
    from PIL import Image

    c, h, w = image_shape
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L" if c == 1 else "RGB")
        if img.size != (w, h):
            raise ValueError(
                f"image is {img.size[0]}x{img.size[1]}, the config expects {w}x{h} "
                f"(data.image_size); rewrite the shards with make_shards --size {h}"
            )
        arr = np.asarray(img, dtype=np.uint8)
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if c == 1 else t.permute(2, 0, 1).contiguous()


class ShardStream(IterableDataset):
    """Yields ``(images uint8 [B, C, H, W], labels int64 [B] (-1: none), skipped so far, worker id)``."""

    def __init__(
        self,
        urls: list[str],
        mode: str,
        batch_size: int,
        image_shape,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        epoch_batches: int = 0,
        start: int = 0,
        num_workers: int = 0,
    ):
        if mode not in MODES:
            raise DataError(f"stream mode {mode!r} is not one of {MODES}")
        readers = world * max(1, num_workers)
        if mode == "exact" and len(urls) < readers:
            raise DataError(
                f"exact mode needs at least one shard per reader: {len(urls)} shards for {world} ranks x "
                f"{max(1, num_workers)} workers; write more, smaller shards (make_shards --shard-size) "
                f"or use fewer data.workers"
            )
        self.urls, self.mode, self.B, self.shape = list(urls), mode, batch_size, tuple(image_shape)
        self.rank, self.world, self.seed, self.buffer = rank, world, seed, shuffle_buffer
        self.epoch_batches, self.start, self.num_workers = epoch_batches, start, max(1, num_workers)
        self.epoch = 0

    # ---- the pipeline, run inside a DataLoader worker (or the main process with workers=0)
    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info else (0, 1)

    def _shards(self, wid: int, nw: int, rng: random.Random):
        if self.mode == "exact":
            mine = self.urls[self.rank :: self.world][wid::nw]
            yield from ({"url": u} for u in mine)
        else:
            while True:
                yield {"url": rng.choice(self.urls)}

    def _samples(self, shards, on_error):
        from webdataset.tariterators import tarfile_samples

        return tarfile_samples(shards, handler=on_error)

    def __iter__(self):
        wid, nw = self._worker()
        rng = random.Random(hash((self.seed, self.rank, wid, self.start, self.epoch)) & 0xFFFFFFFF)
        self.epoch += 1
        skipped = [0]

        def on_error(exn) -> bool:
            skipped[0] += 1
            warnings.warn(f"distgan: skipping unreadable data ({type(exn).__name__}: {exn})", stacklevel=2)
            return True

        def decoded():
            for s in self._samples(self._shards(wid, nw, rng), on_error):
                key = next((k for k in IMAGE_KEYS if k in s), None)
                try:
                    if key is None:
                        raise ValueError(f"no image entry among {sorted(k for k in s if not k.startswith('__'))}")
                    img = decode_image(s[key], self.shape)
                    label = int(s["cls"]) if "cls" in s else -1
                except ValueError as e:
                    if "data.image_size" in str(e):
                        raise DataError(f"shard {s.get('__url__')} key {s.get('__key__')}: {e}") from None
                    on_error(ValueError(f"shard {s.get('__url__')} key {s.get('__key__')}: {e}"))
                    continue
                except Exception as e:  # PIL raises many types for damaged files
                    on_error(type(e)(f"shard {s.get('__url__')} key {s.get('__key__')}: {e}"))
                    continue
                yield img, label

        def shuffled(src):
            if self.buffer <= 1:
                yield from src
                return
            buf = []
            for item in src:
                buf.append(item)
                if len(buf) >= self.buffer:
                    i = rng.randrange(len(buf))
                    buf[i], buf[-1] = buf[-1], buf[i]
                    yield buf.pop()
            rng.shuffle(buf)
            yield from buf

        limit = -(-self.epoch_batches // nw) if self.epoch_batches else None  # per worker, the last stage
        n, imgs, labels = 0, [], []
        for img, label in shuffled(decoded()):
            imgs.append(img)
            labels.append(label)
            if len(imgs) == self.B:
                yield torch.stack(imgs), torch.tensor(labels), skipped[0], wid
                imgs, labels = [], []
                n += 1
                if limit is not None and n >= limit:
                    return
        if imgs and self.mode == "exact":  # a partial last batch: evaluation wants every sample
            yield torch.stack(imgs), torch.tensor(labels), skipped[0], wid


class StreamBatches:
    """The trainer's view of a stream: the same ``batch(j, micro)`` interface as ``ShardedBatches``.

    The stream yields this rank's share of each global batch (``layout.per_rank`` images); micro-batches
    are cut from it as ``BatchLayout`` says, so uneven splits across ranks work as with MNIST."""

    def __init__(
        self,
        urls: list[str],
        layout,
        image_shape,
        seed: int,
        workers: int,
        shuffle_buffer: int,
        device,
        start_step: int = 0,
        samples_per_epoch: int = 0,
    ):
        self.layout = layout
        self.stream = ShardStream(
            urls,
            "resampled",
            layout.per_rank,
            image_shape,
            layout.rank,
            layout.world,
            seed,
            shuffle_buffer,
            start=start_step,
            num_workers=workers,
        )
        self.loader = DataLoader(
            self.stream,
            worker_init_fn=_ignore_stop_signals,
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.device(device).type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        self.device = torch.device(device)
        self.batches_per_epoch = max(1, samples_per_epoch // layout.B) if samples_per_epoch else 1
        self._it = iter(self.loader)
        self._skipped: dict[int, int] = {}
        self._j, self._images = None, None

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far on this rank (summed over its workers)."""
        return sum(self._skipped.values())

    def batch(self, global_batch_index: int, micro_index: int = 0) -> torch.Tensor:
        if global_batch_index != self._j:  # the next global batch: this rank's share of it, once
            images, _, skipped, wid = next(self._it)
            self._skipped[wid] = skipped
            self._j, self._images = global_batch_index, images.to(self.device, non_blocking=True)
        start, size = self.layout.micro_starts[micro_index], self.layout.micro_sizes[micro_index]
        return self._images[start : start + size]

    def position(self, global_batch_index: int) -> tuple[int, int]:
        return divmod(global_batch_index, self.batches_per_epoch)

    def close(self) -> None:
        """Stop this rank's DataLoader workers now. They ignore SIGTERM (``_ignore_stop_signals``), so workers
        left to interpreter shutdown are never reaped: multiprocessing's exit handler sends them SIGTERM and
        waits, and a run stopped by a signal would hang after its checkpoint. Dropping the last references to
        the loader and its iterator shuts the workers down (the iterator's own shutdown). Idempotent; the
        source cannot be read after."""
        self._it = self.loader = None


def read_all(
    urls: list[str], image_shape, batch_size: int = 256, rank: int = 0, world: int = 1, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every sample of this rank's share in exact mode: (images, labels, skipped)."""
    ds = ShardStream(urls, "exact", batch_size, image_shape, rank, world, shuffle_buffer=0, num_workers=workers)
    imgs, labels, skipped = [], [], {}
    for x, y, s, wid in DataLoader(ds, batch_size=None, num_workers=workers, worker_init_fn=_ignore_stop_signals):
        imgs.append(x)
        labels.append(y)
        skipped[wid] = s
    if not imgs:
        return torch.empty(0, *image_shape, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), sum(skipped.values())
    return torch.cat(imgs), torch.cat(labels), sum(skipped.values())


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGUSR1. A scheduler signals every process of a job step; a
    worker that died of it would end the run as "worker killed" instead of the trainer's agreed stop and
    checkpoint. The trainer shuts its workers down itself."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
