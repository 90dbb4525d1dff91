"""Training data: where it is found, and the one interface the trainer reads it through.

A *batch source* (``BatchSource``) serves this rank's share of every global batch, cut by a
``sampler.BatchLayout``: ``sampler.ShardedBatches`` (MNIST, or shards read into memory: held on the
device, reproducible from the seed) and ``stream.StreamBatches`` (WebDataset shards streamed by
DataLoader workers). ``build_source`` makes the one the config asks for.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch


class BatchSource(Protocol):
    """What the trainer reads batches from."""

    batches_per_epoch: int
    """Global batches in one pass over the data (for epoch-based schedules)."""

    @property
    def skipped(self) -> int:
        """Unreadable samples skipped so far on this rank (0 for sources that cannot hold bad data)."""

    def batch(self, global_batch_index: int, micro_index: int = 0) -> torch.Tensor:
        """uint8 ``[n, C, H, W]``: this rank's micro-batch ``micro_index`` of global batch ``global_batch_index``."""

    def position(self, global_batch_index: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of a global batch (recorded in checkpoints)."""


def data_root(explicit: str | None = None, configured: str | None = None) -> str:
    """The MNIST root every entry point uses: ``explicit`` (a --data-root option), else $DISTGAN_DATA_DIR,
    else ``configured`` (a run's data.root), else ``data``."""
    return explicit or os.environ.get("DISTGAN_DATA_DIR") or configured or "data"


def build_source(cfg, layout, device, rank0, start_step: int) -> BatchSource:
    """The batch source of ``cfg.data`` for this rank. Collective: rank 0 downloads MNIST (if it must) before
    anyone reads it, and reads in-memory shards once and broadcasts them."""
    from distgan.data.sampler import ShardedBatches

    d, t = cfg.data, cfg.train
    if d.dataset == "webdataset":
        from distgan.data.stream import StreamBatches, check_urls, expand_urls, read_all, shard_meta

        urls = expand_urls(d.urls)
        check_urls(urls, d.image_shape)
        if d.in_memory:  # one reader, not one per rank

            def read():
                images, _, skipped = read_all(urls, d.image_shape, workers=min(d.workers, len(urls)))
                if skipped:
                    print(f"[distgan] skipped {skipped} unreadable samples while loading {d.urls}", flush=True)
                return images

            images = _broadcast_from_rank0(read, rank0, layout.rank, device)
            return ShardedBatches(images, t.batch_size, layout.rank, layout.world, t.seed, t.grad_accum)
        per_epoch = d.samples_per_epoch or int((shard_meta(urls) or {}).get("samples", 0))
        return StreamBatches(
            urls,
            layout,
            d.image_shape,
            t.seed,
            d.workers,
            d.shuffle_buffer,
            device,
            start_step=start_step,
            samples_per_epoch=per_epoch,
        )
    from distgan.data.mnist import ensure_mnist, load_split

    rank0.collective(ensure_mnist, d.root, d.download)  # W processes must not download into one folder at once
    images, _ = load_split(d.root, "train", download=False)
    return ShardedBatches(images.to(device), t.batch_size, layout.rank, layout.world, t.seed, t.grad_accum)


def _broadcast_from_rank0(read, rank0, rank: int, device) -> torch.Tensor:
    """A tensor rank 0 reads, on every rank's device (its read errors raised on every rank)."""
    from distgan.runtime import broadcast_

    held = {}

    def shape():
        held["t"] = read()
        return tuple(held["t"].shape), held["t"].dtype

    shp, dtype = rank0.collective(shape)
    t = held["t"].to(device) if rank == 0 else torch.empty(shp, dtype=dtype, device=device)
    broadcast_(t)
    return t
