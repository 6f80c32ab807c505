"""Deterministic, resumable data loading for training, and index sharding for evaluation.

The training stream is infinite: epoch e is a permutation of the dataset seeded by (seed, e), and
global position p (counting samples over all epochs) is element p % N of epoch p // N. Iteration t
of a run with world_size processes of `batch_size` samples each covers global positions
[t * G, (t + 1) * G) with G = batch_size * world_size; rank r takes every world_size-th of them
(r, r + W, r + 2W, ...), so ranks never overlap and together they see exactly what one process with
batch G would see. Each sample's augmentation draws from a generator seeded by (seed, position),
so the result depends neither on the number of workers nor on the rank, and `start_iter` resumes
bit-exactly.
"""

from __future__ import annotations

import logging
import signal
from collections import OrderedDict
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.utils.data

from .dataset import Sample, SegmentationDataset
from .errors import DataError
from .labels import IGNORE
from .transforms import PAD_IMAGE_VALUE

log = logging.getLogger("semask.data")

_PERMUTATION_STREAM = 0
_SAMPLE_STREAM = 1
_MASK64 = (1 << 64) - 1


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the dataset in `epoch` (a permutation of range(n) seeded by (seed, epoch))."""
    return np.random.default_rng([seed & _MASK64, _PERMUTATION_STREAM, epoch]).permutation(n)


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The generator for the augmentation of the sample at global `position`."""
    return np.random.default_rng([seed & _MASK64, _SAMPLE_STREAM, position])


def batch_positions(iteration: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Global positions of `rank`'s part of the batch of `iteration`."""
    start = iteration * batch_size * world_size
    return [start + rank + k * world_size for k in range(batch_size)]


class _Positions(torch.utils.data.Dataset):
    """Map-style view of the infinite stream: item p = (p, dataset index, image, label, new skips)."""

    def __init__(self, dataset: SegmentationDataset, transform: Callable, seed: int) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    def index_at(self, position: int) -> int:
        n = len(self.dataset)
        epoch, offset = divmod(position, n)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = epoch_permutation(self.seed, epoch, n)
            self._perms[epoch] = perm
            while len(self._perms) > 2:
                self._perms.popitem(last=False)
        return int(perm[offset])

    def __len__(self) -> int:  # the stream is infinite; DataLoader only needs this with a default sampler
        return 2 ** 62

    def __getitem__(self, position: int) -> tuple:
        """(position, index, image, label, new skips, None) or, when the sample cannot be used,
        (position, -1, None, None, new skips, error message): errors travel back from worker processes as
        values so that the main process raises them as one clean DataError."""
        before = set(self.dataset.skipped_files)
        try:
            sample: Sample = self.dataset.load(self.index_at(position))
            if sample.label is None:
                raise DataError(f"{sample.path}: this split has no label maps; training needs labelled data "
                                f"(expected them beside {self.dataset.image_dir})")
            image, label = self.transform(sample.image, sample.label, sample_rng(self.seed, position))
        except DataError as e:
            return position, -1, None, None, self._new_skips(before), str(e)
        return position, sample.index, image, label, self._new_skips(before), None

    def _new_skips(self, before: set[str]) -> dict[str, str]:
        return {k: v for k, v in self.dataset.skipped_files.items() if k not in before}


class _BatchPositions(torch.utils.data.Sampler):
    """Yields the position lists of iterations start_iter, start_iter + 1, ... forever."""

    def __init__(self, start_iter: int, batch_size: int, rank: int, world_size: int) -> None:
        self.start_iter, self.batch_size, self.rank, self.world_size = start_iter, batch_size, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        t = self.start_iter
        while True:
            yield batch_positions(t, self.batch_size, self.rank, self.world_size)
            t += 1


def collate(items: list[tuple]) -> dict[str, Any]:
    """Stack a batch; samples of different sizes are padded bottom/right (image 128, label 255)."""
    skips: dict[str, str] = {}
    for it in items:
        skips.update(it[4])
    errors = [it[5] for it in items if len(it) > 5 and it[5] is not None]
    if errors:
        return {"error": errors[0], "skipped": skips}
    images = [it[2] for it in items]
    labels = [it[3] for it in items]
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    if any(im.shape[-2:] != (h, w) for im in images):
        padded_images = torch.full((len(images), 3, h, w), float(PAD_IMAGE_VALUE), dtype=images[0].dtype)
        padded_labels = torch.full((len(labels), h, w), IGNORE, dtype=torch.int64)
        for i, (im, lab) in enumerate(zip(images, labels)):
            padded_images[i, :, : im.shape[-2], : im.shape[-1]] = im
            padded_labels[i, : lab.shape[-2], : lab.shape[-1]] = lab
    else:
        padded_images, padded_labels = torch.stack(images), torch.stack(labels)
    return {"images": padded_images, "labels": padded_labels, "indices": [it[1] for it in items],
            "positions": [it[0] for it in items], "skipped": skips}


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)
    # SIGINT/SIGTERM reach the whole process group (Ctrl-C, torchrun): the main process handles them (it saves a
    # checkpoint first); a worker killed meanwhile would abort that. Workers exit when the main process does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.dataset.log_skips = False  # the main process logs each skipped file once


class TrainLoader:
    """Iterator over training batches; `iteration` is the index of the next batch it yields."""

    def __init__(self, dataset: SegmentationDataset, transform: Callable, batch_size: int, seed: int, rank: int,
                 world_size: int, start_iter: int, num_workers: int) -> None:
        if len(dataset) == 0:
            raise DataError(f"{dataset.image_dir or dataset.root}: the dataset is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        self.dataset = dataset
        self.iteration = start_iter
        self._stream = _Positions(dataset, transform, seed)
        sampler = _BatchPositions(start_iter, batch_size, rank, world_size)
        if num_workers > 0:
            loader = torch.utils.data.DataLoader(self._stream, batch_sampler=sampler, num_workers=num_workers,
                                                 collate_fn=collate, worker_init_fn=_worker_init)
            self._batches: Iterator[dict[str, Any]] = iter(loader)
        else:
            self._batches = (collate([self._stream[p] for p in positions]) for positions in sampler)

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self._batches)
        for path, message in batch.pop("skipped").items():
            self.dataset.note_skip(path, message)
        if "error" in batch:
            raise DataError(batch["error"])
        self.iteration += 1
        return batch


def build_train_loader(dataset: SegmentationDataset, transform: Callable, batch_size: int, seed: int, rank: int = 0,
                       world_size: int = 1, start_iter: int = 0, num_workers: int = 0) -> TrainLoader:
    """Infinite iterator of {"images": float (B, 3, H, W), "labels": int64 (B, H, W), "indices": [...],
    "positions": [...]} for `rank` of `world_size`, starting at iteration `start_iter` (see module docstring)."""
    return TrainLoader(dataset, transform, batch_size, seed, rank, world_size, start_iter, num_workers)


# ---------------------------------------------------------------------------------------------- evaluation


def shard_indices(n: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Contiguous share of range(n) for `rank`: sizes differ by at most one, the union is range(n)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return list(range(start, start + per + (1 if rank < extra else 0)))


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset: SegmentationDataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, Sample | None, dict[str, str], str | None]:
        before = set(self.dataset.skipped_files)
        try:
            sample, error = self.dataset.try_load(self.indices[k]), None
        except DataError as e:  # travels back as a value, raised cleanly by the main process
            sample, error = None, str(e)
        return self.indices[k], sample, {p: m for p, m in self.dataset.skipped_files.items() if p not in before}, error


def build_test_loader(dataset: SegmentationDataset, rank: int = 0, world_size: int = 1,
                      num_workers: int = 0) -> Iterator[Sample]:
    """This rank's samples, in index order, one at a time. Under data.on_error=skip bad samples are left out
    (and counted in `dataset.skipped`), never replaced by another one."""
    indices = shard_indices(len(dataset), rank, world_size)
    view = _Indexed(dataset, indices)
    if num_workers > 0:
        items: Any = torch.utils.data.DataLoader(view, batch_size=None, num_workers=num_workers,
                                                 collate_fn=_identity, worker_init_fn=_test_worker_init)
    else:
        items = (view[k] for k in range(len(view)))
    for _index, sample, skips, error in items:
        for path, message in skips.items():
            dataset.note_skip(path, message)
        if error is not None:
            raise DataError(error)
        if sample is not None:
            yield sample


def _test_worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.dataset.log_skips = False


def _identity(item: Any) -> Any:
    return item
