"""Batches cut from a device-resident uint8 tensor, sharded across ranks, reproducible from the seed.

The order is one stream of *global* batches: global batch ``j`` is
``perm(epoch)[pos * B:(pos + 1) * B]`` with ``epoch, pos = divmod(j, N // B)`` and ``perm(epoch)`` a
permutation drawn from (seed, epoch), shared by every rank. Rank ``r`` of ``W`` takes the ``r``-th
contiguous slice of it, of :func:`split` ``(B, W)[r]`` images (sizes differ by at most one, so any
world size up to B works), and micro-batches cut that slice the same way. So ranks read disjoint parts
of every epoch, their union is the epoch (less the ``N % B`` remainder, dropped each epoch), and the
stream does not depend on the world size: a run resumed at another world size reads the same images.
"""

from __future__ import annotations

import torch

from distgan.errors import ConfigError

_EPOCH_SALT = 0x5DEECE66D


def split(total: int, parts: int) -> list[int]:
    """``total`` items in ``parts`` contiguous shares as equal as can be: the first ``total % parts`` get one more."""
    q, r = divmod(total, parts)
    return [q + (i < r) for i in range(parts)]


class BatchLayout:
    """How a global batch of ``B`` images is cut: rank ``r`` of ``W`` holds ``rank_sizes[r]`` images from
    ``rank_starts[r]``; its micro-batch ``m`` of ``A`` holds ``micro_sizes[m]`` of them.

    ``loss_weights[m] = micro_sizes[m] * W / B`` turns the mean loss of micro-batch m into its share of
    the global mean once DDP averages over the W ranks (phases.py)."""

    def __init__(self, global_batch: int, rank: int, world: int, grad_accum: int = 1):
        if global_batch < world * grad_accum:
            raise ConfigError(
                f"train.batch_size={global_batch} (global) is smaller than world size {world} x "
                f"train.grad_accum {grad_accum}: every rank needs at least one image per micro-step; "
                f"use train.batch_size>={world * grad_accum} or fewer processes"
            )
        self.B, self.rank, self.world, self.accum = global_batch, rank, world, grad_accum
        sizes = split(global_batch, world)
        self.rank_sizes = sizes
        self.rank_starts = [sum(sizes[:i]) for i in range(world)]
        self.per_rank = sizes[rank]
        self.micro_sizes = split(self.per_rank, grad_accum)
        self.micro_starts = [sum(self.micro_sizes[:i]) for i in range(grad_accum)]
        self.loss_weights = [n * world / global_batch for n in self.micro_sizes]

    def describe(self) -> str:
        lo, hi = min(self.rank_sizes), max(self.rank_sizes)
        per = f"{lo}" if lo == hi else f"{lo}-{hi}"
        ranks = f"{self.world} rank{'s' if self.world > 1 else ''}"
        return f"{ranks} x {per} images" + (f" in {self.accum} micro-batches" if self.accum > 1 else "")


class ShardedBatches:
    def __init__(
        self, images: torch.Tensor, global_batch: int, rank: int, world_size: int, seed: int, grad_accum: int = 1
    ):
        n = images.shape[0]
        if global_batch > n:
            raise ConfigError(f"train.batch_size={global_batch} is larger than the dataset ({n} images)")
        self.images, self.B, self.rank, self.world, self.seed = images, global_batch, rank, world_size, seed
        self.accum = grad_accum
        self.layout = BatchLayout(global_batch, rank, world_size, grad_accum)
        self.batches_per_epoch = n // global_batch
        self._epoch, self._perm = None, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + _EPOCH_SALT)
            self._perm = torch.randperm(self.images.shape[0], generator=g).to(self.images.device)
            self._epoch = epoch
        return self._perm

    def position(self, global_batch_index: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of a global batch."""
        return divmod(global_batch_index, self.batches_per_epoch)

    def indices(self, global_batch_index: int, micro_index: int = 0) -> torch.Tensor:
        """Dataset indices of this rank's micro-batch ``micro_index`` of global batch ``global_batch_index``."""
        epoch, pos = self.position(global_batch_index)
        lay = self.layout
        start = pos * self.B + lay.rank_starts[self.rank] + lay.micro_starts[micro_index]
        return self.permutation(epoch)[start : start + lay.micro_sizes[micro_index]]

    def batch(self, global_batch_index: int, micro_index: int = 0) -> torch.Tensor:
        return self.images[self.indices(global_batch_index, micro_index)]

    def for_rank(self, rank: int) -> ShardedBatches:
        """The same global batches as rank ``rank`` cuts them (the same images, seed and layout): what another
        rank's share holds, without a collective (tests use it for a deliberately wrong run)."""
        return ShardedBatches(self.images, self.B, rank, self.world, self.seed, self.accum)

    @property
    def skipped(self) -> int:
        """Images held in memory were all readable (the BatchSource interface)."""
        return 0

    def pixel_mean(self) -> torch.Tensor:
        """Per-pixel mean in [0, 1] (``[C, H, W]``), for generators that start from the data's mean image."""
        return self.images.float().mean(0) / 255.0
