"""The time budget (`max_train_minutes`): training stops, saving a checkpoint, at the first step that ends past the
budget; and under several processes every one stops at the same step, whichever ran out of time."""

import os
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing
from transformers import TrainerControl, TrainerState

import mtsk_train.trainer as trainer_module
from mtsk_train.trainer import TimeBudgetCallback


CPU = SimpleNamespace(device=torch.device("cpu"))


def test_training_stops_at_the_first_step_past_the_budget(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: clock[0])
    callback, state, control = TimeBudgetCallback(minutes=1), TrainerState(), TrainerControl()
    callback.on_train_begin(CPU, state, control)
    steps = 0
    while not control.should_training_stop:
        clock[0] += 0.5 if steps < 30 else 5.0  # steps slow down tenfold after 15 s
        steps += 1
        callback.on_step_end(CPU, state, control)
    assert steps == 30 + 10  # 15 s + 9 x 5 s = 60 s is not past the budget; the 10th slow step is
    assert control.should_save
    with pytest.raises(ValueError, match="minutes must be positive, got 0"):
        TimeBudgetCallback(0)


def _one_process(rank: int, init_file: str, stopped) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    callback, state, control = TimeBudgetCallback(minutes=1), TrainerState(), TrainerControl()
    callback.on_train_begin(CPU, state, control)
    if rank == 0:  # this process started its clock two minutes earlier
        callback.started -= 120
    callback.on_step_end(CPU, state, control)
    stopped[rank] = control.should_training_stop
    torch.distributed.destroy_process_group()


def test_every_process_stops_when_one_runs_out_of_time(tmp_path):
    with torch.multiprocessing.Manager() as manager:
        stopped = manager.list([None, None])
        torch.multiprocessing.spawn(_one_process, args=(os.fspath(tmp_path / "init"), stopped), nprocs=2)
        assert list(stopped) == [True, True]
