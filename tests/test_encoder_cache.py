"""A frozen audio encoder's outputs computed once give the model exactly what `input_features` give it."""

import numpy as np
import pytest
import torch

from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_data.collator import MTSKCollator
from mtsk_train.encoder_cache import EncodedAudioCollator, check_cacheable, encode_audio_records
from mtsk_train.trainer import train_mode

from media_samples import signal
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
    assert [cache[record["id"]].shape[0] for record in records] == [65, 25, 95, 50]  # 50 Hz, at least 25 frames

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
    video_model = tiny_model(modality="audiovisual")
    with pytest.raises(ValueError, match="modality is 'audiovisual'"):
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
    cache = {"long": torch.randn(250, 8), "short": torch.randn(30, 8)}
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
    assert torch.equal(first["audio_encoder_outputs"][0][unmasked], cache["long"][unmasked])
    assert all(torch.equal(cache[key], original[key]) for key in cache)
    assert torch.equal(collator(records)["audio_encoder_outputs"], first["audio_encoder_outputs"])  # same epoch
    collator.set_epoch(1)
    assert not torch.equal(masked_frames(collator(records))[0], long_masked)
    plain = EncodedAudioCollator(processor, cache)(records)
    assert torch.equal(plain["audio_encoder_outputs"][0], cache["long"])
    with pytest.raises(ValueError, match="mask_window must be >= 0"):
        EncodedAudioCollator(processor, cache, mask_window=-1)
