"""Averaging the weights of the last N Trainer checkpoints, as the authors do before evaluation."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file


def last_checkpoints(output_dir: str | Path, count: int) -> list[Path]:
    """The `count` most recent `checkpoint-<step>` folders of a Trainer output folder, oldest first."""
    folders = [path for path in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", path.name)]
    folders.sort(key=lambda path: int(path.name.split("-")[1]))
    return folders[-count:]


def average_checkpoints(folders: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the floating-point tensors of the checkpoints' `model.safetensors` (integer buffers,
    such as BatchNorm's batch counter, are taken from the last one)."""
    if not folders:
        raise ValueError("No checkpoint to average")
    average: dict[str, torch.Tensor] = {}
    for index, folder in enumerate(folders):
        path = folder / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: is {folder} a complete checkpoint?")
        state = load_file(str(path))
        if index and state.keys() != average.keys():
            raise ValueError(f"{folder} holds different tensors from {folders[0]}: they cannot be averaged")
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                average[name] = tensor
            elif index == 0:
                average[name] = tensor.double()
            else:
                average[name] += tensor.double()
    return {
        name: (tensor / len(folders)).to(state[name].dtype) if tensor.is_floating_point() else tensor
        for name, tensor in average.items()
    }
