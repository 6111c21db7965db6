"""A frozen audio encoder's outputs computed once give the model exactly what `input_features` give it."""

import numpy as np
import pytest
import torch

from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_train.encoder_cache import EncodedAudioCollator, check_cacheable, encode_audio_records
from mtsk_data.collator import MTSKCollator
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
    model.train()
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
