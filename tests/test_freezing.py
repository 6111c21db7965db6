"""Freezing is training policy: a loaded model is a plain transformers model (every parameter trainable, `train()`
not overridden), and the training code freezes it from its config and keeps the frozen encoders in eval mode."""

import torch
from transformers import TrainingArguments

from llama_mtsk import LlamaMTSKForConditionalGeneration
from mtsk_train.trainer import MatryoshkaTrainer

from tiny_models import tiny_config, tiny_inputs, tiny_model


def trainable_prefixes(model: LlamaMTSKForConditionalGeneration) -> set[str]:
    """The top-level modules with a trainable parameter, with `lora` for the LLM's LoRA adapters."""
    prefixes = set()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            prefixes.add("lora" if ".lora_A." in name or ".lora_B." in name else name.split(".")[0])
    return prefixes


def test_built_and_loaded_models_are_plain_transformers_models(tmp_path):
    built = LlamaMTSKForConditionalGeneration(tiny_config())
    # Nothing frozen but what transformers' Whisper encoder freezes when built: its sinusoidal positions.
    frozen = {name for name, parameter in built.named_parameters() if not parameter.requires_grad}
    assert frozen == {"audio_encoder.embed_positions.weight"}
    tiny_model().freeze_for_training().save_pretrained(tmp_path)
    loaded = LlamaMTSKForConditionalGeneration.from_pretrained(tmp_path)
    # Every loaded parameter is trainable, as after `WhisperModel.from_pretrained`.
    assert all(parameter.requires_grad for parameter in loaded.parameters())
    for model in (built, loaded):
        model.train()
        assert all(module.training for module in model.modules())
    assert not any(module.training for module in loaded.eval().modules())


def test_freeze_for_training_follows_the_config():
    model = tiny_model(freeze_video_encoder=False).freeze_for_training()
    assert trainable_prefixes(model) == {"audio_projectors", "video_projectors", "video_encoder", "lora"}
    assert all(parameter.requires_grad for parameter in model.video_encoder.parameters())

    model = tiny_model(modality="audio", freeze_audio_encoder=False, freeze_language_model=False)
    model.freeze_for_training()
    assert trainable_prefixes(model) == {"audio_projectors", "audio_encoder", "language_model", "lora"}
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_training_steps_run_frozen_encoders_in_eval_mode(tmp_path):
    model = tiny_model(freeze_video_encoder=False).freeze_for_training()
    modes = {}
    watched = {"audio": model.audio_encoder, "video": model.video_encoder, "llm": model.language_model.get_decoder()}
    for name, module in watched.items():
        module.register_forward_pre_hook(lambda module, _, name=name: modes.update({name: module.training}))
    arguments = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = MatryoshkaTrainer(model=model, args=arguments)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test skips
    labels = torch.tensor([[20, 21, 22, model.config.eos_token_id], [23, 24, model.config.eos_token_id, -100]])
    loss = trainer.training_step(model, {**tiny_inputs(model.config), "labels": labels})
    assert torch.isfinite(loss)
    assert modes == {"audio": False, "video": True, "llm": True}
    assert model.audio_projectors["4"].linear_1.weight.grad is not None
    assert model.video_encoder.post_extract_proj.weight.grad is not None
    assert model.audio_encoder.conv1.weight.grad is None
