"""Decoding once: records decoded up front give exactly the batches the collator builds from the files, with and
without augmentation; gray clips are stored once; a corpus too large for memory, and decode_once with streaming, are
refused by name; the demo config decodes once with no loader worker; and train.py trains alike with and without
decode_once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import mtsk_data.collator as collator_module
import train
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_data.augment import AugmentationConfig
from mtsk_data.collator import MTSKCollator, babble_from_records, decode_corpus, decode_records, decoded_bytes
from mtsk_data.records import ShardWriter, load_split, make_record
from mtsk_train.arguments import DataArguments, parse_arguments

from media_samples import mouth_frames, signal, smooth_frames
from test_train import log_history, tiny_arguments, workspace  # noqa: F401 (workspace: the tiny corpus fixture)
from tiny_models import WORDS, tiny_config, tiny_tokenizer


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """Five gray clips and one colour clip, 0.5 to 1.8 s (within the tiny Whisper's 2-s window)."""
    rng = np.random.default_rng(0)
    rows = []
    for index, n_frames in enumerate([20, 45, 13, 32, 27, 38]):
        audio = signal(n_frames / 25, seed=index)
        frames = smooth_frames(n_frames, seed=index) if index == 5 else mouth_frames(n_frames, seed=index)
        text = " ".join(rng.choice(WORDS[WORDS.index("zero") :], size=3))
        rows.append(make_record(f"speaker{index % 2}/utt{index}", text, f"speaker{index % 2}", audio, frames))
    return rows


@pytest.fixture(scope="module")
def processor() -> LlamaMTSKProcessor:
    return LlamaMTSKProcessor.from_model_config(tiny_config(), tiny_tokenizer())


def assert_same_batches(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("modality", ["audio", "video", "audiovisual"])
def test_decoded_records_give_exactly_the_batches_of_the_files(records, processor, modality):
    noise = babble_from_records(records, num_utterances=6, num_talkers=3, seed=1)
    decoded = decode_records(records, processor, modality)
    assert [record["id"] for record in decoded] == [record["id"] for record in records]
    assert ("audio" in decoded[0]) == (modality != "video") and ("video" in decoded[0]) == (modality != "audio")
    collators = {
        "training, augmented": MTSKCollator(processor, modality, training=True, noise=noise, seed=3),
        "training, clean": MTSKCollator(
            processor, modality, training=True, augmentation=AugmentationConfig(train_snrs_db=(None,))
        ),
        "evaluation": MTSKCollator(processor, modality),
        "evaluation at 0 dB": MTSKCollator(processor, modality, augmentation=AugmentationConfig(eval_snr_db=0.0), noise=noise),
    }
    for collator in collators.values():
        for epoch in (0, 1):
            collator.set_epoch(epoch)
            for batch in (slice(0, 3), slice(3, 6)):
                assert_same_batches(collator(decoded[batch]), collator(records[batch]))
    # The augmentation did run: its epochs differ.
    augmented, key = collators["training, augmented"], "input_features" if modality == "audio" else "pixel_values_videos"
    augmented.set_epoch(0)
    first_epoch = augmented(decoded[:3])[key]
    augmented.set_epoch(1)
    assert not torch.equal(augmented(decoded[:3])[key], first_epoch)


def test_gray_clips_are_stored_once_and_colour_clips_whole(records, processor):
    decoded = decode_records(records, processor, "audiovisual")
    decoder = processor.video_processor
    for record, row in zip(records, decoded):
        frames = decoder.decode(record["video"]["bytes"])
        np.testing.assert_array_equal(row["video"], frames)
        assert row["video"].dtype == np.uint8 and row["audio"].dtype == np.float32
    gray, colour = decoded[0]["video"], decoded[5]["video"]
    assert gray.strides[-1] == 0 and colour.strides[-1] != 0
    expected = sum(
        row["audio"].nbytes + row["video"].nbytes // (1 if row["video"].strides[-1] else 3) for row in decoded
    )
    assert decoded_bytes(decoded) == expected


def test_decode_corpus_logs_its_cost_and_refuses_a_corpus_too_large_for_memory(
    records, processor, tmp_path, caplog, monkeypatch
):
    with ShardWriter(tmp_path, "train", records_per_shard=4) as writer:
        for record in records:
            writer.write(record)
    dataset = load_split(tmp_path, "train")
    with caplog.at_level(logging.INFO, logger="mtsk_data.collator"):
        decoded = decode_corpus(dataset, processor, "audiovisual", name="train")
    assert "decode_once: 6 train clips decoded in" in caplog.text and "MB in memory" in caplog.text
    collator = MTSKCollator(processor, "audiovisual")
    assert_same_batches(collator(decoded), collator(records))
    # The estimate, from the first clip's bytes per second, is close to what the clips take (same frame size).
    size = decoded_bytes(decoded)
    with pytest.raises(ValueError, match=r"decoded train split \(6 clips, .* GiB of memory, over the .* allowed"):
        decode_corpus(records, processor, "audiovisual", name="train", max_bytes=size // 2)
    decode_corpus(records, processor, "audiovisual", name="train", max_bytes=2 * size)
    # By default half of the available memory, shared by the training processes of the machine.
    assert collator_module.available_memory_bytes() > 0
    monkeypatch.setattr(collator_module, "available_memory_bytes", lambda: 4 * size)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    decode_corpus(records, processor, "audiovisual", name="train")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="over the .* allowed"):
        decode_corpus(records, processor, "audiovisual", name="train")


def test_decode_once_is_refused_with_streaming():
    with pytest.raises(ValueError, match="set one of decode_once and streaming"):
        DataArguments(decode_once=True, streaming=True)


def test_demo_config_decodes_once_without_a_loader_worker_and_sweeps_noise_and_blank_video():
    _, data_args, training_args = parse_arguments([str(REPO / "configs" / "demo.yaml")])
    assert data_args.decode_once and training_args.dataloader_num_workers == 0
    assert training_args.eval_snrs_db[0] == "clean" and len(training_args.eval_snrs_db) > 1
    assert training_args.eval_blank_video


def test_training_with_decode_once_matches_training_from_the_files(workspace, tmp_path, caplog):  # noqa: F811
    """train.py end to end on the tiny generated corpus: the same losses with decode_once, an eval split decoded too,
    and the final report with its noisy and video-blanked rows."""
    common = {"eval_split": "validation", "eval_strategy": "steps", "eval_steps": 2, "transcribe_example": False}
    train.main(tiny_arguments(workspace, tmp_path / "files", **common))
    with caplog.at_level(logging.INFO, logger="mtsk_data.collator"):
        train.main(
            tiny_arguments(
                workspace, tmp_path / "decoded", decode_once=True, eval_snrs_db=["clean", "0"],
                eval_noise_scales=[[4, 2]], eval_blank_video=True, **common,
            )
        )
    assert "decode_once: 16 train clips decoded" in caplog.text and "decode_once: 4 validation clips" in caplog.text
    from_files, decoded = log_history(tmp_path / "files", "checkpoint-4"), log_history(tmp_path / "decoded", "checkpoint-4")
    for name in ("loss", "eval_loss"):
        assert [entry[name] for entry in decoded if name in entry] == [entry[name] for entry in from_files if name in entry]
    report = json.loads((tmp_path / "decoded" / "final" / "eval_report.json").read_text())
    rows = [((entry["audio_rate"], entry["video_rate"]), entry["snr_db"], entry["blank_video"]) for entry in report]
    assert rows == [
        ((4, 2), None, False), ((4, 5), None, False), ((16, 2), None, False), ((16, 5), None, False),
        ((4, 2), 0.0, False), ((4, 2), None, True), ((4, 2), 0.0, True),
    ]
