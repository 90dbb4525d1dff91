"""The batch source a config asks for (see ``distgan.data.BatchSource``)."""

from __future__ import annotations

import torch

from distgan.data import BatchSource
from distgan.data.mnist import ensure_mnist, load_split
from distgan.data.sampler import ShardedBatches
from distgan.data.stream import StreamBatches, check_urls, expand_urls, read_all, shard_meta
from distgan.runtime import broadcast_


def build_source(cfg, layout, device, rank0, start_step: int) -> BatchSource:
    """The batch source of ``cfg.data`` for this rank. Collective: rank 0 downloads MNIST (if it must) before
    anyone reads it, and reads in-memory shards once and broadcasts them."""

    d, t = cfg.data, cfg.train
    if d.dataset == "webdataset":
        urls, _ = split_urls(d)
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

    rank0.collective(ensure_mnist, d.root, d.download)  # W processes must not download into one folder at once
    images, _ = load_split(d.root, "train", download=False)
    return ShardedBatches(images.to(device), t.batch_size, layout.rank, layout.world, t.seed, t.grad_accum)


def split_urls(d) -> tuple[list[str], str]:
    """(the shards a webdataset run trains on, the held-out validation shards as one pattern or ''):
    ``data.val_urls``, or the last ``data.holdout_shards`` of ``data.urls`` (then not trained on)."""
    from distgan.errors import ConfigError

    urls = expand_urls(d.urls)
    if d.holdout_shards:
        if d.holdout_shards >= len(urls):
            raise ConfigError(
                f"data.holdout_shards={d.holdout_shards} leaves no shard to train on: data.urls has {len(urls)}; "
                f"hold out fewer or write more, smaller shards (make_shards --shard-size)"
            )
        return urls[: -d.holdout_shards], "::".join(urls[-d.holdout_shards :])
    return urls, d.val_urls.strip()


def validation_source(cfg) -> str:
    """The image source (``distgan.metrics.fidelity.Source`` spec) in-training Inception metrics compare
    against: MNIST's validation split, or the run's held-out shards."""
    if cfg.data.dataset == "mnist":
        return "mnist:valid"
    return split_urls(cfg.data)[1]


def _broadcast_from_rank0(read, rank0, rank: int, device) -> torch.Tensor:
    """A tensor rank 0 reads, on every rank's device (its read errors raised on every rank)."""

    held = {}

    def shape():
        held["t"] = read()
        return tuple(held["t"].shape), held["t"].dtype

    shp, dtype = rank0.collective(shape)
    t = held["t"].to(device) if rank == 0 else torch.empty(shp, dtype=dtype, device=device)
    broadcast_(t)
    return t
