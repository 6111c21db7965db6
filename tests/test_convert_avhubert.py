"""fairseq AV-HuBERT -> Llama-MTSK video encoder: key inventory, architecture from the checkpoint's config, numerics
against an independent reference, the command line and the Hub upload."""

import re
import sys

import pytest
import torch

from llama_mtsk import AVHubertVideoEncoder
from mtsk_convert import avhubert
from mtsk_convert.avhubert import config_from_fairseq, convert_checkpoint, encoder_key, map_weights, split_checkpoint

from convert_fixtures import (
    LARGE,
    TINY,
    avhubert_state_dict,
    fairseq_checkpoint,
    fairseq_config,
    reference_video_features,
    save_fairseq_checkpoint,
)


LARGE_DROPPED = {
    "feature_extractor_audio.proj.weight",
    "feature_extractor_audio.proj.bias",
    "mask_emb",
    "label_embs_concat",
    "final_proj.weight",
    "final_proj.bias",
}


BASE = {**LARGE, "hidden": 768, "layers": 12, "heads": 12, "ffn": 3072}


@pytest.mark.parametrize(
    "size, total, kept, values",
    [(LARGE, 538, 532, 324_525_076), (BASE, 346, 340, 102_549_268)],
    ids=["large", "base"],
)
def test_key_inventory_on_meta_device(size, total, kept, values):
    """Every tensor of an AV-HuBERT Large / Base checkpoint (real key names, real shapes) is kept or dropped on purpose,
    and the architecture is the one its config declares."""
    state = avhubert_state_dict(**size, device="meta")
    checkpoint = fairseq_checkpoint(state, fairseq_config(**size))
    source, dropped, model_cfg, task_cfg, kind = split_checkpoint(checkpoint)
    config = config_from_fairseq(model_cfg, task_cfg, source)
    weights, encoder_dropped = map_weights(source, config)

    assert kind == "pre-training" and not dropped
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        size["hidden"], size["layers"], size["heads"], size["ffn"],
    )
    assert config.resnet_channels == [64, 128, 256, 512] and config.frontend_channels == 64
    assert len(state) == total
    assert len(weights) == kept and set(encoder_dropped) == LARGE_DROPPED
    assert set(weights) | set(encoder_dropped) == {encoder_key(key) for key in state}
    assert all(weights[encoder_key(key)].shape == state[key].shape for key in set(state) - set(encoder_dropped))
    assert sum(tensor.numel() for tensor in weights.values()) == values
    # Every group of fairseq keys the issue names is present and kept.
    groups = {re.sub(r"\.\d+(?=\.)", ".N", key) for key in set(state) - set(encoder_dropped)}
    for expected in [
        "feature_extractor_video.resnet.frontend3D.N.weight",
        "feature_extractor_video.resnet.trunk.layer4.N.downsample.N.running_var",
        "feature_extractor_video.proj.weight",
        "layer_norm.weight",
        "post_extract_proj.weight",
        "encoder.pos_conv.N.weight_g",
        "encoder.pos_conv.N.weight_v",
        "encoder.layers.N.self_attn.out_proj.weight",
        "encoder.layers.N.self_attn_layer_norm.bias",
        "encoder.layers.N.fc1.weight",
        "encoder.layers.N.final_layer_norm.weight",
        "encoder.layer_norm.bias",
    ]:
        assert expected in groups, expected


@pytest.mark.parametrize("as_dictconfig", [False, True], ids=["plain-cfg", "dictconfig-cfg"])
def test_convert_matches_independent_reference(tmp_path, as_dictconfig):
    state = avhubert_state_dict(**TINY, seed=1)
    cfg = fairseq_config(**TINY, image_crop_size=16)
    path = tmp_path / "checkpoint.pt"
    save_fairseq_checkpoint(fairseq_checkpoint(state, cfg, as_dictconfig=as_dictconfig), path)
    output_dir = tmp_path / "encoder"

    avhubert.main([str(path), str(output_dir)])
    assert "omegaconf" not in sys.modules and "fairseq" not in sys.modules

    encoder, info = AVHubertVideoEncoder.from_pretrained(output_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert set(encoder.state_dict()) == {encoder_key(key) for key in set(state) - LARGE_DROPPED}
    assert encoder.config.image_size == 16 and encoder.config.num_attention_heads == TINY["heads"]

    video = torch.randn(2, 12, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        features = encoder.eval()(video).last_hidden_state
        expected = reference_video_features(state, video, heads=TINY["heads"])
    assert features.shape == (2, 12, TINY["hidden"])
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "variant",
    [dict(layer_norm_first=False, heads=2), dict(relu_type="relu", heads=8)],
    ids=["post-LN-2-heads", "relu-8-heads"],
)
def test_architecture_comes_from_the_checkpoint_config(tmp_path, variant):
    settings = {**TINY, **variant}
    state = avhubert_state_dict(**settings, seed=2)
    path = tmp_path / "checkpoint.pt"
    save_fairseq_checkpoint(fairseq_checkpoint(state, fairseq_config(**settings, image_crop_size=16)), path)

    config, weights = convert_checkpoint(path)
    assert config.num_attention_heads == settings["heads"]
    assert config.layer_norm_first == settings.get("layer_norm_first", True)
    assert config.resnet_relu_type == settings.get("relu_type", "prelu")
    encoder = AVHubertVideoEncoder(config).eval()
    encoder.load_state_dict(weights, strict=True)
    video = torch.randn(1, 9, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(video).last_hidden_state,
            reference_video_features(state, video, heads=settings["heads"], layer_norm_first=config.layer_norm_first),
            atol=1e-5,
            rtol=1e-5,
        )


def test_fine_tuned_checkpoint_keeps_the_encoder_and_drops_the_decoder(tmp_path):
    pretrained = avhubert_state_dict(**TINY, seed=5)
    state = {f"encoder.w2v_model.{key}": value for key, value in pretrained.items()}
    for key in ["final_proj.weight", "final_proj.bias"]:  # `remove_pretraining_modules()` before fine-tuning
        del state[f"encoder.w2v_model.{key}"]
    state["decoder.embed_tokens.weight"] = torch.randn(10, TINY["hidden"])
    state["decoder.layers.0.fc1.weight"] = torch.randn(8, TINY["hidden"])
    pretraining_cfg = fairseq_config(**TINY, image_crop_size=16)
    cfg = {"model": {"_name": "av_hubert_seq2seq", "w2v_args": pretraining_cfg, "decoder_layers": 1}, "task": {}}
    path = tmp_path / "finetuned.pt"
    save_fairseq_checkpoint(fairseq_checkpoint(state, cfg), path)

    config, weights = convert_checkpoint(path)
    assert set(weights) == {encoder_key(key) for key in set(pretrained) - LARGE_DROPPED}
    torch.testing.assert_close(
        weights["encoder.layers.1.feed_forward.output_dense.weight"], pretrained["encoder.layers.1.fc2.weight"]
    )
    assert config.hidden_size == TINY["hidden"]


def test_missing_unknown_and_mismatched_keys_are_errors(tmp_path):
    config = config_from_fairseq(fairseq_config(**TINY)["model"], {}, avhubert_state_dict(**TINY))

    state = avhubert_state_dict(**TINY)
    del state["encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(ValueError, match=r"1 encoder tensors missing.*encoder\.layers\.1\.attention\.k_proj\.bias"):
        map_weights(state, config)

    state = avhubert_state_dict(**TINY)
    state["encoder.layers.0.self_attn.rotary.inv_freq"] = torch.ones(4)
    with pytest.raises(ValueError, match=r"neither used nor known to be droppable.*rotary\.inv_freq"):
        map_weights(state, config)

    wrong = {**fairseq_config(**TINY)["model"], "encoder_ffn_embed_dim": 64}
    with pytest.raises(ValueError, match=r"encoder\.layers\.0\.fc1\.weight: config expects \[64, 32\], checkpoint has \[48, 32\]"):
        map_weights(avhubert_state_dict(**TINY), config_from_fairseq(wrong, {}, avhubert_state_dict(**TINY)))


def test_unsupported_architectures_are_named():
    state = avhubert_state_dict(**TINY)
    model_cfg = fairseq_config(**TINY)["model"]
    with pytest.raises(ValueError, match="modality_fuse='concat'"):
        config_from_fairseq({**model_cfg, "modality_fuse": "add"}, {}, state)
    with pytest.raises(ValueError, match="no 'encoder_attention_heads'"):
        config_from_fairseq({key: value for key, value in model_cfg.items() if key != "encoder_attention_heads"}, {}, state)
    with pytest.raises(ValueError, match=r"encoder_layers='\$\{model.layers\}'; expected a int"):
        config_from_fairseq({**model_cfg, "encoder_layers": "${model.layers}"}, {}, state)
    with pytest.raises(ValueError, match="Not a fairseq checkpoint"):
        split_checkpoint({"state_dict": {}})


def test_progress_output_and_dtype(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    save_fairseq_checkpoint(fairseq_checkpoint(avhubert_state_dict(**TINY), fairseq_config(**TINY)), path)
    avhubert.main([str(path), str(tmp_path / "out"), "--dtype", "bfloat16"])
    output = capsys.readouterr().out
    assert "without executing pickled code" in output
    assert "Mapping 186 tensors" in output
    assert "Kept 180 tensors" in output and "dropped 6 on purpose" in output
    assert "mask_emb: pre-training" in output
    assert "Writing 180 tensors" in output
    encoder = AVHubertVideoEncoder.from_pretrained(tmp_path / "out", dtype="auto")
    assert encoder.dtype == torch.bfloat16
    card = (tmp_path / "out" / "README.md").read_text()
    assert "checkpoint.pt" in card and "sha256" in card


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        avhubert.main(["--help"])
    assert exit_info.value.code == 0
    assert "fairseq AV-HuBERT checkpoint" in capsys.readouterr().out


def test_push_to_hub_uploads_the_converted_folder(tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload_folder", repo_id, folder_path, sorted(p.name for p in (tmp_path / "out").iterdir())))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    path = tmp_path / "checkpoint.pt"
    save_fairseq_checkpoint(fairseq_checkpoint(avhubert_state_dict(**TINY), fairseq_config(**TINY)), path)
    avhubert.main([str(path), str(tmp_path / "out"), "--push_to_hub", "someone/avhubert-large", "--token", "t0k"])

    assert calls == [
        ("init", "t0k"),
        ("create_repo", "someone/avhubert-large", None, True),
        ("upload_folder", "someone/avhubert-large", str(tmp_path / "out"), ["README.md", "config.json", "model.safetensors"]),
    ]
