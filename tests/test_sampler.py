"""Frame-capped, length-bucketed batches: the map-style batch sampler and the streaming variant, in one process and in
two CPU processes started by ``accelerate launch`` (gloo)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtsk_data.sampler import (
    EpochDataset,
    FrameBatchSampler,
    bucket_costs,
    frame_counts,
    make_divisible,
    pack_batches,
)
from mtsk_data.streaming import StreamingFrameBatches


REPO = Path(__file__).resolve().parents[1]


def _lengths(count: int = 300, seed: int = 0) -> np.ndarray:
    """Frame counts like a lip-reading corpus: mostly 1-6 s, a few long ones."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.gamma(3.0, 35.0, size=count).astype(np.int64), 5, 400)


def _check_epoch(batches, lengths, max_frames, num_samples):
    """Every batch is under the cap (padded size) and every sample appears exactly once."""
    for batch in batches:
        assert len(batch) * max(lengths[batch]) <= max_frames
        assert sum(lengths[batch]) <= max_frames
    assert sorted(index for batch in batches for index in batch) == list(range(num_samples))


def test_frame_counts_take_the_longer_of_video_and_audio():
    np.testing.assert_array_equal(frame_counts([50, 0, 10], [2.0, 1.01, 0.3]), [50, 26, 10])
    with pytest.raises(ValueError, match="durations"):
        frame_counts([1, 2], [1.0])


def test_bucket_costs_round_up_within_buckets_and_respect_the_cap():
    lengths = np.array([3, 9, 5, 5, 12, 30, 7])
    costs = bucket_costs(lengths, num_buckets=3, max_frames=20)
    assert np.all(costs >= np.minimum(lengths, 20)) and np.all(costs <= 20)
    assert len(np.unique(costs)) <= 3 + 1  # the quantiles 0, 1/3, 2/3, 1
    np.testing.assert_array_equal(bucket_costs(lengths, num_buckets=100, max_frames=100), lengths)


def test_pack_batches_count_does_not_depend_on_the_shuffle():
    costs = bucket_costs(_lengths(), 20, 1000)
    reference = pack_batches(costs, 1000, None)
    for seed in range(5):
        batches = pack_batches(costs, 1000, np.random.default_rng(seed))
        assert [len(batch) for batch in batches] == [len(batch) for batch in reference]
        assert sorted(sum(batches, [])) == list(range(costs.size))


def test_make_divisible_splits_instead_of_repeating():
    batches, repeated = make_divisible([[0, 1, 2, 3], [4], [5, 6]], 4)
    assert repeated == 0 and len(batches) == 4
    assert sorted(sum(batches, [])) == list(range(7))
    batches, repeated = make_divisible([[0], [1], [2]], 2)
    assert repeated == 1 and batches == [[0], [1], [2], [0]]


@pytest.mark.parametrize("num_replicas", [1, 2, 3])
def test_sampler_caps_covers_and_shards(num_replicas):
    lengths = _lengths()
    max_frames = 600
    sampler = FrameBatchSampler(lengths, max_frames, num_buckets=30, seed=3, num_replicas=num_replicas)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        everything = list(sampler)
        assert len(everything) == len(sampler) and len(everything) % num_replicas == 0
        _check_epoch(everything, lengths, max_frames, lengths.size)
        per_rank = []
        for rank in range(num_replicas):
            ranked = FrameBatchSampler(
                lengths, max_frames, num_buckets=30, seed=3, num_replicas=num_replicas, rank=rank
            )
            ranked.set_epoch(epoch)
            per_rank.append(list(ranked))
            assert len(per_rank[-1]) == len(ranked) == len(sampler) // num_replicas
            assert per_rank[-1] == everything[rank::num_replicas]
        _check_epoch(sum(per_rank, []), lengths, max_frames, lengths.size)


def test_sampler_is_deterministic_per_epoch_and_reshuffles_between_epochs():
    lengths = _lengths()
    first, second = (FrameBatchSampler(lengths, 800, seed=11) for _ in range(2))
    assert first.epoch_batches(0) == second.epoch_batches(0)
    assert first.epoch_batches(0) != first.epoch_batches(1)
    # The batches themselves change, not only their order, and their number stays fixed.
    as_sets = lambda batches: {frozenset(batch) for batch in batches}  # noqa: E731
    assert as_sets(first.epoch_batches(0)) != as_sets(first.epoch_batches(1))
    assert len({len(first.epoch_batches(epoch)) for epoch in range(5)}) == 1
    assert FrameBatchSampler(lengths, 800, seed=12).epoch_batches(0) != first.epoch_batches(0)
    # Batches group similar lengths: little padding.
    assert first.padding_fraction() < 0.1


def test_sampler_without_shuffle_is_fixed_and_sorted():
    lengths = _lengths(50)
    sampler = FrameBatchSampler(lengths, 500, shuffle=False, num_buckets=1000)
    assert sampler.epoch_batches(0) == sampler.epoch_batches(7)
    flat = [index for batch in sampler.epoch_batches(0) for index in batch]
    assert list(lengths[flat]) == sorted(lengths)


def test_sampler_errors_and_edge_cases():
    with pytest.raises(ValueError, match=r"longer than max_frames=100 \(items \[1\], longest 150"):
        FrameBatchSampler([10, 150, 20], 100)
    with pytest.raises(ValueError, match="cannot give each of 4 processes"):
        FrameBatchSampler([10, 20, 30], 100, num_replicas=4)
    with pytest.raises(ValueError, match="rank"):
        FrameBatchSampler([10, 20, 30], 100, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match=">= 1 frame"):
        FrameBatchSampler([10, 0], 100)
    # Every item needs a batch of its own and the count is odd: one batch is repeated, with a warning.
    sampler = FrameBatchSampler([60, 70, 80], 100, num_replicas=2)
    with pytest.warns(UserWarning, match="repeated"):
        batches = list(sampler)
    assert len(batches) == 4 and sorted(map(tuple, batches))[:3] == [(0,), (1,), (2,)]


def test_epoch_dataset_forwards_the_epoch_and_the_items():
    sampler = FrameBatchSampler([5, 6, 7], 20)
    follower = FrameBatchSampler([1, 2], 20)
    dataset = EpochDataset(["a", "b", "c"], sampler, follower)
    dataset.set_epoch(4)
    assert sampler.epoch == follower.epoch == 4
    assert len(dataset) == 3 and dataset[1] == "b" and dataset.__getitems__([2, 0]) == ["c", "a"]
    with pytest.raises(TypeError, match="no set_epoch"):
        EpochDataset(["a"], object())


def _write_shards(directory: Path, lengths: np.ndarray, num_shards: int, row_group_size: int) -> list[str]:
    """Parquet shards holding only the columns the stream plans with, plus an id."""
    paths = []
    for shard, chunk in enumerate(np.array_split(np.arange(lengths.size), num_shards)):
        table = pa.table(
            {
                "id": [f"utt{index:04d}" for index in chunk],
                "n_frames": lengths[chunk],
                "duration": lengths[chunk] / 25.0,
            }
        )
        path = directory / f"train-{shard:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(str(path))
    return paths


def _ids(batch):
    return [record["id"] for record in batch]


def _stream_ids(stream, epoch):
    stream.set_epoch(epoch)
    return [[record["id"] for record in batch] for batch in stream]


def test_stream_batches_cover_the_shards_once_and_respect_the_cap(tmp_path):
    lengths = _lengths(230)
    shards = _write_shards(tmp_path, lengths, num_shards=5, row_group_size=10)
    length_of = {f"utt{index:04d}": int(length) for index, length in enumerate(lengths)}
    per_rank = {}
    for rank in range(2):
        stream = StreamingFrameBatches(shards, 700, buffer_rows=60, num_replicas=2, rank=rank, seed=5)
        per_rank[rank] = _stream_ids(stream, 0)
        assert len(per_rank[rank]) == len(stream)
        assert _stream_ids(stream, 0) == per_rank[rank]  # deterministic per epoch
        assert _stream_ids(stream, 1) != per_rank[rank]  # and reshuffled between epochs
    assert len(per_rank[0]) == len(per_rank[1])
    for batches in per_rank.values():
        for batch in batches:
            assert len(batch) * max(length_of[name] for name in batch) <= 700
    counts = Counter(name for batches in per_rank.values() for batch in batches for name in batch)
    assert set(counts) == set(length_of)
    # Only the documented catch-up repeats (the last batches of the shorter process) are seen twice.
    plans = [StreamingFrameBatches(shards, 700, buffer_rows=60, num_replicas=2, rank=rank, seed=5).epoch_plan(0)
             for rank in range(2)]
    repeated_samples = sum(len(batch) for plan in plans if plan.num_repeated for batch in plan.batches[-1])
    assert sum(plan.num_repeated for plan in plans) > 0  # 230 rows in 23 row groups: the ranks differ
    assert sum(count - 1 for count in counts.values()) == repeated_samples
    # Ranks read different row groups.
    assert not {name for batch in per_rank[0] for name in batch} & {name for batch in per_rank[1] for name in batch}


def test_stream_workers_split_buffers_and_keep_the_epoch(tmp_path):
    lengths = _lengths(120, seed=4)
    shards = _write_shards(tmp_path, lengths, num_shards=3, row_group_size=10)
    stream = StreamingFrameBatches(shards, 500, buffer_rows=20, seed=1, num_replicas=1, rank=0)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=2, persistent_workers=True, collate_fn=_ids
    )
    for epoch in range(2):
        stream.set_epoch(epoch)
        from_workers = list(loader)
        in_process = _stream_ids(stream, epoch)
        assert sorted(map(tuple, from_workers)) == sorted(map(tuple, in_process))
        assert len(from_workers) == len(stream)
        assert sorted(name for batch in from_workers for name in batch) == sorted(f"utt{i:04d}" for i in range(120))


def test_stream_errors(tmp_path):
    shards = _write_shards(tmp_path, np.array([10, 20, 500]), num_shards=1, row_group_size=10)
    with pytest.raises(ValueError, match=r"longer than max_frames=100"):
        StreamingFrameBatches(shards, 100)
    with pytest.raises(ValueError, match="cannot give each of 2 processes"):
        StreamingFrameBatches(shards, 1000, num_replicas=2, rank=0)
    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.table({"id": ["a"]}), bare)
    with pytest.raises(ValueError, match="lacks the columns"):
        StreamingFrameBatches([str(bare)], 100, num_replicas=1, rank=0)


_TWO_PROCESS_SCRIPT = """
import json, sys
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import skip_first_batches
from torch.utils.data import DataLoader

from mtsk_data.sampler import EpochDataset, FrameBatchSampler
from mtsk_data.streaming import StreamingFrameBatches


class Follower:  # stands in for the collator
    epoch = -1

    def set_epoch(self, epoch):
        self.epoch = epoch


out_dir, lengths_path, shards = sys.argv[1], sys.argv[2], sys.argv[3:]
lengths = np.load(lengths_path)
accelerator = Accelerator(cpu=True)
rank, world = accelerator.process_index, accelerator.num_processes
torch.distributed.barrier()  # gloo is up: the stream reads rank and world size from torch.distributed

# Map-style: the sampler yields the whole epoch, accelerate's BatchSamplerShard picks this process's batches.
sampler = FrameBatchSampler(lengths, 600, num_buckets=30, seed=9)
follower = Follower()
dataset = EpochDataset(range(len(lengths)), sampler, follower)
loader = accelerator.prepare(DataLoader(dataset, batch_sampler=sampler, collate_fn=list))
prepared_length = len(loader)
result = {"rank": rank, "world": world, "sampler_replicas": sampler.num_replicas, "epochs": [], "direct": [],
          "prepared_length": prepared_length, "stream": [], "follower": []}
stream = StreamingFrameBatches(shards, 600, buffer_rows=40, seed=9)
for epoch in range(2):
    # The Trainer calls this; accelerate forwards it to dataset.set_epoch, and EpochDataset to the sampler.
    loader.set_epoch(epoch)
    result["epochs"].append([list(map(int, batch)) for batch in loader])
    result["follower"].append(follower.epoch)
    direct = FrameBatchSampler(lengths, 600, num_buckets=30, seed=9, num_replicas=world, rank=rank)
    direct.set_epoch(epoch)
    result["direct"].append([list(map(int, batch)) for batch in direct])
    stream.set_epoch(epoch)
    result["stream"].append([[record["id"] for record in batch] for batch in stream])
    # Every process steps the same number of times: an all-reduce per batch would hang otherwise.
    steps = torch.tensor([len(result["epochs"][-1]), len(result["stream"][-1])])
    gathered = accelerator.gather(steps[None])
    result.setdefault("gathered_steps", []).append(gathered.tolist())
# Resuming after one batch of epoch 1 in a fresh process (the sampler still at epoch 0), as the Trainer does it.
sampler.set_epoch(0)
resumed = skip_first_batches(loader, 1)
resumed.set_epoch(1)
result["resumed"] = [list(map(int, batch)) for batch in resumed]
with open(f"{out_dir}/rank{rank}.json", "w") as file:
    json.dump(result, file)
# Leave together: a process that exits while the other still holds the gloo group can abort.
accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()
"""


def _free_port() -> int:
    """A free TCP port, so that parallel test runs do not collide on torchrun's default 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_under_accelerate_get_disjoint_batches_that_cover_the_epoch(tmp_path):
    lengths = _lengths(211, seed=2)
    lengths_path = tmp_path / "lengths.npy"
    np.save(lengths_path, lengths)
    shards = _write_shards(tmp_path, lengths, num_shards=4, row_group_size=12)
    script = tmp_path / "two_processes.py"
    script.write_text(textwrap.dedent(_TWO_PROCESS_SCRIPT))
    environment = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    launcher = Path(sys.executable).with_name("accelerate")
    completed = subprocess.run(
        # `--cpu --num_processes 2` starts ONE process in accelerate 1.15 (its multi-CPU path needs MPI); the
        # torchrun-based launcher with a CPU-only Accelerator (gloo) gives two.
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(script), str(tmp_path),
         str(lengths_path), *shards],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [result["rank"] for result in results] == [0, 1] and results[0]["world"] == 2
    assert results[0]["sampler_replicas"] == 2  # read from WORLD_SIZE, set by accelerate launch

    length_of = {f"utt{index:04d}": int(length) for index, length in enumerate(lengths)}
    for epoch in range(2):
        rank0, rank1 = (result["epochs"][epoch] for result in results)
        assert rank0 != rank1
        assert not {i for batch in rank0 for i in batch} & {i for batch in rank1 for i in batch}
        _check_epoch(rank0 + rank1, lengths, 600, lengths.size)
        assert len(rank0) == len(rank1) == results[0]["prepared_length"]
        # accelerate's sharding gives each process exactly what rank=... gives without accelerate.
        assert [result["direct"][epoch] for result in results] == [rank0, rank1]

        stream0, stream1 = (result["stream"][epoch] for result in results)
        assert len(stream0) == len(stream1)
        assert {name for batch in stream0 for name in batch} != {name for batch in stream1 for name in batch}
        assert {name for batches in (stream0, stream1) for batch in batches for name in batch} == set(length_of)
        for batch in stream0 + stream1:
            assert len(batch) * max(length_of[name] for name in batch) <= 600
        assert [result["follower"][epoch] for result in results] == [epoch, epoch]
        assert results[0]["gathered_steps"][epoch] == results[1]["gathered_steps"][epoch]
        steps = results[0]["gathered_steps"][epoch]
        assert steps[0] == steps[1]  # equal step counts on both processes, for both loaders
    assert results[0]["epochs"][0] != results[0]["epochs"][1]
    assert [result["resumed"] for result in results] == [result["epochs"][1][1:] for result in results]
