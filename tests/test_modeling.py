"""The Llama-MTSK model on tiny random configs: Matryoshka objective, LoRA routing, batching, checkpointing."""

import pytest
import torch

from llama_mtsk import LlamaMTSKForConditionalGeneration, compress_frames
from llama_mtsk.modeling_llama_mtsk import lora_adapter_names
from mtsk_train.trainer import train_mode

from tiny_models import single_sample, tiny_config, tiny_inputs, tiny_model


MODALITIES = ["audio", "video", "audiovisual"]
STRATEGIES = ["ms", "ss", "mss"]


def transcript_labels(config, texts_length=(5, 3)):
    """Right-padded transcript ids ending with EOS."""
    generator = torch.Generator().manual_seed(7)
    labels = torch.full((len(texts_length), max(texts_length) + 1), -100)
    for row, length in enumerate(texts_length):
        labels[row, :length] = torch.randint(10, 40, (length,), generator=generator)
        labels[row, length] = config.eos_token_id
    return labels


def test_lora_adapters_per_strategy():
    config = tiny_config(lora_strategy="mss")
    assert config.scales == [(4, 2), (4, 5), (16, 2), (16, 5)]
    assert lora_adapter_names(config) == ["global", "a4_v2", "a4_v5", "a16_v2", "a16_v5"]
    assert lora_adapter_names(tiny_config(lora_strategy="ss")) == ["a4_v2", "a4_v5", "a16_v2", "a16_v5"]
    assert lora_adapter_names(tiny_config(lora_strategy="ms")) == ["global"]
    model = tiny_model(lora_strategy="none")
    assert not any("lora" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matryoshka_step_gradients_and_loss(modality, strategy):
    model = train_mode(tiny_model(modality=modality, lora_strategy=strategy).freeze_for_training())
    inputs = tiny_inputs(model.config)
    labels = transcript_labels(model.config)
    output = model(**inputs, labels=labels)

    # The loss is the mean of the per-scale token-mean losses, each equal to a one-scale forward.
    one_at_a_time = torch.stack([model(**inputs, labels=labels, scale=scale).loss for scale in model.config.scales])
    torch.testing.assert_close(output.scale_losses, one_at_a_time, atol=1e-5, rtol=0)
    torch.testing.assert_close(output.loss, one_at_a_time.mean(), atol=1e-5, rtol=0)

    output.loss.backward()
    gradients = {name: parameter.grad for name, parameter in model.named_parameters()}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            assert gradients[name] is None, f"frozen {name} got a gradient"
    projector_prefixes = [f"audio_projectors.{rate}." for rate in model.config.audio_rates or []]
    projector_prefixes += [f"video_projectors.{rate}." for rate in model.config.video_rates or []]
    for prefix in projector_prefixes:
        weights = [grad for name, grad in gradients.items() if name.startswith(prefix)]
        assert weights and all(grad is not None and grad.abs().sum() > 0 for grad in weights), prefix
    for adapter in lora_adapter_names(model.config):
        adapter_grads = [grad for name, grad in gradients.items() if f".{adapter}." in name and "lora_" in name]
        # q_proj and v_proj of 2 layers, A and B each.
        assert len(adapter_grads) == 8
        assert all(grad is not None and grad.abs().sum() > 0 for grad in adapter_grads), adapter
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert all("projectors." in name or "lora_" in name for name in trainable)


def test_scale_specific_adapters_change_only_their_scale():
    model = tiny_model(lora_strategy="ss")
    inputs = tiny_inputs(model.config)
    before = [model(**inputs, scale=scale).logits for scale in model.config.scales]
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".a16_v5." in name and "lora_B" in name:
                parameter.add_(1.0)
    after = [model(**inputs, scale=scale).logits for scale in model.config.scales]
    for scale, logits_before, logits_after in zip(model.config.scales, before, after):
        changed = not torch.allclose(logits_before, logits_after)
        assert changed == (scale == (16, 5)), scale


def test_activation_checkpointing_gives_the_same_gradients():
    model = train_mode(tiny_model(lora_strategy="mss").freeze_for_training())
    inputs = tiny_inputs(model.config)
    labels = transcript_labels(model.config)

    def gradients():
        model.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    reference = gradients()
    model.activation_checkpointing_enable()
    assert any(getattr(module, "gradient_checkpointing", False) for module in model.language_model.modules())
    checkpointed = gradients()
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-5, rtol=0, msg=name)


def test_a_training_step_runs_under_bfloat16_autocast():
    """Mixed precision (the Trainer's `bf16`, autocast): the video trunk's bfloat16 features fill the padded frames'
    zeros in their own dtype, and the loss and every gradient stay finite."""
    model = train_mode(tiny_model(lora_strategy="mss", freeze_video_encoder=False).freeze_for_training())
    inputs = tiny_inputs(model.config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs, labels=transcript_labels(model.config)).loss
    loss.backward()
    assert torch.isfinite(loss)
    gradients = [p.grad for p in model.video_encoder.parameters() if p.grad is not None]
    assert gradients and all(torch.isfinite(gradient).all() for gradient in gradients)


@pytest.mark.parametrize("modality", MODALITIES)
def test_batched_equals_single_samples(modality):
    model = tiny_model(modality=modality, lora_strategy="mss")
    inputs = tiny_inputs(model.config)
    for scale in model.config.scales:
        batched = model.generate(**inputs, scale=scale, max_new_tokens=6, min_new_tokens=6)
        for row in range(2):
            single = model.generate(**single_sample(inputs, row), scale=scale, max_new_tokens=6, min_new_tokens=6)
            assert torch.equal(batched[row], single[0]), (scale, row)
    # The greedy outputs are not degenerate: rows and scales disagree somewhere.
    outputs = [model.generate(**inputs, scale=scale, max_new_tokens=6) for scale in model.config.scales]
    assert len({tuple(output.flatten().tolist()) for output in outputs}) > 1


def test_batched_prefill_logits_equal_single_samples():
    model = tiny_model(lora_strategy="mss")
    inputs = tiny_inputs(model.config)
    scale = (4, 5)
    embeds, mask, _ = model.build_inputs_embeds(
        **inputs, scale_index=torch.tensor([1, 1]), padding_side="left"
    )
    batched = model(inputs_embeds=embeds, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), scale=scale)
    for row in range(2):
        single = model(**single_sample(inputs, row), scale=scale)
        torch.testing.assert_close(batched.logits[row, -1], single.logits[0, -1], atol=1e-5, rtol=0)


def test_beam_search_batched_equals_single():
    model = tiny_model(modality="audiovisual", lora_strategy="mss")
    inputs = tiny_inputs(model.config)
    batched = model.generate(**inputs, scale=(16, 2), num_beams=3, max_new_tokens=5, min_new_tokens=5)
    for row in range(2):
        single = model.generate(**single_sample(inputs, row), scale=(16, 2), num_beams=3, max_new_tokens=5, min_new_tokens=5)
        assert torch.equal(batched[row], single[0])


def test_mixed_scale_batch_equals_each_row_at_its_scale():
    model = tiny_model(lora_strategy="mss")
    inputs = tiny_inputs(model.config)
    row_scales = [(4, 2), (16, 5)]
    mixed = model.generate(**inputs, scale=row_scales, max_new_tokens=6, min_new_tokens=6)
    mixed_logits = model(**inputs, scale=row_scales).logits
    for row, scale in enumerate(row_scales):
        own = model.generate(**inputs, scale=scale, max_new_tokens=6, min_new_tokens=6)
        assert torch.equal(mixed[row], own[row])
        single = model(**single_sample(inputs, row), scale=scale).logits
        length = single.shape[1]
        torch.testing.assert_close(mixed_logits[row, :length], single[0], atol=1e-5, rtol=0)


def test_sampling_and_streamer_work():
    from transformers import TextStreamer

    from tiny_models import tiny_tokenizer

    model = tiny_model(modality="audio", lora_strategy="ms")
    inputs = tiny_inputs(model.config)
    torch.manual_seed(0)
    sampled = model.generate(**inputs, scale=4, do_sample=True, top_k=5, max_new_tokens=4, min_new_tokens=4)
    assert sampled.shape == (2, 4)

    class Collect(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            self.collected = getattr(self, "collected", "") + text

    streamer = Collect(tiny_tokenizer())
    streamed = model.generate(**single_sample(inputs, 0), scale=4, streamer=streamer, max_new_tokens=4, min_new_tokens=4)
    assert streamer.collected.split() == tiny_tokenizer().decode(streamed[0]).split()


def test_compression_equals_hand_computation():
    features = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
    lengths = torch.tensor([7, 2])
    pooled, counts = compress_frames(features, lengths, rate=3, method="avg_pool")
    assert counts.tolist() == [2, 1]
    torch.testing.assert_close(pooled[0, 0], features[0, 0:3].mean(0))
    torch.testing.assert_close(pooled[0, 1], features[0, 3:6].mean(0))
    # A clip shorter than one window gives one token: the mean of its real frames only.
    torch.testing.assert_close(pooled[1, 0], features[1, 0:2].mean(0))

    stacked, counts = compress_frames(features, lengths, rate=3, method="stack")
    assert stacked.shape == (2, 2, 9) and counts.tolist() == [2, 1]
    torch.testing.assert_close(stacked[0, 1], features[0, 3:6].reshape(-1))
    torch.testing.assert_close(stacked[1, 0], torch.cat([features[1, 0], features[1, 1], torch.zeros(3)]))


def test_llm_tokens_follow_the_rates():
    # A 30-second Whisper window, as in the real model: 10 s of audio-visual input.
    config_kwargs = dict(lora_strategy="ms")
    model = tiny_model(**config_kwargs)
    model.config.audio_config.max_source_positions = 1500
    model = LlamaMTSKForConditionalGeneration(model.config).eval()
    window = 3000
    inputs = {
        "input_features": torch.randn(1, 8, window),
        "input_features_mask": torch.cat([torch.ones(1, 1000), torch.zeros(1, window - 1000)], dim=1).long(),
        "pixel_values_videos": torch.randn(1, 250, 1, 16, 16),
    }
    prompt = len(model.config.prompt_token_ids)
    counts = {}
    for index, scale in enumerate(model.config.scales):
        embeds, _, _ = model.build_inputs_embeds(**inputs, scale_index=torch.tensor([index]))
        counts[scale] = embeds.shape[1] - (1 + 4 + prompt)  # BOS, four delimiters, prompt
        # The count that needs no encoder agrees with the sequence actually built.
        assert model.count_llm_input_tokens(scale, **inputs).tolist() == [embeds.shape[1]]
    assert counts == {(4, 2): 125 + 125, (4, 5): 125 + 50, (16, 2): 31 + 125, (16, 5): 31 + 50}


def test_labels_cover_only_the_transcript():
    model = tiny_model(modality="audio", lora_strategy="ms")
    inputs = tiny_inputs(model.config)
    labels = transcript_labels(model.config)
    _, mask, sequence_labels = model.build_inputs_embeds(**inputs, labels=labels, scale_index=torch.tensor([0, 0]))
    for row in range(2):
        kept = sequence_labels[row][sequence_labels[row] != -100]
        assert torch.equal(kept, labels[row][labels[row] != -100])
        # The transcript (ending with EOS) is the last real stretch of the row.
        real = int(mask[row].sum())
        assert sequence_labels[row, real - 1] == model.config.eos_token_id


def test_errors_name_the_problem():
    model = tiny_model(lora_strategy="ms")
    inputs = tiny_inputs(model.config)
    with pytest.raises(ValueError, match=r"scale \(8, 2\) was not trained.*\(4, 2\), \(4, 5\), \(16, 2\), \(16, 5\)"):
        model.generate(**inputs, scale=(8, 2))
    with pytest.raises(ValueError, match="needs `pixel_values_videos`"):
        model.generate(input_features=inputs["input_features"], scale=(4, 2))
    with pytest.raises(ValueError, match="batch size"):
        model(
            input_features=inputs["input_features"],
            pixel_values_videos=inputs["pixel_values_videos"][:1],
        )
    with pytest.raises(ValueError, match="input_features must be"):
        model.generate(input_features=inputs["input_features"][:, :, :50], pixel_values_videos=inputs["pixel_values_videos"])
    with pytest.raises(ValueError, match="at least one frame"):
        model.generate(
            **{**inputs, "pixel_values_videos_mask": torch.zeros_like(inputs["pixel_values_videos_mask"])}, scale=(4, 2)
        )
    video_model = tiny_model(modality="video", lora_strategy="ms")
    with pytest.raises(ValueError, match="video model has no audio encoder"):
        video_model.generate(input_features=inputs["input_features"], pixel_values_videos=inputs["pixel_values_videos"])
    with pytest.raises(ValueError, match="needs `pixel_values_videos`"):
        video_model.generate(input_features=inputs["input_features"])


def test_text_path_is_the_llm_with_the_scale_adapters():
    model = tiny_model(modality="audio", lora_strategy="none")
    ids = torch.tensor([[1, 12, 13, 14]])
    torch.testing.assert_close(model(input_ids=ids).logits, model.language_model(input_ids=ids).logits)


def test_fresh_whisper_encoder_gets_its_sinusoidal_positions():
    # transformers' init pass skips modules without parameters of their own in custom-code models, which used to
    # leave a new Whisper encoder with N(0, 0.02) positions instead of sinusoids.
    from transformers.models.whisper.modeling_whisper import sinusoids

    model = tiny_model(modality="audio", lora_strategy="ms")
    positions = model.audio_encoder.embed_positions.weight
    torch.testing.assert_close(positions, sinusoids(*positions.shape))


def test_audio_ctc_aid_adds_a_finite_loss_that_trains_the_projectors():
    model = train_mode(tiny_model(modality="audio", lora_strategy="mss", audio_rates=[4, 16]).freeze_for_training())
    inputs = tiny_inputs(model.config)
    labels = transcript_labels(model.config)
    plain = model(**inputs, labels=labels)
    assert torch.equal(model(**inputs, labels=labels, audio_ctc_weight=0.0).loss, plain.loss)
    model.zero_grad()
    aided = model(**inputs, labels=labels, audio_ctc_weight=0.5)
    assert torch.equal(aided.scale_losses, plain.scale_losses)
    ctc = (aided.loss - plain.loss) / 0.5
    assert torch.isfinite(ctc) and ctc > 0
    (aided.loss - plain.loss).backward()
    # Rate 4 gives every row enough tokens for CTC; its projector learns from it, the frozen LLM does not.
    gradients = [parameter.grad for parameter in model.audio_projectors["4"].parameters()]
    assert any(gradient is not None and gradient.abs().sum() > 0 for gradient in gradients)
    assert model.get_input_embeddings().weight.grad is None
