"""Checkpoint averaging: the mean of what training changed, summed in float64; frozen tensors are not read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mtsk_train.averaging import average_checkpoints, last_checkpoints


def write_checkpoints(root: Path, states: list[dict[str, torch.Tensor]]) -> list[Path]:
    folders = []
    for step, state in enumerate(states, start=1):
        folder = root / f"checkpoint-{step}"
        folder.mkdir()
        save_file(state, str(folder / "model.safetensors"))
        folders.append(folder)
    return folders


def test_average_sums_in_float64_and_skips_frozen_tensors(tmp_path):
    torch.manual_seed(0)
    # bf16 keeps 8 significant bits: 1 + 2^-8 rounds back to 1, so a bf16 running sum would lose both small terms.
    bf16_values = [1.0, 2.0**-8, 2.0**-8]
    states = [
        {
            "projector.weight": torch.randn(3, 4),
            "adapter.weight": torch.full((2,), value, dtype=torch.bfloat16),
            "frozen_llm.weight": torch.full((2, 2), float(step)),  # made to differ only to show it is not averaged
            "batch_norm.num_batches_tracked": torch.tensor(10 * step),
        }
        for step, value in enumerate(bf16_values)
    ]
    folders = write_checkpoints(tmp_path, states)

    average = average_checkpoints(folders, frozen={"frozen_llm.weight"})

    assert average.keys() == {"projector.weight", "adapter.weight", "batch_norm.num_batches_tracked"}
    expected = sum(state["projector.weight"].double() for state in states) / 3
    assert average["projector.weight"].dtype == torch.float32
    assert torch.equal(average["projector.weight"], expected.float())
    assert average["adapter.weight"].dtype == torch.bfloat16
    assert torch.equal(average["adapter.weight"], torch.full((2,), sum(bf16_values) / 3, dtype=torch.bfloat16))
    assert not torch.equal(average["adapter.weight"], sum(state["adapter.weight"] for state in states) / 3)
    assert average["batch_norm.num_batches_tracked"].item() == 20  # integers: the last checkpoint's


def test_average_refuses_checkpoints_that_differ_or_are_incomplete(tmp_path):
    folders = write_checkpoints(tmp_path, [{"a": torch.zeros(2)}, {"a": torch.zeros(2), "b": torch.zeros(2)}])
    with pytest.raises(ValueError, match="checkpoint-2 holds different tensors from .*checkpoint-1"):
        average_checkpoints(folders)
    (folders[1] / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="checkpoint-2/model.safetensors is missing"):
        average_checkpoints(folders)


def test_last_checkpoints_are_ordered_by_step(tmp_path):
    for name in ("checkpoint-10", "checkpoint-9", "checkpoint-100", "checkpoint-final", "final"):
        (tmp_path / name).mkdir()
    assert [folder.name for folder in last_checkpoints(tmp_path, 2)] == ["checkpoint-10", "checkpoint-100"]
