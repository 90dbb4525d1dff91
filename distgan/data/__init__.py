"""Training data: where it is found, and the one interface the trainer reads it through.

A *batch source* (``BatchSource``) serves this rank's share of every global batch, cut by a
``sampler.BatchLayout``: ``sampler.ShardedBatches`` (MNIST, or shards read into memory: held on the
device, reproducible from the seed) and ``stream.StreamBatches`` (WebDataset shards streamed by
DataLoader workers). ``source.build_source`` makes the one the config asks for.
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

    # Optional: ``close()``, called once when training ends however it ends, releases what the source holds
    # open (StreamBatches: its DataLoader workers).


def data_root(explicit: str | None = None, configured: str | None = None) -> str:
    """The MNIST root every entry point uses: ``explicit`` (a --data-root option), else $DISTGAN_DATA_DIR,
    else ``configured`` (a run's data.root), else ``data``."""
    return explicit or os.environ.get("DISTGAN_DATA_DIR") or configured or "data"
