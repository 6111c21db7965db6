"""`--resume_from_checkpoint` on a broken folder: the bad file is named before any model or corpus is built."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

import train
from mtsk_train.resume import check_resume_checkpoint


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory) -> Path:
    """A real Trainer checkpoint folder (model.safetensors, optimizer.pt, scheduler.pt, rng_state.pth,
    trainer_state.json, training_args.bin) from one step of a tiny Llama."""
    output_dir = tmp_path_factory.mktemp("resume") / "run"
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    ids = torch.randint(0, 32, (4, 6))
    examples = [{"input_ids": row, "labels": row} for row in ids]
    arguments = TrainingArguments(
        output_dir=str(output_dir), max_steps=1, save_steps=1, per_device_train_batch_size=2, report_to="none",
        use_cpu=True, logging_steps=1,
    )
    Trainer(model=model, args=arguments, train_dataset=examples).train()
    return output_dir / "checkpoint-1"


@pytest.fixture
def checkpoint(trainer_checkpoint, tmp_path) -> Path:
    """A copy of the Trainer's checkpoint that a test may break."""
    return Path(shutil.copytree(trainer_checkpoint, tmp_path / "checkpoint-1"))


def test_a_trainer_checkpoint_passes(trainer_checkpoint):
    saved = {path.name for path in trainer_checkpoint.iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= saved
    check_resume_checkpoint(trainer_checkpoint)
    check_resume_checkpoint(None)  # not resuming


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def edit_state(checkpoint: Path, edit) -> None:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    edit(state)
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))


class RunsACommand:
    def __reduce__(self):
        return os.system, ("true",)


BREAKAGES = {
    "truncated model.safetensors": (
        lambda folder: truncate(folder / "model.safetensors"),
        "model.safetensors is not a complete safetensors file (Error while deserializing header: incomplete metadata",
    ),
    "garbage optimizer.pt": (
        lambda folder: (folder / "optimizer.pt").write_bytes(bytes(range(256)) * 8),
        "optimizer.pt is not a PyTorch file of tensors and plain data (UnpicklingError: Unsupported operand 0)",
    ),
    "truncated optimizer.pt": (
        lambda folder: truncate(folder / "optimizer.pt"),
        "optimizer.pt is truncated (a zip archive without its central directory, which is written last)",
    ),
    "optimizer.pt that runs code": (
        lambda folder: torch.save({"state": RunsACommand()}, folder / "optimizer.pt"),
        "optimizer.pt is not a PyTorch file of tensors and plain data (UnpicklingError: Trying to load unsupported "
        f"GLOBAL {os.system.__module__}.system whose module {os.system.__module__} is blocked.)",
    ),
    "empty scheduler.pt": (
        lambda folder: (folder / "scheduler.pt").write_bytes(b""),
        "scheduler.pt is empty",
    ),
    "garbage rng_state.pth": (
        lambda folder: (folder / "rng_state.pth").write_bytes(b"\x00" * 64),
        "rng_state.pth is not a PyTorch file of tensors and plain data",
    ),
    "truncated trainer_state.json": (
        lambda folder: truncate(folder / "trainer_state.json"),
        "trainer_state.json is not valid JSON (",
    ),
    "trainer_state.json without global_step": (
        lambda folder: edit_state(folder, lambda state: state.pop("global_step")),
        "trainer_state.json has no `global_step`",
    ),
    "trainer_state.json with a text global_step": (
        lambda folder: edit_state(folder, lambda state: state.update(global_step="1")),
        "trainer_state.json `global_step` is '1', expected int",
    ),
    "trainer_state.json with an unknown key": (
        lambda folder: edit_state(folder, lambda state: state.update(learning_rate=0.1)),
        "trainer_state.json does not fit the Trainer's state (",
    ),
    "trainer_state.json holding a list": (
        lambda folder: (folder / "trainer_state.json").write_text("[1, 2]"),
        "trainer_state.json holds a list, not a JSON object",
    ),
    "no trainer_state.json": (
        lambda folder: (folder / "trainer_state.json").unlink(),
        "trainer_state.json is missing",
    ),
    "no weights": (
        lambda folder: (folder / "model.safetensors").unlink(),
        "it holds no model weights (one of model.safetensors, ",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_file_is_named(checkpoint, breakage):
    break_folder, expected = BREAKAGES[breakage]
    break_folder(checkpoint)
    with pytest.raises(ValueError) as error:
        check_resume_checkpoint(checkpoint)
    assert str(error.value).startswith(f"Cannot resume from {checkpoint}: {expected}"), str(error.value)
    assert "weights_only" not in str(error.value)  # torch's advice to load the file unrestricted is left out


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"^Cannot resume from {tmp_path / 'checkpoint-9'}: no such folder$"):
        check_resume_checkpoint(tmp_path / "checkpoint-9")


def test_train_refuses_a_broken_checkpoint_before_building_anything(checkpoint, tmp_path):
    truncate(checkpoint / "model.safetensors")
    argv = [
        str(REPO / "tests" / "configs" / "tiny_train.yaml"), "--resume_from_checkpoint", str(checkpoint),
        "--output_dir", str(tmp_path / "out"), "--dataset_dir", str(tmp_path / "no_corpus"), "--llm", "no_llm",
    ]
    with pytest.raises(ValueError, match=f"^Cannot resume from {checkpoint}: model.safetensors is not a complete"):
        train.main(argv)
    assert not (tmp_path / "out").exists()
