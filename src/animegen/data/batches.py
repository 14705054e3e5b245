"""Training batches from the uint8 image array: shuffled per epoch, normalised and flipped on the device.

Order and flips are pure functions of (seed, epoch, batch index), not of any RNG state, so a run
resumed mid-epoch sees exactly the batches the uninterrupted run would have seen, and each
distributed rank can take its own slice of the same permutation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from animegen.streams import HFLIP, SHUFFLE, derived_seed

# Leave room for the models and activations when deciding to put the whole set on the GPU.
GPU_RESIDENT_FRACTION = 0.25


def upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor to `device` without making the host wait for the GPU.

    A plain `.to("cuda")` from pageable memory synchronises the stream, which on a GPU stops the
    host from queueing the next kernels; staging through pinned memory makes the copy asynchronous.
    """
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class BatchFeeder:
    """Yields float batches in [-1, 1] on `device` from a (N, 3, S, S) uint8 array."""

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        device: torch.device,
        seed: int,
        hflip: bool = False,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        resident: bool | None = None,
        indices: np.ndarray | None = None,
    ):
        # `indices`: train on these rows only (the rest is held out for evaluation).
        self.index = None if indices is None else torch.from_numpy(np.asarray(indices, dtype=np.int64))
        self.n = int(images.shape[0]) if indices is None else len(self.index)
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.hflip = hflip
        self.channels_last = channels_last
        self.rank = rank
        self.world_size = world_size
        global_batch = batch_size * world_size
        # drop_last, like the tutorial's DataLoader: every step sees a full batch.
        self.steps_per_epoch = self.n // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.n} images are fewer than one batch of {global_batch}")
        host = torch.from_numpy(np.asarray(images))
        if resident is None:
            resident = device.type == "cuda" and _fits_on_gpu(host, device)
        # On the GPU one upload beats a host->device copy per step; on the CPU the memmap
        # pages are the resident copy already.
        self.source = host.to(device) if resident and device.type != "cpu" else host
        self.resident = resident and device.type != "cpu"

    def __len__(self) -> int:
        return self.steps_per_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """Rows of the image array in this epoch's order."""
        g = torch.Generator().manual_seed(derived_seed(self.seed, SHUFFLE, epoch))
        perm = torch.randperm(self.n, generator=g)
        return perm if self.index is None else self.index[perm]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Batches `start`.. of `epoch` for this rank."""
        perm = self.permutation(epoch)
        gb = self.batch_size * self.world_size
        for step in range(start, self.steps_per_epoch):
            idx = perm[
                step * gb + self.rank * self.batch_size : step * gb + (self.rank + 1) * self.batch_size
            ]
            yield self.batch(idx, epoch, step)

    def batch(self, idx: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        if self.resident:
            raw = self.source[upload(idx, self.device)]
        else:
            # Sorted reads are kinder to a memmap on disk; the batch order is restored after.
            order = torch.argsort(idx)
            rows = self.source[idx[order]]
            raw = torch.empty_like(rows)
            raw[order] = rows
            raw = raw.to(self.device, non_blocking=True)
        x = raw.float().div_(127.5).sub_(1.0)
        if self.hflip:
            # Drawn for the global batch and sliced, so N ranks flip exactly what one process would.
            g = torch.Generator().manual_seed(derived_seed(self.seed, HFLIP, epoch, step))
            lo = self.rank * self.batch_size
            flip = (torch.rand(self.batch_size * self.world_size, generator=g) < 0.5)[lo : lo + len(idx)]
            flip = upload(flip, self.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _fits_on_gpu(host: torch.Tensor, device: torch.device) -> bool:
    try:
        free, _total = torch.cuda.mem_get_info(device)
    except Exception:  # noqa: BLE001 - no CUDA info means: don't risk it
        return False
    return host.numel() < free * GPU_RESIDENT_FRACTION
