"""Length-bucketed dynamic batches capped by video frames, identical on every process and deterministic per epoch.

A batch is a list of dataset indices whose *padded* size, ``len(batch) * max(frames in batch)``, is at most
``max_frames`` (the authors use 1000-1500 frames of 25 fps video per GPU). The padded size bounds the tensors the
model sees, and the plain sum of frames is never larger. Audio-only corpora count ``ceil(duration * 25)``.

How an epoch's batches are made (:func:`pack_batches`):

1. Lengths are grouped into ``num_buckets`` buckets of similar length (quantiles of the corpus), and every sample is
   costed at its bucket's longest length (capped at ``max_frames``).
2. Samples are sorted by that cost, in a random order inside each bucket, and packed greedily into batches.
   Because the costs do not depend on the shuffle, every epoch has the same number of batches (the Trainer and the
   learning-rate schedule read it once), while which samples share a batch changes from epoch to epoch.
3. The batch list is shuffled, then made a multiple of the number of processes by splitting the batches with the
   most samples in two (a split batch is still under the cap, and no sample is repeated or dropped). Only if no
   batch can be split (every batch a single sample) are whole batches repeated, with a warning.

Batch ``i`` of the epoch belongs to process ``i % num_replicas``, so each process gets its own disjoint batches,
every process gets the same number (DDP never waits on a process that ran out), and across processes every sample
is seen exactly once per epoch. The shuffle is seeded by ``(seed, epoch)`` only: every process computes the same
list without talking to the others, and a resumed run reproduces it. A sample longer than ``max_frames`` is an error
(filter the corpus or raise the cap): it cannot fit any batch and is never dropped silently.

Using it with accelerate and the transformers Trainer (checked with two CPU processes under accelerate 1.15 and
transformers 5.24; see tests/test_sampler.py):

- ``Accelerator.prepare(DataLoader(dataset, batch_sampler=sampler, ...))`` wraps the sampler in accelerate's
  ``BatchSamplerShard``, which gives process ``r`` the batches ``r, r + n, r + 2n, ...`` of what the sampler yields.
  So under accelerate build the sampler with ``num_replicas=<number of processes>`` and ``rank=None``: it yields the
  whole epoch (a multiple of ``num_replicas`` batches) and accelerate takes each process's share, which is exactly
  the share ``rank=r`` would give. Passing ``rank`` as well would shard twice and lose half the data. Because the
  count is a multiple of the processes, ``BatchSamplerShard`` never loops back to repeat batches (its
  ``even_batches`` padding) and ``len(prepared_loader) == len(sampler) // num_replicas``.
- Without accelerate (a plain PyTorch DDP loop) pass ``rank`` and the sampler yields only that process's batches.
- ``set_epoch``: accelerate's ``DataLoaderShard.set_epoch`` does not reach a batch sampler wrapped in
  ``BatchSamplerShard`` (several processes); the Trainer (5.24, ``_run_epoch``) reaches it through
  ``loader.batch_sampler.batch_sampler``, but not after ``skip_first_batches`` (resuming mid-epoch), where the chain
  is ``SkipBatchSampler -> BatchSamplerShard -> sampler``. The one hook accelerate calls in every case (one or several
  processes, resumed or not) is ``dataset.set_epoch``: wrap the dataset in :class:`EpochDataset`, which forwards the
  epoch to the sampler and the collator.
- The Trainer's ``_get_dataloader`` passes only its own ``BatchRebalanceSampler`` as a ``batch_sampler``, so a
  Trainer subclass must build this ``DataLoader`` in ``get_train_dataloader``; and ``remove_unused_columns=False``,
  or the Trainer strips the record columns (``audio``, ``video``, ``text``) that the collator reads.
- Two CPU processes: ``accelerate launch --num_processes 2 --cpu script.py`` starts ONE process in accelerate 1.15
  (its multi-CPU launcher needs MPI and a hostfile). ``accelerate launch --multi_gpu --num_processes 2 script.py``
  with ``ACCELERATE_USE_CPU=true`` (or ``Accelerator(cpu=True)``) starts two processes on gloo.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from llama_mtsk.configuration_llama_mtsk import VIDEO_FPS


def frame_counts(n_frames: Sequence[int], durations: Sequence[float]) -> np.ndarray:
    """The cost in 25 fps frames of each record: the larger of its video frames and ``ceil(duration * 25)``.

    The audio count makes audio-only corpora (``n_frames`` 0) work and covers audio slightly longer than its video.
    """
    video = np.asarray(n_frames, dtype=np.int64)
    audio = np.ceil(np.asarray(durations, dtype=np.float64) * VIDEO_FPS - 1e-6).astype(np.int64)
    if video.shape != audio.shape:
        raise ValueError(f"frame_counts: {video.size} n_frames but {audio.size} durations")
    return np.maximum(video, audio)


def bucket_costs(lengths: np.ndarray, num_buckets: int, max_frames: int) -> np.ndarray:
    """Each length rounded up to the nearest of the ``num_buckets + 1`` quantiles of ``lengths`` (from the shortest to
    the longest), capped at ``max_frames``: similar lengths share one cost."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be positive, got {num_buckets}")
    edges = np.unique(np.quantile(lengths, np.linspace(0.0, 1.0, num_buckets + 1), method="higher"))
    return np.minimum(edges[np.searchsorted(edges, lengths, side="left")], max_frames)


def pack_batches(costs: np.ndarray, max_frames: int, rng: np.random.Generator | None) -> list[list[int]]:
    """Pack sample positions into batches with ``len(batch) * max(cost) <= max_frames``, shortest costs first.

    Samples of equal cost are visited in a random order (``rng``) or by position (``rng=None``). The number of
    batches and their sizes depend only on the sorted costs, not on ``rng``.
    """
    tiebreak = rng.permutation(costs.size) if rng is not None else np.arange(costs.size)
    order = np.lexsort((tiebreak, costs))
    batches: list[list[int]] = []
    batch: list[int] = []
    for position in order.tolist():
        # Costs ascend, so the sample being added is the batch's longest.
        if batch and (len(batch) + 1) * costs[position] > max_frames:
            batches.append(batch)
            batch = []
        batch.append(position)
    if batch:
        batches.append(batch)
    return batches


def make_divisible(batches: list[list[int]], num_replicas: int) -> tuple[list[list[int]], int]:
    """Make the number of batches a multiple of ``num_replicas``; returns the batches and how many were repeated.

    The batch with the most samples (the first such in list order) is split into two halves, in place, until the
    count divides; if every batch holds one sample, batches from the start of the list are repeated instead.
    """
    batches = list(batches)
    while len(batches) % num_replicas:
        position = max(range(len(batches)), key=lambda index: (len(batches[index]), -index))
        largest = batches[position]
        if len(largest) < 2:
            break
        half = len(largest) // 2
        batches[position : position + 1] = [largest[:half], largest[half:]]
    repeated = (-len(batches)) % num_replicas
    batches.extend(batches[index % len(batches)] for index in range(repeated))
    return batches, repeated


def _default_world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


class EpochDataset(torch.utils.data.Dataset):
    """A map-style dataset whose ``set_epoch`` also sets the epoch of its followers (the batch sampler, the collator).

    accelerate's ``DataLoaderShard.set_epoch`` calls ``dataset.set_epoch`` whatever wraps the batch sampler, so this is
    the hook that keeps the sampler and the augmentation on the trainer's epoch (see the module doc).
    """

    def __init__(self, dataset: Any, *followers: Any) -> None:
        for follower in followers:
            if not callable(getattr(follower, "set_epoch", None)):
                raise TypeError(f"EpochDataset: {type(follower).__name__} has no set_epoch method")
        self.dataset = dataset
        self.followers = followers

    def set_epoch(self, epoch: int) -> None:
        for follower in self.followers:
            follower.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        # One call per batch: a datasets.Dataset reads all rows of a batch at once.
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(indices) if getitems is not None else [self.dataset[index] for index in indices]


class FrameBatchSampler(Sampler[list[int]]):
    """Batch sampler of length-bucketed batches under a frame cap, sharded over processes (see the module doc).

    Args:
        lengths: cost of each dataset item in 25 fps frames (see :func:`frame_counts`).
        max_frames: cap on ``len(batch) * max(lengths in batch)`` per process.
        num_buckets: number of length buckets (quantiles); more buckets pad less, fewer mix more.
        shuffle: shuffle inside buckets and the batch order (training). ``False`` gives the same batches, sorted by
            length, every epoch (evaluation).
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        num_replicas: number of data-parallel processes; defaults to the initialised ``torch.distributed`` world
            size, else the ``WORLD_SIZE`` environment variable (set by ``accelerate launch`` and ``torchrun``), else 1.
        rank: yield only this process's batches (plain DDP); ``None`` yields the whole epoch for accelerate to shard.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        max_frames: int,
        *,
        num_buckets: int = 100,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.ndim != 1 or lengths.size == 0:
            raise ValueError(f"FrameBatchSampler: lengths must be a non-empty 1-D sequence, got shape {lengths.shape}")
        if max_frames < 1:
            raise ValueError(f"FrameBatchSampler: max_frames must be positive, got {max_frames}")
        if np.any(lengths < 1):
            bad = np.flatnonzero(lengths < 1)
            raise ValueError(f"FrameBatchSampler: lengths must be >= 1 frame; items {bad[:10].tolist()} are not")
        too_long = np.flatnonzero(lengths > max_frames)
        if too_long.size:
            raise ValueError(
                f"FrameBatchSampler: {too_long.size} item(s) are longer than max_frames={max_frames} (items "
                f"{too_long[:10].tolist()}, longest {int(lengths.max())} frames); raise max_frames or filter them out"
            )
        num_replicas = _default_world_size() if num_replicas is None else num_replicas
        if num_replicas < 1:
            raise ValueError(f"FrameBatchSampler: num_replicas must be positive, got {num_replicas}")
        if rank is not None and not 0 <= rank < num_replicas:
            raise ValueError(f"FrameBatchSampler: rank must be in [0, {num_replicas}), got {rank}")
        if lengths.size < num_replicas:
            raise ValueError(
                f"FrameBatchSampler: {lengths.size} item(s) cannot give each of {num_replicas} processes a batch"
            )
        self.lengths = lengths
        self.max_frames = max_frames
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.costs = bucket_costs(lengths, num_buckets, max_frames)
        self._num_batches = len(make_divisible(pack_batches(self.costs, max_frames, None), num_replicas)[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = epoch

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All processes' batches of ``epoch`` (default: the current one); batch ``i`` is for process ``i % n``."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        batches = pack_batches(self.costs, self.max_frames, rng)
        if rng is not None:
            batches = [batches[index] for index in rng.permutation(len(batches))]
        batches, repeated = make_divisible(batches, self.num_replicas)
        if repeated:
            warnings.warn(
                f"FrameBatchSampler: every batch holds a single item, so {repeated} batch(es) are repeated in epoch "
                f"{epoch} to give each of {self.num_replicas} processes the same number of batches",
                stacklevel=2,
            )
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        if self.rank is not None:
            batches = batches[self.rank :: self.num_replicas]
        return iter(batches)

    def __len__(self) -> int:
        return self._num_batches if self.rank is None else self._num_batches // self.num_replicas

    def padding_fraction(self) -> float:
        """Fraction of the padded frames of an epoch that are padding (a packing-efficiency measure)."""
        batches = self.epoch_batches()
        real = sum(int(self.lengths[batch].sum()) for batch in batches)
        padded = sum(len(batch) * int(self.lengths[batch].max()) for batch in batches)
        return 1.0 - real / padded
