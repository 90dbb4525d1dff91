"""Batches cut from a device-resident uint8 tensor, sharded across ranks, reproducible from the seed.

The order is one stream of *global* batches: global batch ``j`` is
``perm(epoch)[pos * B:(pos + 1) * B]`` with ``epoch, pos = divmod(j, N // B)`` and ``perm(epoch)`` a
permutation drawn from (seed, epoch), shared by every rank. Rank ``r`` of ``W`` takes the ``r``-th
contiguous ``B / W`` slice of it (micro-batches cut that slice further). So ranks read disjoint parts of
every epoch, their union is the epoch (less the ``N % B`` remainder, dropped each epoch), and the
stream does not depend on the world size: a run resumed at another world size reads the same images.
"""

from __future__ import annotations

import torch

_EPOCH_SALT = 0x5DEECE66D


class ShardedBatches:
    def __init__(self, images: torch.Tensor, global_batch: int, rank: int, world_size: int, seed: int,
                 grad_accum: int = 1):
        n = images.shape[0]
        if global_batch > n:
            raise ValueError(f"train.batch_size={global_batch} is larger than the dataset ({n} images)")
        self.images, self.B, self.rank, self.world, self.seed = images, global_batch, rank, world_size, seed
        self.accum = grad_accum
        self.per_rank = global_batch // world_size
        self.micro = self.per_rank // grad_accum
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

    def indices(self, global_batch_index: int, micro: int = 0) -> torch.Tensor:
        """Dataset indices of this rank's micro-batch ``micro`` of global batch ``global_batch_index``."""
        epoch, pos = self.position(global_batch_index)
        start = pos * self.B + self.rank * self.per_rank + micro * self.micro
        return self.permutation(epoch)[start:start + self.micro]

    def batch(self, global_batch_index: int, micro: int = 0) -> torch.Tensor:
        return self.images[self.indices(global_batch_index, micro)]
