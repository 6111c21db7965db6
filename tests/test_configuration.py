"""LlamaMTSKConfig validation, scales, and parameter counts at the paper's real shapes (built on the meta device)."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, WhisperConfig

from llama_mtsk import AVHubertConfig, LlamaMTSKConfig, LlamaMTSKForConditionalGeneration

from tiny_models import tiny_config


LLAMA_SHAPES = {  # hidden, layers, heads, kv heads, intermediate (public configs of the Llama 3.x models)
    "llama-3.2-1b": (2048, 16, 32, 8, 8192),
    "llama-3.2-3b": (3072, 28, 24, 8, 8192),
    "llama-3.1-8b": (4096, 32, 32, 8, 14336),
}


def real_config(llm: str, lora_r: int, **overrides) -> LlamaMTSKConfig:
    hidden, layers, heads, kv_heads, intermediate = LLAMA_SHAPES[llm]
    text = LlamaConfig(
        vocab_size=128256 + 5,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
    )
    whisper_medium = WhisperConfig(d_model=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096)
    settings = dict(
        text_config=text, audio_config=whisper_medium, video_config=AVHubertConfig(), lora_r=lora_r, lora_alpha=lora_r / 8
    )
    settings.update(overrides)
    return LlamaMTSKConfig(**settings)


def lora_parameters(model) -> int:
    return sum(parameter.numel() for name, parameter in model.named_parameters() if "lora_" in name)


@pytest.mark.parametrize(
    "llm, lora_r, per_adapter",
    [
        ("llama-3.2-1b", 64, 6_815_744),  # reduction 32: the authors' Llama-MTSK 1B setting (6.82 M)
        ("llama-3.2-3b", 96, 27_525_120),  # reduction 32: 27.5 M, the "active params" MoME quotes for Table 1
        ("llama-3.1-8b", 64, 27_262_976),  # reduction 64: Llama-AVSR's 8B setting (27.26 M)
    ],
)
def test_lora_parameter_counts_match_the_authors(llm, lora_r, per_adapter):
    for strategy, adapters in [("ms", 1), ("ss", 4), ("mss", 5)]:
        with torch.device("meta"):
            model = LlamaMTSKForConditionalGeneration(real_config(llm, lora_r, lora_strategy=strategy))
        assert lora_parameters(model) == adapters * per_adapter, strategy


def test_trainable_parameters_match_the_released_llama_avsr_models():
    # Llama-AVSR model zoo (Whisper-medium, AV-HuBERT Large, Llama 3.1-8B, stacking, no projector LayerNorm):
    # ASR rate 3: 42 M trainable; AVSR audio rate 4, video rate 2: 57 M.
    common = dict(compression="stack", projector_layer_norm=False, lora_strategy="ms")
    with torch.device("meta"):
        asr = LlamaMTSKForConditionalGeneration(real_config("llama-3.1-8b", 64, modality="audio", audio_rates=[3], **common))
        avsr = LlamaMTSKForConditionalGeneration(
            real_config("llama-3.1-8b", 64, modality="audiovisual", audio_rates=[4], video_rates=[2], **common)
        )
    for model in (asr, avsr):
        model.freeze_for_training()
    trainable = lambda model: sum(p.numel() for p in model.parameters() if p.requires_grad)  # noqa: E731
    assert round(trainable(asr) / 1e6) == 42
    assert round(trainable(avsr) / 1e6) == 57


def test_scales_and_defaults():
    assert tiny_config(modality="audio").scales == [(4, None), (8, None), (12, None), (16, None), (20, None)]
    assert tiny_config(modality="video").scales == [(None, 1), (None, 2), (None, 3), (None, 4), (None, 5)]
    config = tiny_config(modality="audiovisual", audio_rates=[16, 4], video_rates=[5, 2])
    assert config.scales == [(4, 2), (4, 5), (16, 2), (16, 5)]
    assert config.normalize_scale([16, 5]) == (16, 5)
    assert tiny_config(modality="audio").normalize_scale(8) == (8, None)
    assert LlamaMTSKConfig(text_config=LlamaConfig(), audio_config=WhisperConfig(), modality="audio").prompt == (
        "Transcribe speech to text."
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"audio_rates": [0, 4]}, "audio_rates must hold integers >= 1"),
        ({"audio_rates": [4, 4]}, "audio_rates must not repeat"),
        ({"video_rates": []}, "video_rates must list at least one rate"),
        ({"lora_strategy": "lora"}, "lora_strategy must be one of"),
        ({"compression": "conv"}, "compression must be one of"),
        ({"modality": "text"}, "modality must be one of"),
        ({"lora_init": "xavier"}, "lora_init must be one of"),
        ({"audio_config": None}, "audio_config is required for modality 'audiovisual'"),
        ({"video_config": None}, "video_config is required for modality 'audiovisual'"),
    ],
)
def test_invalid_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_rates_for_an_unused_modality_are_refused():
    with pytest.raises(ValueError, match="video_rates must be empty for modality 'audio'"):
        LlamaMTSKConfig(text_config=LlamaConfig(), audio_config=WhisperConfig(), modality="audio", video_rates=[2])


def test_untrained_scales_are_refused_with_the_trained_list():
    config = tiny_config()
    with pytest.raises(ValueError, match=r"trained scales .*\[\(4, 2\), \(4, 5\), \(16, 2\), \(16, 5\)\]"):
        config.normalize_scale((4, 3))
    with pytest.raises(ValueError, match="audiovisual model needs a scale"):
        config.normalize_scale(4)


def test_scale_rates_are_integers_never_rounded():
    config, audio = tiny_config(), tiny_config(modality="audio")
    assert config.normalize_scale((np.int64(16), np.int32(5))) == (16, 5)
    assert type(config.normalize_scale((np.int64(16), np.int32(5)))[0]) is int
    assert audio.normalize_scale(np.int16(8)) == (8, None) and audio.normalize_scale([np.uint8(8), None]) == (8, None)
    refusals = [((4.9, 2.9), "float 4.9"), (("4", "2"), "str '4'"), ((True, 2), "bool True"), ((4, 2.0), "float 2.0")]
    for scale, refused in refusals:
        with pytest.raises(ValueError, match=rf"a rate must be an integer \(or None .*\), got {refused}"):
            config.normalize_scale(scale)
    with pytest.raises(ValueError, match="an int or an .* pair, got float 8.0"):
        audio.normalize_scale(8.0)
    with pytest.raises(ValueError, match="an int or an .* pair, got bool True"):
        audio.normalize_scale(True)
    with pytest.raises(ValueError, match=r"scale \[\(4, 2\), \(16, 5\)\] lists several scales.*call once per scale"):
        config.normalize_scale([(4, 2), (16, 5)])


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(modality="video", lora_strategy="ss", video_rates=[1, 3])
    config.save_pretrained(tmp_path)
    loaded = LlamaMTSKConfig.from_pretrained(tmp_path)
    assert loaded.scales == config.scales and loaded.video_config.resnet_channels == [4, 4, 8, 8]
    assert loaded.audio_config is None and loaded.prompt_token_ids == config.prompt_token_ids


def test_llm_flops_follow_the_papers_table():
    # Table 4 of the paper (Llama 3.1-8B, untied LM head): 757 tokens -> 11.40 TFLOPs, 257 -> 3.87, 88 -> 1.33.
    with torch.device("meta"):
        model = LlamaMTSKForConditionalGeneration(real_config("llama-3.1-8b", 64, lora_strategy="mss"))
    per_token = model.llm_flops_per_token()
    for tokens, tflops in [(757, 11.40), (257, 3.87), (88, 1.33)]:
        assert per_token * tokens / 1e12 == pytest.approx(tflops, rel=0.01)
