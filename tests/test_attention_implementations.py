"""The AV-HuBERT encoder is transformers' HuBERT encoder: `attn_implementation` reaches it like Whisper and the LLM,
eager and SDPA agree on it and on the packed Matryoshka training pass, and weights saved under the encoder's former
(fairseq) names load into the HuBERT modules exactly."""

import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llama_mtsk import AVHubertVideoEncoder, LlamaMTSKForConditionalGeneration
from mtsk_train.trainer import train_mode

from tiny_models import single_sample, tiny_config, tiny_inputs, tiny_model


def transcript_labels(eos_token_id: int) -> torch.Tensor:
    """Two right-padded transcripts of 5 and 3 tokens, each ending with EOS."""
    labels = torch.full((2, 6), -100)
    labels[0, :5] = torch.tensor([12, 20, 31, 15, 27])
    labels[1, :3] = torch.tensor([33, 18, 24])
    labels[0, 5] = labels[1, 3] = eos_token_id
    return labels


def attention_implementations(model: LlamaMTSKForConditionalGeneration) -> dict[str, str]:
    """What each encoder's attention layers and the LLM read when they pick their attention function."""
    return {
        "video": {layer.attention.config._attn_implementation for layer in model.video_encoder.encoder.layers}.pop(),
        "audio": model.audio_encoder.config._attn_implementation,
        "text": model.language_model.config._attn_implementation,
    }


def former_name(key: str) -> str:
    """The key a Llama-MTSK checkpoint saved before the encoder used transformers' HuBERT modules has for `key`."""
    for ours, former in [
        ("pos_conv_embed.conv.parametrizations.weight.original0", "pos_conv.0.weight_g"),
        ("pos_conv_embed.conv.parametrizations.weight.original1", "pos_conv.0.weight_v"),
        ("pos_conv_embed.conv.bias", "pos_conv.0.bias"),
        (".attention.", ".self_attn."),
        (".feed_forward.intermediate_dense.", ".fc1."),
        (".feed_forward.output_dense.", ".fc2."),
    ]:
        key = key.replace(ours, former)
    return re.sub(r"(layers\.\d+)\.layer_norm\.", r"\1.self_attn_layer_norm.", key)


@pytest.mark.parametrize("layer_norm_first", [True, False], ids=["pre-LN", "post-LN"])
def test_video_encoder_eager_and_sdpa_agree_with_padding(layer_norm_first):
    config = tiny_config(modality="video").video_config
    config.layer_norm_first = layer_norm_first
    torch.manual_seed(0)
    encoder = AVHubertVideoEncoder(config).eval()
    inputs = tiny_inputs(tiny_config(modality="video"), video_frames=[40, 25])
    real = inputs["pixel_values_videos_mask"].bool()
    outputs = {}
    for implementation in ("eager", "sdpa"):
        encoder.set_attn_implementation(implementation)
        with torch.no_grad():
            outputs[implementation] = encoder(**inputs).last_hidden_state
            # The padded row gives what its clip alone gives.
            alone = encoder(**single_sample(inputs, 1)).last_hidden_state
        torch.testing.assert_close(outputs[implementation][1, :25], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs["eager"][real], outputs["sdpa"][real], atol=1e-5, rtol=0)


def test_packed_matryoshka_training_pass_eager_and_sdpa_agree():
    model = train_mode(tiny_model(modality="audiovisual", lora_strategy="mss").freeze_for_training())
    inputs = tiny_inputs(model.config)
    labels = transcript_labels(model.config.eos_token_id)
    results = {}
    for implementation in ("sdpa", "eager"):
        model.set_attn_implementation(implementation)
        assert set(attention_implementations(model).values()) == {implementation}
        model.zero_grad()
        output = model(**inputs, labels=labels)
        output.loss.backward()
        gradients = {
            name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None
        }
        results[implementation] = output.loss.detach(), output.scale_losses.detach(), gradients
    (sdpa_loss, sdpa_scales, sdpa_grads), (eager_loss, eager_scales, eager_grads) = results["sdpa"], results["eager"]
    assert len(sdpa_scales) == len(model.config.scales)
    torch.testing.assert_close(eager_scales, sdpa_scales, atol=1e-5, rtol=0)
    torch.testing.assert_close(eager_loss, sdpa_loss, atol=1e-5, rtol=0)
    assert eager_grads.keys() == sdpa_grads.keys() and sdpa_grads
    for name in sdpa_grads:
        torch.testing.assert_close(eager_grads[name], sdpa_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_attn_implementation_reaches_the_video_encoder(tmp_path, implementation):
    tiny_model(modality="audiovisual").save_pretrained(tmp_path)
    model = LlamaMTSKForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=implementation)
    assert set(attention_implementations(model).values()) == {implementation}
    model.set_attn_implementation({"video_config": "eager", "audio_config": "sdpa", "text_config": "sdpa"})
    assert attention_implementations(model) == {"video": "eager", "audio": "sdpa", "text": "sdpa"}


def test_former_key_names_load_into_the_hubert_modules_exactly(tmp_path):
    """A checkpoint with the encoder's former names (as `tests/fixtures/checkpoint_5a62781` has) loads to the same
    weights and outputs; saving writes the current names, and `save_original_format=True` the former ones again."""
    model = tiny_model(modality="video")
    state = model.state_dict()
    model.save_pretrained(tmp_path / "current")
    current = load_file(tmp_path / "current" / "model.safetensors")
    assert "video_encoder.encoder.pos_conv_embed.conv.parametrizations.weight.original0" in current
    former = {former_name(key): tensor for key, tensor in current.items()}
    assert len(former) == len(current) and "video_encoder.encoder.layers.0.self_attn_layer_norm.weight" in former
    assert "video_encoder.encoder.layer_norm.weight" in former  # the encoder's final LayerNorm keeps its name
    (tmp_path / "former").mkdir()
    save_file(former, tmp_path / "former" / "model.safetensors", {"format": "pt"})
    shutil.copyfile(tmp_path / "current" / "config.json", tmp_path / "former" / "config.json")

    loaded, info = LlamaMTSKForConditionalGeneration.from_pretrained(tmp_path / "former", output_loading_info=True)
    assert not any(info.values()), info
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(loaded.state_dict()[key], tensor) for key, tensor in state.items())
    inputs = tiny_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**inputs).logits, model(**inputs).logits)

    loaded.save_pretrained(tmp_path / "resaved")
    assert set(load_file(tmp_path / "resaved" / "model.safetensors")) == set(current)
    loaded.save_pretrained(tmp_path / "original_format", save_original_format=True)
    assert set(load_file(tmp_path / "original_format" / "model.safetensors")) == set(former)

    # The encoder alone: the same renaming, with no `video_encoder.` prefix.
    encoder_state = {
        key.removeprefix("video_encoder."): value for key, value in former.items() if key.startswith("video_encoder.")
    }
    (tmp_path / "encoder").mkdir()
    save_file(encoder_state, tmp_path / "encoder" / "model.safetensors", {"format": "pt"})
    model.config.video_config.save_pretrained(tmp_path / "encoder")
    encoder, info = AVHubertVideoEncoder.from_pretrained(tmp_path / "encoder", output_loading_info=True)
    assert not any(info.values()), info
    loaded_state = encoder.state_dict()
    assert all(torch.equal(loaded_state[key], tensor) for key, tensor in model.video_encoder.state_dict().items())
