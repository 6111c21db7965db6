"""A frozen audio encoder's outputs computed once give the model exactly what `input_features` give it, for an
audio-only and an audio-visual model, clean and with noisy copies; a pretrained Whisper's window can be cut short."""

import json
import logging

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperModel

import train
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_data.augment import NoiseSource
from mtsk_data.collator import MTSKCollator
from mtsk_train.arguments import DataArguments, ModelArguments
from mtsk_train.assemble import load_audio_encoder
from mtsk_train.encoder_cache import EncodedAudioCollator, check_cacheable, encode_audio_records
from mtsk_train.trainer import train_mode

from media_samples import mouth_frames, signal
from test_train import tiny_arguments, workspace  # noqa: F401 (workspace: the tiny corpus fixture)
from tiny_models import tiny_model, tiny_tokenizer


def audio_records() -> list[dict]:
    texts = ["one two three", "four", "five six", "seven eight nine"]
    return [
        {"id": f"clip-{index}", "text": text, "audio": signal(seconds, seed=index).astype(np.float32)}
        for index, (text, seconds) in enumerate(zip(texts, [1.3, 0.3, 1.9, 1.0]))
    ]


def test_cached_outputs_give_the_loss_and_transcripts_of_the_features():
    model = tiny_model(modality="audio", lora_strategy="mss", audio_rates=[4, 16])
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    records = audio_records()
    cache = encode_audio_records(model, processor, records, batch_size=3)
    assert set(cache) == {record["id"] for record in records}
    # One copy (clean) per clip, 50 Hz, at least 25 frames.
    assert [tuple(cache[record["id"]].shape[:2]) for record in records] == [(1, 65), (1, 25), (1, 95), (1, 50)]

    from_features = MTSKCollator(processor, modality="audio", training=False)(records)
    from_cache = EncodedAudioCollator(processor, cache)(records)
    assert torch.equal(from_cache["labels"], from_features["labels"])
    train_mode(model)
    expected = model(**from_features)
    cached = model(**from_cache)
    torch.testing.assert_close(cached.loss, expected.loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(cached.scale_losses, expected.scale_losses, rtol=0, atol=1e-6)
    model.eval()
    for scale in model.config.scales:
        audio_inputs = {name: value for name, value in from_features.items() if name != "labels"}
        cached_inputs = {name: value for name, value in from_cache.items() if name != "labels"}
        logits = model(**audio_inputs, scale=scale).logits
        cached_logits = model(**cached_inputs, scale=scale).logits
        torch.testing.assert_close(cached_logits, logits, rtol=0, atol=1e-5)


def test_cache_refuses_what_would_make_it_wrong():
    video_model = tiny_model(modality="video")
    with pytest.raises(ValueError, match="modality is 'video', without audio"):
        check_cacheable(video_model, augment=False)
    audio_model = tiny_model(modality="audio")
    with pytest.raises(ValueError, match="augmentation is on"):
        check_cacheable(audio_model, augment=True)
    processor = LlamaMTSKProcessor.from_model_config(audio_model.config, tiny_tokenizer())
    records = audio_records()
    with pytest.raises(ValueError, match="repeated: \\['clip-0'\\]"):
        encode_audio_records(audio_model, processor, [records[0], records[1], records[0]])
    with pytest.raises(KeyError, match="clip-3"):
        EncodedAudioCollator(processor, encode_audio_records(audio_model, processor, records[:3]))(records)
    with pytest.raises(ValueError, match="not both"):
        audio_model(input_features=torch.zeros(1, 80, 400), audio_encoder_outputs=torch.zeros(1, 30, 8))
    with pytest.raises(ValueError, match="audio_encoder_outputs_mask"):
        audio_model(audio_encoder_outputs=torch.zeros(1, 30, audio_model.config.audio_config.d_model), scale=4)


def test_training_masks_zero_spans_per_second_anew_each_epoch_and_leave_the_cache_alone():
    processor = LlamaMTSKProcessor.from_model_config(tiny_model(modality="audio").config, tiny_tokenizer())
    cache = {"long": torch.randn(1, 250, 8), "short": torch.randn(1, 30, 8)}
    original = {key: value.clone() for key, value in cache.items()}
    records = [{"id": "long", "text": "one two"}, {"id": "short", "text": "three"}]
    collator = EncodedAudioCollator(processor, cache, mask_window=10, seed=0)

    def masked_frames(batch) -> list[torch.Tensor]:
        outputs, mask = batch["audio_encoder_outputs"], batch["audio_encoder_outputs_mask"]
        return [((outputs[row] == 0).all(-1) & (mask[row] == 1)).nonzero().flatten() for row in range(len(outputs))]

    first = collator(records)
    assert first["audio_encoder_outputs_mask"].sum(-1).tolist() == [250, 30]  # lengths unchanged
    long_masked, short_masked = masked_frames(first)
    assert 0 < len(long_masked) <= 5 * 9  # one span of 0-9 frames per started second (5 s)
    assert len(short_masked) <= 9
    unmasked = torch.ones(250, dtype=torch.bool)
    unmasked[long_masked] = False
    assert torch.equal(first["audio_encoder_outputs"][0][unmasked], cache["long"][0][unmasked])
    assert all(torch.equal(cache[key], original[key]) for key in cache)
    assert torch.equal(collator(records)["audio_encoder_outputs"], first["audio_encoder_outputs"])  # same epoch
    collator.set_epoch(1)
    assert not torch.equal(masked_frames(collator(records))[0], long_masked)
    plain = EncodedAudioCollator(processor, cache)(records)
    assert torch.equal(plain["audio_encoder_outputs"][0], cache["long"][0])
    with pytest.raises(ValueError, match="mask_window must be >= 0"):
        EncodedAudioCollator(processor, cache, mask_window=-1)


def audiovisual_records() -> list[dict]:
    """Clips whose audio is a little longer or shorter than their video (the collator aligns it at 640 samples per
    frame, and so must the cache)."""
    frames_and_seconds = [(30, 1.25), (12, 0.41), (40, 1.61)]
    return [
        {
            "id": f"av-{index}",
            "text": text,
            "audio": signal(seconds, seed=index).astype(np.float32),
            "video": mouth_frames(n_frames, seed=index),
        }
        for index, ((n_frames, seconds), text) in enumerate(zip(frames_and_seconds, ["one two", "three", "four five"]))
    ]


def test_audiovisual_cache_with_the_video_beside_it_gives_the_loss_of_the_features():
    model = tiny_model(modality="audiovisual", lora_strategy="mss")
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    records = audiovisual_records()
    check_cacheable(model, augment=False)
    cache = encode_audio_records(model, processor, records, batch_size=2)
    assert [tuple(cache[record["id"]].shape[:2]) for record in records] == [(1, 60), (1, 25), (1, 80)]  # 2 per frame

    from_features = MTSKCollator(processor, modality="audiovisual", training=False)(records)
    from_cache = EncodedAudioCollator(processor, cache, video_collator=MTSKCollator(processor, modality="video"))(records)
    assert set(from_cache) == {"audio_encoder_outputs", "audio_encoder_outputs_mask", "pixel_values_videos",
                               "pixel_values_videos_mask", "labels"}
    for name in ("pixel_values_videos", "pixel_values_videos_mask", "labels"):
        assert torch.equal(from_cache[name], from_features[name])
    train_mode(model)
    torch.testing.assert_close(model(**from_cache).scale_losses, model(**from_features).scale_losses, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="video_collator must read the video alone"):
        EncodedAudioCollator(processor, cache, video_collator=MTSKCollator(processor, modality="audiovisual"))


def test_noisy_copies_hold_the_clip_at_the_drawn_snr_and_each_epoch_picks_one():
    model = tiny_model(modality="audio")
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    records = audio_records()
    noise = NoiseSource(signal(4.0, seed=11)[::-1].copy(), name="reversed tones")
    clean = encode_audio_records(model, processor, records)
    faint = encode_audio_records(model, processor, records, noise=noise, noisy_copies=2, noisy_snrs_db=[60.0])
    loud = encode_audio_records(model, processor, records, noise=noise, noisy_copies=2, noisy_snrs_db=[-10.0])
    for record in records:
        key = record["id"]
        assert faint[key].shape == loud[key].shape == (3, *clean[key].shape[1:])
        torch.testing.assert_close(loud[key][0], clean[key][0], rtol=0, atol=1e-5)  # copy 0 is the clean audio
        faint_change = (faint[key][1:] - clean[key][0]).abs().mean()
        loud_change = (loud[key][1:] - clean[key][0]).abs().mean()
        assert 0 < faint_change < loud_change / 20  # noise at 60 dB below the speech barely moves the outputs
        assert not torch.equal(loud[key][1], loud[key][2])  # each copy its own noise
    again = encode_audio_records(model, processor, records, noise=noise, noisy_copies=2, noisy_snrs_db=[-10.0])
    assert all(torch.equal(again[key], loud[key]) for key in loud)  # seeded
    with pytest.raises(ValueError, match="need a NoiseSource and noisy_snrs_db"):
        encode_audio_records(model, processor, records, noisy_copies=1, noisy_snrs_db=[0.0])

    # Copy c of every frame holds the value c: which copy each clip gets shows in its outputs.
    copies = {f"clip-{index}": torch.arange(3.0)[:, None, None].expand(3, 5, 2).clone() for index in range(8)}
    collator = EncodedAudioCollator(processor, copies, seed=0)
    chosen = []
    for epoch in range(6):
        collator.set_epoch(epoch)
        batch = [{"id": key, "text": "one"} for key in copies]
        picked = collator(batch)["audio_encoder_outputs"][:, 0, 0]
        assert torch.equal(collator(batch)["audio_encoder_outputs"][:, 0, 0], picked)  # fixed within an epoch
        chosen.append(picked)
    chosen = torch.stack(chosen)
    assert set(chosen.unique().tolist()) == {0.0, 1.0, 2.0}
    assert not all(torch.equal(row, chosen[0]) for row in chosen)  # drawn anew each epoch
    # A persistent DataLoader worker sees the epoch the main process sets.
    loader = torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=collator, num_workers=1, persistent_workers=True)
    for epoch in (2, 5):
        collator.set_epoch(epoch)
        assert torch.equal(next(iter(loader))["audio_encoder_outputs"][:, 0, 0], chosen[epoch])


def test_a_pretrained_whispers_window_is_cut_to_its_first_seconds(tmp_path):
    torch.manual_seed(0)
    config = WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, decoder_layers=1,
                           decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=1500)
    whisper = WhisperModel(config)
    whisper.save_pretrained(tmp_path / "whisper")
    encoder_config, state = load_audio_encoder(str(tmp_path / "whisper"), window_seconds=4)
    assert encoder_config.max_source_positions == 200
    assert torch.equal(state["embed_positions.weight"], whisper.encoder.embed_positions.weight[:200])
    assert torch.equal(state["conv1.weight"], whisper.encoder.conv1.weight)
    full_config, full_state = load_audio_encoder(str(tmp_path / "whisper"))
    assert full_config.max_source_positions == 1500 and full_state["embed_positions.weight"].shape[0] == 1500
    with pytest.raises(ValueError, match="window_seconds must be 1..30"):
        load_audio_encoder(str(tmp_path / "whisper"), window_seconds=31)
    with pytest.raises(ValueError, match="a random encoder's window is its max_source_positions"):
        load_audio_encoder({"d_model": 16}, window_seconds=4)
    with pytest.raises(ValueError, match="cuts a pretrained audio_encoder's window"):
        ModelArguments(audio_encoder_config={"d_model": 16}, audio_window_seconds=4)


def test_train_caches_a_cut_whisper_with_noisy_copies_for_an_audiovisual_model(workspace, tmp_path, caplog):  # noqa: F811
    torch.manual_seed(0)
    WhisperModel(
        WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, decoder_layers=1,
                      decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=1500)
    ).save_pretrained(tmp_path / "whisper")
    cached = {
        "audio_encoder": str(tmp_path / "whisper"), "audio_encoder_config": None, "audio_window_seconds": 4,
        "cache_audio_encoder_outputs": True, "cached_noisy_copies": 1, "augment": False, "decode_once": True,
        "transcribe_example": False,
    }
    with caplog.at_level(logging.INFO, logger="mtsk_train.encoder_cache"):
        summary = train.main(tiny_arguments(workspace, tmp_path / "run", **cached))
    assert summary["steps"] == 4 and summary["wer"]
    assert "audio encoder outputs of 16 clips (2 copies each)" in caplog.text
    saved = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert saved["audio_config"]["max_source_positions"] == 200 and saved["freeze_audio_encoder"]
    with pytest.raises(ValueError, match="the cache reads every clip once already; drop decode_once"):
        train.main(tiny_arguments(workspace, tmp_path / "audio", **{**cached, "modality": "audio", "video_rates": []}))


def test_noisy_copies_need_the_cache_and_a_noisy_snr():
    assert DataArguments(cache_audio_encoder_outputs=True, cached_noisy_copies=2).cached_noisy_copies == 2
    with pytest.raises(ValueError, match="set cache_audio_encoder_outputs"):
        DataArguments(cached_noisy_copies=1)
    with pytest.raises(ValueError, match="holds no noisy entry"):
        DataArguments(cache_audio_encoder_outputs=True, cached_noisy_copies=1, train_snrs_db=["clean"])
    with pytest.raises(ValueError, match="cached_noisy_copies must be >= 0"):
        DataArguments(cache_audio_encoder_outputs=True, cached_noisy_copies=-1)

