"""The CTC warm-up of the audio projectors: the loss is the training forward's auxiliary CTC term, and the warm-up
trains the audio projectors and nothing else."""

import numpy as np
import pytest
import torch

from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_data.collator import MTSKCollator
from mtsk_train.ctc_warmup import warm_up_audio_projectors
from mtsk_train.encoder_cache import EncodedAudioCollator, encode_audio_records

from media_samples import signal
from tiny_models import tiny_model, tiny_tokenizer


TEXTS = ["one two three", "four five", "six", "seven eight nine", "two four six", "three five seven"]


def setup(seed: int = 0):
    torch.manual_seed(seed)
    model = tiny_model(modality="audio", lora_strategy="mss", audio_rates=[4, 8])
    with torch.no_grad():  # the tiny LLM's embeddings have norm 0.1, a real LLM's about 1: every CTC score near 0
        model.get_input_embeddings().weight.mul_(10)
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    records = [
        {"id": f"clip-{index}", "text": text, "audio": signal(0.8 + 0.2 * index, seed=index).astype(np.float32)}
        for index, text in enumerate(TEXTS)
    ]
    return model, processor, records


def test_audio_ctc_loss_is_the_auxiliary_term_of_the_training_forward():
    model, processor, records = setup()
    batch = EncodedAudioCollator(processor, encode_audio_records(model, processor, records))(records)
    model.train()
    with_ctc = model(**batch, audio_ctc_weight=0.7).loss
    without = model(**batch).loss
    torch.testing.assert_close(model.audio_ctc_loss(**batch) * 0.7, with_ctc - without, rtol=0, atol=1e-5)
    features = MTSKCollator(processor, modality="audio", training=False)(records)
    torch.testing.assert_close(model.audio_ctc_loss(**features), model.audio_ctc_loss(**batch), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one of them"):
        model.audio_ctc_loss(batch["labels"])
    video_model = tiny_model(modality="video")
    with pytest.raises(ValueError, match="modality is 'video'"):
        video_model.audio_ctc_loss(batch["labels"], audio_encoder_outputs=batch["audio_encoder_outputs"])


def test_warm_up_trains_the_audio_projectors_alone_and_lowers_the_loss():
    model, processor, records = setup()
    cache = encode_audio_records(model, processor, records)
    collator = EncodedAudioCollator(processor, cache, mask_window=4)
    whole_batch = EncodedAudioCollator(processor, cache)(records)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    with torch.no_grad():
        loss_before = model.audio_ctc_loss(**whole_batch).item()
    losses = warm_up_audio_projectors(model, collator, records, steps=80, batch_size=3, learning_rate=3e-3)
    assert len(losses) == 80
    with torch.no_grad():
        assert model.audio_ctc_loss(**whole_batch).item() < 0.7 * loss_before
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == name.startswith("audio_projectors."), name

    again, processor, records = setup()
    collator = EncodedAudioCollator(processor, encode_audio_records(again, processor, records), mask_window=4)
    assert warm_up_audio_projectors(again, collator, records, steps=80, batch_size=3, learning_rate=3e-3) == losses


def test_warm_up_refuses_what_it_cannot_do():
    model, processor, records = setup()
    collator = EncodedAudioCollator(processor, encode_audio_records(model, processor, records))
    with pytest.raises(ValueError, match="steps must be positive"):
        warm_up_audio_projectors(model, collator, records, steps=0)
    with pytest.raises(ValueError, match=r"batch_size must be 1..6 \(the clips\), got 7"):
        warm_up_audio_projectors(model, collator, records, steps=1, batch_size=7)
    model.audio_projectors.requires_grad_(False)
    with pytest.raises(ValueError, match="audio projectors are frozen"):
        warm_up_audio_projectors(model, collator, records, steps=1, batch_size=2)
