"""The final evaluation's noise sweep and video ablation: blanked video really reaches the model as zeros (masks and
audio unchanged), its rows are labelled in the JSON and Markdown report and kept out of the model card's table, the
sweep evaluates the noisy SNRs and the ablation at the scales asked for only, and every batch is decoded once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mtsk_train.evaluation as evaluation
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_data.collator import babble_from_records
from mtsk_data.records import make_record
from mtsk_train.evaluation import evaluate_scales, evaluate_sweep, markdown_table, wer_table, write_report

from media_samples import mouth_frames, signal
from tiny_models import WORDS, count_audio_encodings, tiny_model, tiny_tokenizer


GENERATE = {"max_new_tokens": 3}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    rng = np.random.default_rng(1)
    words = WORDS[WORDS.index("zero") :]
    return [
        make_record(f"s/utt{index}", " ".join(rng.choice(words, size=2)), "s", signal(n / 25, seed=index),
                    mouth_frames(n, seed=index))
        for index, n in enumerate([18, 30, 24, 40, 12])
    ]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


@pytest.fixture(scope="module")
def processor(model) -> LlamaMTSKProcessor:
    return LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())


@pytest.fixture(scope="module")
def noise(records):
    return babble_from_records(records, num_utterances=5, num_talkers=3, seed=0)


def recorded_inputs(model, monkeypatch) -> list[dict[str, torch.Tensor]]:
    """The inputs of every `model.generate` call from now on (generation itself still runs)."""
    calls = []
    generate = model.generate

    def recording_generate(**kwargs):
        calls.append({name: value.clone() for name, value in kwargs.items() if isinstance(value, torch.Tensor)})
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    return calls


def test_blank_video_feeds_the_model_zeros_with_the_clips_masks_and_audio(model, processor, records, noise, monkeypatch):
    calls = recorded_inputs(model, monkeypatch)
    seen, _ = evaluate_scales(model, processor, records, scales=[(4, 2)], snrs_db=[None, 0.0], noise=noise, batch_size=3,
                              generate_kwargs=GENERATE)
    seen_inputs = list(calls)
    calls.clear()
    blanked, hypotheses = evaluate_scales(model, processor, records, scales=[(4, 2)], snrs_db=[None, 0.0], noise=noise,
                                          batch_size=3, generate_kwargs=GENERATE, blank_video=True)
    assert len(calls) == len(seen_inputs) == 4  # 2 batches x 2 SNRs
    for blank, real in zip(calls, seen_inputs, strict=True):
        assert real["pixel_values_videos"].abs().sum() > 0
        assert torch.equal(blank["pixel_values_videos"], torch.zeros_like(real["pixel_values_videos"]))
        for name in ("pixel_values_videos_mask", "audio_encoder_outputs", "audio_encoder_outputs_mask"):
            assert torch.equal(blank[name], real[name]), name
    assert [row.blank_video for row in blanked] == [True, True] and not any(row.blank_video for row in seen)
    # The same clips, so the same video tokens: the ablation changes what the model sees, not what it costs.
    assert [row.mean_llm_tokens for row in blanked] == [row.mean_llm_tokens for row in seen]
    assert set(hypotheses) == {"(4, 2)@None video blanked", "(4, 2)@0.0 video blanked"}


def test_blank_video_needs_an_audiovisual_model(records):
    audio_model = tiny_model(modality="audio")
    audio_processor = LlamaMTSKProcessor.from_model_config(audio_model.config, tiny_tokenizer())
    with pytest.raises(ValueError, match="blank_video .* needs an audiovisual model, got modality 'audio'"):
        evaluate_scales(audio_model, audio_processor, records, blank_video=True)


def test_sweep_keeps_noise_and_ablation_to_the_asked_scales_and_labels_the_rows(model, processor, records, noise, tmp_path):
    results, hypotheses = evaluate_sweep(
        model, processor, records, snrs_db=[None, 5.0, -5.0], noise=noise, noise_scales=[(4, 2)], blank_video=True,
        batch_size=5, generate_kwargs=GENERATE,
    )
    rows = [(row.scale, row.snr_db, row.blank_video) for row in results]
    assert rows == [
        *[(scale, None, False) for scale in model.config.scales],
        ((4, 2), 5.0, False), ((4, 2), -5.0, False),
        ((4, 2), None, True), ((4, 2), 5.0, True), ((4, 2), -5.0, True),
    ]
    assert len(hypotheses) == len(results)
    # The model card's table holds the clean rows with the video seen, one per scale.
    assert wer_table(results) == {row.scale: round(100 * row.wer, 2) for row in results[: len(model.config.scales)]}
    table = markdown_table(results)
    assert table.count("video blanked") == 3 and "| (4, 2), video blanked | -5 |" in table
    paths = write_report(results, tmp_path)
    written = json.loads(paths["json"].read_text())
    assert [entry["blank_video"] for entry in written] == [row[2] for row in rows]
    # Only fields were added: every field an earlier report had is still there under its name.
    assert {"audio_rate", "video_rate", "snr_db", "wer", "errors", "reference_words", "utterances", "mean_llm_tokens",
            "mean_llm_tflops", "mean_llm_tokens_processed", "seconds", "mode"} <= written[0].keys()
    assert "video blanked" in paths["markdown"].read_text()


def test_sweep_without_noise_scales_or_ablation_is_evaluate_scales(model, processor, records, noise):
    swept, swept_texts = evaluate_sweep(model, processor, records, snrs_db=[5.0, None], noise=noise, batch_size=2,
                                        generate_kwargs=GENERATE)
    plain, plain_texts = evaluate_scales(model, processor, records, snrs_db=[5.0, None], noise=noise, batch_size=2,
                                         generate_kwargs=GENERATE)
    assert [(row.scale, row.snr_db, row.wer) for row in swept] == [(row.scale, row.snr_db, row.wer) for row in plain]
    assert swept_texts == plain_texts


def test_each_batch_is_decoded_once_for_every_snr(model, processor, records, noise, monkeypatch):
    decoded_batches = []
    decode_records = evaluation.decode_records

    def counting_decode_records(batch, *args, **kwargs):
        decoded_batches.append([record["id"] for record in batch])
        return decode_records(batch, *args, **kwargs)

    monkeypatch.setattr(evaluation, "decode_records", counting_decode_records)
    evaluate_scales(model, processor, records, scales=[(16, 5)], snrs_db=[None, 5.0, 0.0], noise=noise, batch_size=3,
                    generate_kwargs=GENERATE)
    assert decoded_batches == [[record["id"] for record in records[:3]], [record["id"] for record in records[3:]]]


def test_the_sweep_encodes_each_batchs_audio_once_per_snr(model, processor, records, noise, monkeypatch):
    encoded = count_audio_encodings(model, monkeypatch)
    results, _ = evaluate_sweep(model, processor, records, snrs_db=[None, 5.0], noise=noise, noise_scales=[(4, 2)],
                                blank_video=True, batch_size=3, generate_kwargs=GENERATE)
    assert len(results) == len(model.config.scales) + 1 + 2  # clean at every scale, 5 dB, both SNRs blanked
    assert encoded == [3, 3, 2, 2]  # 2 batches x 2 SNRs, whatever the number of rows
