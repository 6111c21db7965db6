"""Checking a Trainer checkpoint folder before resuming from it, so that a broken file is named before any model or
corpus is built (the Trainer itself fails deep inside `train()` without saying which file, and torch's message for a
corrupt `optimizer.pt` advises loading it with `weights_only=False`)."""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import TrainerState
from transformers.trainer_pt_utils import safe_globals


# What the Trainer resumes from: model weights in one of these forms, and its state.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
    "adapter_model.bin",
    "pytorch_model_fsdp.bin",
)
FSDP_SHARDED_WEIGHTS = "pytorch_model_fsdp"  # prefix of the folder of a sharded FSDP state dict
TRAINER_STATE = "trainer_state.json"
# Keys the Trainer always writes and relies on: without `global_step` a resumed run silently restarts at step 0.
REQUIRED_STATE_KEYS = {"global_step": int, "log_history": list}
# Saved by the Trainer but never loaded on resume (a pickled TrainingArguments).
NOT_LOADED_ON_RESUME = ("training_args.bin",)


def check_resume_checkpoint(folder: str | os.PathLike | None) -> None:
    """
    Checks that the Trainer can resume from `folder` (`--resume_from_checkpoint`; None: not resuming): it exists,
    holds model weights, every safetensors file's header and size are sound, every torch file (`optimizer.pt`,
    `scheduler.pt`, `rng_state*.pth`, ...) loads as the Trainer loads it (`torch.load(weights_only=True)`), and
    `trainer_state.json` is a JSON object the Trainer's `TrainerState` accepts with `global_step` and `log_history`.

    Raises:
        ValueError: naming the folder, the bad file and what is wrong with it.
    """
    if folder is None:
        return
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Cannot resume from {folder}: no such folder")
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not any(
        path.is_dir() and path.name.startswith(FSDP_SHARDED_WEIGHTS) for path in folder.iterdir()
    ):
        raise ValueError(f"Cannot resume from {folder}: it holds no model weights (one of {', '.join(WEIGHT_FILES)})")
    for path in sorted(folder.glob("*.safetensors")):
        _check_safetensors(path)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        shards = set(_read_json(index).get("weight_map", {}).values())
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if missing:
            raise ValueError(f"Cannot resume from {folder}: {index.name} lists shards that are not there: {missing}")
    for path in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")) + sorted(folder.glob("*.bin")):
        if path.name not in NOT_LOADED_ON_RESUME:
            _check_torch_file(path)
    _check_trainer_state(folder / TRAINER_STATE)


def _check_safetensors(path: Path) -> None:
    # safe_open checks the header, and that the tensors' byte ranges cover the file exactly (a truncated file fails).
    try:
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():
                weights.get_slice(name).get_shape()
    except SafetensorError as error:
        raise ValueError(
            f"Cannot resume from {path.parent}: {path.name} is not a complete safetensors file ({error})"
        ) from None


def _check_torch_file(path: Path) -> None:
    # Loaded the way the Trainer loads it, weights only, numpy's array types allowed for the RNG states (transformers'
    # `safe_globals`); zip files memory-mapped, so that a large optimizer state is not read into memory.
    if path.stat().st_size == 0:
        raise ValueError(f"Cannot resume from {path.parent}: {path.name} is empty")
    is_zip = zipfile.is_zipfile(path)  # torch.save's format: a zip archive, its directory at the end
    with open(path, "rb") as file:
        if file.read(4) == b"PK\x03\x04" and not is_zip:
            raise ValueError(
                f"Cannot resume from {path.parent}: {path.name} is truncated (a zip archive without its central "
                "directory, which is written last)"
            )
    allowed_globals = safe_globals() if path.name.startswith("rng_state") else contextlib.nullcontext()
    try:
        with allowed_globals:
            torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as error:  # whatever a corrupt file makes torch raise (UnpicklingError, RuntimeError, EOFError)
        # torch's weights-only message wraps the reason in paragraphs of advice to load the file with
        # `weights_only=False`, which would run whatever code the file holds: keep the reason only.
        reason = " ".join(
            paragraph.strip() for paragraph in str(error).split("\n\n") if "weights_only" not in paragraph
        ).strip()
        detail = f"{type(error).__name__}: {reason.splitlines()[0]}" if reason else type(error).__name__
        raise ValueError(
            f"Cannot resume from {path.parent}: {path.name} is not a PyTorch file of tensors and plain data ({detail})"
        ) from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"Cannot resume from {path.parent}: {path.name} is missing")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot resume from {path.parent}: {path.name} is not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise ValueError(
            f"Cannot resume from {path.parent}: {path.name} holds a {type(content).__name__}, not a JSON object"
        )
    return content


def _check_trainer_state(path: Path) -> None:
    state = _read_json(path)
    for key, kind in REQUIRED_STATE_KEYS.items():
        if key not in state:
            raise ValueError(f"Cannot resume from {path.parent}: {path.name} has no `{key}`")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise ValueError(
                f"Cannot resume from {path.parent}: {path.name} `{key}` is {state[key]!r}, expected {kind.__name__}"
            )
    if state["global_step"] < 0:
        raise ValueError(f"Cannot resume from {path.parent}: {path.name} `global_step` is {state['global_step']}")
    try:
        TrainerState(**state)
    except TypeError as error:  # a key TrainerState does not have
        raise ValueError(
            f"Cannot resume from {path.parent}: {path.name} does not fit the Trainer's state ({error})"
        ) from None
