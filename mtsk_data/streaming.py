"""Streaming frame-capped batches straight from parquet shards, for corpora that do not fit on one machine's disk.

:class:`StreamingFrameBatches` is a ``torch.utils.data.IterableDataset`` whose items are whole batches (lists of
records), each under the same frame cap as :class:`~mtsk_data.sampler.FrameBatchSampler`. The unit of work is a
parquet *row group* (the corpus writer stores 100 rows per group):

1. At construction only the ``n_frames`` and ``duration`` columns of every shard are read (a few bytes per row), which
   is enough to plan every process's batches without reading any media.
2. Each epoch, the row groups are shuffled with ``(seed, epoch)`` and dealt round-robin to the processes, so every
   process reads only its own row groups. A process groups its row groups, in order, into buffers of about
   ``buffer_rows`` rows, packs each buffer into length-bucketed batches (shuffled within the buffer), and its DataLoader
   workers take whole buffers round-robin (buffer ``k`` goes to worker ``k % num_workers``), reading only the row
   groups of their buffers.
3. Processes end an epoch after the same number of batches, so DDP never waits for a process that ran out: every
   process plans every process's batches (the same computation everywhere, no communication), and a process with
   fewer batches than the most repeats its own first batches to catch up. Those repeats are the only samples seen
   twice in an epoch; :meth:`StreamingFrameBatches.epoch_plan` reports how many. Samples longer than the cap are an
   error, never skipped.

Use it with ``DataLoader(stream, batch_size=None, collate_fn=collator, num_workers=k)``: the DataLoader must not batch
again (``batch_size=None``). Do not pass this loader through ``Accelerator.prepare`` (accelerate 1.15, checked with
two processes): with ``dispatch_batches=True``, its default for an ``IterableDataset``, process 0 alone iterates, joins
pairs of its batches and splits each pair between the processes, so batches mix lengths, can exceed the cap, and the
other processes' row groups are never read; with ``dispatch_batches=False`` the loader is wrapped in
``IterableDatasetShard``, which needs a fixed batch size and fails (``None * int``). The stream already shards itself;
move batches to the device yourself (the Trainer's ``_prepare_inputs`` does). A plain DataLoader has no
``set_epoch``: call :meth:`set_epoch` on the stream (and on the collator) at the start of each epoch; the epoch lives
in shared memory so persistent workers see it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .sampler import _default_world_size, frame_counts, pack_batches


def _default_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _open_parquet(path: str, storage_options: dict[str, Any] | None) -> pq.ParquetFile:
    if "://" in path:
        import fsspec

        return pq.ParquetFile(fsspec.open(path, "rb", **(storage_options or {})).open())
    return pq.ParquetFile(path)


@dataclass(frozen=True)
class EpochPlan:
    """One process's batches in one epoch.

    ``buffers[k]`` is the ``(shard index, row group index)`` list buffer ``k`` reads, ``batches[k]`` its batches as
    lists of ``(position in buffers[k]'s unit list, row in that row group)``. The last buffer may be a padding buffer
    whose batches repeat earlier ones; ``num_repeated`` says how many batches that is.
    """

    buffers: list[list[tuple[int, int]]]
    batches: list[list[list[tuple[int, int]]]]
    num_repeated: int

    @property
    def num_batches(self) -> int:
        return sum(len(buffer_batches) for buffer_batches in self.batches)


class StreamingFrameBatches(IterableDataset):
    """Batches of records streamed from parquet shards, sharded over processes and DataLoader workers.

    Args:
        shards: parquet files of one split (local paths or fsspec URLs such as ``hf://datasets/...``), e.g.
            ``mtsk_data.records.shard_paths(out_dir, "train")``.
        max_frames: cap on ``len(batch) * max(frames in batch)``, as in :class:`~mtsk_data.sampler.FrameBatchSampler`.
        buffer_rows: rows packed together (whole row groups); more rows pack tighter and mix more, at the cost of
            holding that many records (with their media bytes) in memory per worker.
        num_buckets: length buckets within a buffer (see :func:`~mtsk_data.sampler.bucket_costs`).
        shuffle: shuffle row groups, bucket members and batches (training); ``False`` keeps the file order.
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        num_replicas, rank: the processes; default from ``torch.distributed`` or ``WORLD_SIZE`` / ``RANK``.
        columns: columns to read (``None``: all); e.g. drop ``"video"`` for audio-only training.
        storage_options: passed to ``fsspec.open`` for URLs.
    """

    def __init__(
        self,
        shards: Sequence[str | os.PathLike],
        max_frames: int,
        *,
        buffer_rows: int = 1000,
        num_buckets: int = 100,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        columns: Sequence[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if not shards:
            raise ValueError("StreamingFrameBatches: no shards given")
        if max_frames < 1 or buffer_rows < 1 or num_buckets < 1:
            raise ValueError("StreamingFrameBatches: max_frames, buffer_rows and num_buckets must be positive")
        self.shards = [os.fspath(shard) for shard in shards]
        self.max_frames = max_frames
        self.buffer_rows = buffer_rows
        self.num_buckets = num_buckets
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = _default_world_size() if num_replicas is None else num_replicas
        self.rank = _default_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"StreamingFrameBatches: rank must be in [0, {self.num_replicas}), got {self.rank}")
        self.columns = list(columns) if columns is not None else None
        self.storage_options = storage_options
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

        # Lengths of every row group of every shard: (shard, row group) -> frames per row.
        self.units: list[tuple[int, int]] = []
        self.unit_lengths: list[np.ndarray] = []
        for shard_index, path in enumerate(self.shards):
            parquet = _open_parquet(path, storage_options)
            missing = {"n_frames", "duration"} - set(parquet.schema_arrow.names)
            if missing:
                raise ValueError(f"StreamingFrameBatches: shard {path!r} lacks the columns {sorted(missing)}")
            table = parquet.read(columns=["n_frames", "duration"])
            lengths = frame_counts(table.column("n_frames").to_numpy(), table.column("duration").to_numpy())
            too_long = np.flatnonzero(lengths > max_frames)
            if too_long.size:
                raise ValueError(
                    f"StreamingFrameBatches: {too_long.size} row(s) of {path!r} (rows {too_long[:10].tolist()}) are "
                    f"longer than max_frames={max_frames}; raise max_frames or filter the corpus"
                )
            start = 0
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if rows:
                    self.units.append((shard_index, group))
                    self.unit_lengths.append(lengths[start : start + rows])
                start += rows
        if len(self.units) < self.num_replicas:
            raise ValueError(
                f"StreamingFrameBatches: {len(self.units)} non-empty row group(s) cannot give each of "
                f"{self.num_replicas} processes its own; write more shards or smaller row groups"
            )
        all_lengths = np.concatenate(self.unit_lengths)
        # Bucket edges from the whole corpus, so every buffer costs a length the same way.
        self.bucket_edges = np.unique(
            np.quantile(all_lengths, np.linspace(0.0, 1.0, num_buckets + 1), method="higher")
        )

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration streams."""
        self._epoch.fill_(epoch)

    def _plan_rank(self, epoch: int, rank: int) -> EpochPlan:
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
            if self.shuffle
            else np.arange(len(self.units))
        )
        my_units = order[rank :: self.num_replicas].tolist()
        buffers: list[list[int]] = [[]]
        rows = 0
        for unit in my_units:
            if rows >= self.buffer_rows:
                buffers.append([])
                rows = 0
            buffers[-1].append(unit)
            rows += self.unit_lengths[unit].size
        planned_buffers, planned_batches = [], []
        for buffer_index, units in enumerate(buffers):
            addresses = [
                (position, row) for position, unit in enumerate(units) for row in range(self.unit_lengths[unit].size)
            ]
            lengths = np.concatenate([self.unit_lengths[unit] for unit in units])
            costs = np.minimum(self.bucket_edges[np.searchsorted(self.bucket_edges, lengths)], self.max_frames)
            rng = np.random.default_rng([self.seed, epoch, rank, buffer_index]) if self.shuffle else None
            batches = pack_batches(costs, self.max_frames, rng)
            if rng is not None:
                batches = [batches[index] for index in rng.permutation(len(batches))]
            planned_buffers.append([self.units[unit] for unit in units])
            planned_batches.append([[addresses[position] for position in batch] for batch in batches])
        return EpochPlan(planned_buffers, planned_batches, num_repeated=0)

    def epoch_plan(self, epoch: int | None = None, rank: int | None = None) -> EpochPlan:
        """The batches process ``rank`` (default: this one) streams in ``epoch`` (default: the current one), padded
        with repeats of its own first batches to the largest count of any process."""
        epoch = self.epoch if epoch is None else epoch
        rank = self.rank if rank is None else rank
        counts = [self._plan_rank(epoch, other).num_batches for other in range(self.num_replicas)]
        plan = self._plan_rank(epoch, rank)
        missing = max(counts) - plan.num_batches
        if not missing:
            return plan
        # The repeats form one more buffer that reads again the row groups of the batches it repeats.
        flat = [(buffer, batch) for buffer, batches in enumerate(plan.batches) for batch in batches]
        repeats = [flat[index % len(flat)] for index in range(missing)]
        units = sorted({plan.buffers[buffer][position] for buffer, batch in repeats for position, _ in batch})
        position_of = {unit: position for position, unit in enumerate(units)}
        batches = [
            [(position_of[plan.buffers[buffer][position]], row) for position, row in batch] for buffer, batch in repeats
        ]
        return EpochPlan(plan.buffers + [units], plan.batches + [batches], num_repeated=missing)

    def __len__(self) -> int:
        """Batches per process in the current epoch (equal on every process)."""
        return max(self._plan_rank(self.epoch, rank).num_batches for rank in range(self.num_replicas))

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        plan = self.epoch_plan()
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        files: dict[int, pq.ParquetFile] = {}
        for buffer_index in range(worker_id, len(plan.buffers), num_workers):
            groups = []
            for shard_index, group in plan.buffers[buffer_index]:
                if shard_index not in files:
                    files[shard_index] = _open_parquet(self.shards[shard_index], self.storage_options)
                groups.append(files[shard_index].read_row_group(group, columns=self.columns).to_pylist())
            for batch in plan.batches[buffer_index]:
                yield [groups[position][row] for position, row in batch]
