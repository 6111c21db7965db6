"""Averaging the weights of the last N Trainer checkpoints, as the authors do before evaluation."""

from __future__ import annotations

import re
from collections.abc import Collection
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open


def last_checkpoints(output_dir: str | Path, count: int) -> list[Path]:
    """The `count` most recent `checkpoint-<step>` folders of a Trainer output folder, oldest first."""
    folders = [path for path in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", path.name)]
    folders.sort(key=lambda path: int(path.name.split("-")[1]))
    return folders[-count:]


def average_checkpoints(folders: list[Path], frozen: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """The element-wise mean of the tensors of the checkpoints' `model.safetensors`, except the `frozen` ones.

    Frozen tensors are the same in every checkpoint, so they are not even read: the mean is summed in float64, and
    holding a frozen 8B LLM in float64 would take 64 GB of host memory. The rest is read one tensor at a time; the
    mean has each tensor's saved dtype, and integer tensors (such as BatchNorm's batch counter) are the last
    checkpoint's."""
    if not folders:
        raise ValueError("No checkpoint to average")
    paths = [folder / "model.safetensors" for folder in folders]
    for folder, path in zip(folders, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: is {folder} a complete checkpoint?")
    average: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        files = [stack.enter_context(safe_open(str(path), framework="pt")) for path in paths]
        names = set(files[0].keys())
        for folder, file in zip(folders[1:], files[1:]):
            if set(file.keys()) != names:
                raise ValueError(f"{folder} holds different tensors from {folders[0]}: they cannot be averaged")
        for name in sorted(names - set(frozen)):
            first = files[0].get_tensor(name)
            if not first.is_floating_point():
                average[name] = files[-1].get_tensor(name)
                continue
            total = first.double()
            for file in files[1:]:
                total += file.get_tensor(name).double()
            average[name] = (total / len(files)).to(first.dtype)
    return average
