# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Convert a fairseq AV-HuBERT checkpoint (e.g. `large_vox_iter5.pt`) into Llama-MTSK's video encoder, without fairseq.

The checkpoint is read with `mtsk_convert.safe_unpickle` (no pickled code runs). The architecture (layers, width,
heads, FFN size, activation, pre/post-LN, positional convolution, ReLU type) comes from the checkpoint's own config,
the ResNet widths from its weights, so Base and Large both convert. Our `AVHubertVideoEncoder` keeps fairseq's names
for the ResNet front end and the fusion, and its transformer is transformers' HuBERT encoder: `encoder_key` renames
fairseq's transformer keys (`self_attn` -> `attention`, `fc1` -> `feed_forward.intermediate_dense`, the weight-normed
`pos_conv.0.weight_g/_v` -> `pos_conv_embed.conv.parametrizations.weight.original0/1`, ...). The mapping checks that
every key the encoder expects is there with the expected shape and that every other key of the checkpoint is one we
drop on purpose (`DROPPED`): the audio branch (Llama-MTSK feeds AV-HuBERT video only) and the pre-training heads.
Fine-tuned AV-HuBERT checkpoints (the encoder under `encoder.w2v_model.`, plus a decoder) convert too; their decoder
and output projection are dropped.

The output folder holds `config.json` (an `AVHubertConfig`), `model.safetensors` (keys exactly as
`AVHubertVideoEncoder.state_dict()`) and a `README.md` that records where the weights came from; load it with
`AVHubertVideoEncoder.from_pretrained(folder)` or pass it as the video encoder when assembling a model.

Usage: `python -m mtsk_convert.avhubert large_vox_iter5.pt avhubert-large [--dtype float32] [--push_to_hub REPO]`
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from llama_mtsk import AVHubertConfig, AVHubertVideoEncoder
from llama_mtsk.modeling_llama_mtsk import AVHUBERT_FAIRSEQ_RENAMES

from .safe_unpickle import load_checkpoint


# Checkpoint keys (relative to the AV-HuBERT model) that have no place in a video-only encoder, and why.
DROPPED = {
    "feature_extractor_audio.": "audio branch (Llama-MTSK runs AV-HuBERT on video only; the audio half of the fused "
    "features is zeros)",
    "mask_emb": "pre-training: embedding of masked input frames",
    "label_embs_concat": "pre-training: cluster-label embeddings of the masked-prediction loss",
    "final_proj.": "pre-training: projection onto the label embeddings",
    "target_glu.": "pre-training: GLU on the targets",
}
# A fine-tuned AV-HuBERT (`AVHubertSeq2Seq`, `AVHubertCtc`) holds the pre-trained model under this prefix.
FINE_TUNED_PREFIX = "encoder.w2v_model."
FINE_TUNED_DROPPED = {
    "decoder.": "fine-tuning: the sequence-to-sequence decoder",
    "encoder.proj.": "fine-tuning: the projection from the encoder to the decoder or the CTC vocabulary",
}
# fairseq `utils.get_activation_fn` names -> transformers `ACT2FN` names.
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_accurate": "gelu_new",
    "gelu_fast": "gelu_new",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
    "swish": "silu",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_RESNET = "feature_extractor_video.resnet."


def log(message: str, verbose: bool) -> None:
    """Progress output of the converters."""
    if verbose:
        print(message, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------------------------------


def _setting(model_cfg: Mapping[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """A field of the fairseq model config, checked for type; `default=None` means required."""
    value = model_cfg.get(name, default)
    if value is None:
        raise ValueError(f"The checkpoint's model config has no {name!r}; fields found: {sorted(model_cfg)}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"The checkpoint's model config has {name}={value!r}; expected a {kind.__name__}")
    return value


def resnet_widths(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The front end's widths, read from the weights (fairseq hard-codes them, so no config carries them)."""
    try:
        return {
            "frontend_channels": state[f"{_RESNET}frontend3D.0.weight"].shape[0],
            "resnet_channels": [state[f"{_RESNET}trunk.layer{stage}.0.conv1.weight"].shape[0] for stage in range(1, 5)],
        }
    except KeyError as error:
        raise ValueError(f"The checkpoint has no video front end: {error.args[0]} is missing") from None


def config_from_fairseq(
    model_cfg: Mapping[str, Any], task_cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> AVHubertConfig:
    """The `AVHubertConfig` of a fairseq AV-HuBERT from its model and task configs (`cfg.model`, `cfg.task`, or an old
    flat `args` namespace for both) and, for the ResNet widths, its weights."""
    fuse = model_cfg.get("modality_fuse", "concat")
    if fuse != "concat":
        raise ValueError(f"Only modality_fuse='concat' AV-HuBERT models are supported, the checkpoint has {fuse!r}")
    if model_cfg.get("sub_encoder_layers", 0):
        raise ValueError(
            f"The checkpoint has per-modality transformer layers (sub_encoder_layers={model_cfg['sub_encoder_layers']}), "
            "which AV-HuBERT Base/Large do not have and our encoder does not implement"
        )
    activation = _setting(model_cfg, "activation_fn", str, "gelu")
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unsupported activation_fn {activation!r}; supported: {sorted(ACTIVATIONS)}")
    return AVHubertConfig(
        hidden_size=_setting(model_cfg, "encoder_embed_dim", int),
        num_hidden_layers=_setting(model_cfg, "encoder_layers", int),
        num_attention_heads=_setting(model_cfg, "encoder_attention_heads", int),
        intermediate_size=_setting(model_cfg, "encoder_ffn_embed_dim", int),
        hidden_act=ACTIVATIONS[activation],
        hidden_dropout=_setting(model_cfg, "dropout", float, 0.1),
        attention_dropout=_setting(model_cfg, "attention_dropout", float, 0.1),
        activation_dropout=_setting(model_cfg, "activation_dropout", float, 0.0),
        layer_norm_first=_setting(model_cfg, "layer_norm_first", bool, False),
        num_conv_pos_embeddings=_setting(model_cfg, "conv_pos", int, 128),
        num_conv_pos_embedding_groups=_setting(model_cfg, "conv_pos_groups", int, 16),
        resnet_relu_type=_setting(model_cfg, "resnet_relu_type", str, "prelu"),
        image_size=_setting(task_cfg, "image_crop_size", int, 88),
        image_mean=_setting(task_cfg, "image_mean", float, 0.421),
        image_std=_setting(task_cfg, "image_std", float, 0.165),
        **resnet_widths(state),
    )


def config_from_weights(state: Mapping[str, torch.Tensor], head_size: int = 64) -> AVHubertConfig:
    """The `AVHubertConfig` of AV-HuBERT weights saved without their config (as the Llama-AVSR checkpoints embed
    them). Everything but two settings is in the shapes: the number of heads is `width / head_size` (64 in AV-HuBERT
    Base and Large) and the layers are pre-LN (both released sizes); the original `.pt` gives the exact values."""
    try:
        hidden_size = state["post_extract_proj.weight"].shape[0]
        weight_v = state["encoder.pos_conv.0.weight_v"]
        intermediate_size = state["encoder.layers.0.fc1.weight"].shape[0]
    except KeyError as error:
        raise ValueError(f"The AV-HuBERT weights lack {error.args[0]}") from None
    num_layers = sum(1 for key in state if re.fullmatch(r"encoder\.layers\.\d+\.fc1\.weight", key))
    return AVHubertConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // head_size,
        intermediate_size=intermediate_size,
        layer_norm_first=True,
        num_conv_pos_embeddings=weight_v.shape[-1],
        num_conv_pos_embedding_groups=hidden_size // weight_v.shape[1],
        resnet_relu_type="prelu" if f"{_RESNET}frontend3D.2.weight" in state else "relu",
        **resnet_widths(state),
    )


def expected_shapes(config: AVHubertConfig) -> dict[str, tuple[int, ...]]:
    """Every key of `AVHubertVideoEncoder(config).state_dict()` with its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        encoder = AVHubertVideoEncoder(config)
    return {key: tuple(tensor.shape) for key, tensor in encoder.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------------


def encoder_key(fairseq_key: str) -> str:
    """Our `AVHubertVideoEncoder` key of a fairseq AV-HuBERT key (keys already ours come back unchanged), renamed as
    `from_pretrained` renames the keys of checkpoints saved before the encoder used transformers' HuBERT modules."""
    key = fairseq_key
    for pattern, replacement in AVHUBERT_FAIRSEQ_RENAMES.items():
        key = re.sub(pattern, replacement, key, count=1)
    return key


def _drop_reason(key: str, dropped: Mapping[str, str]) -> str | None:
    for prefix, reason in dropped.items():
        if key == prefix or key.startswith(prefix if prefix.endswith(".") else prefix + "."):
            return reason
    return None


def map_weights(
    state: Mapping[str, torch.Tensor],
    config: AVHubertConfig,
    dropped_on_purpose: Mapping[str, str] = DROPPED,
    dtype: torch.dtype | None = None,
    verbose: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """
    Maps an AV-HuBERT state dict (fairseq keys, relative to the model) onto `AVHubertVideoEncoder(config)`.

    Returns `(weights, dropped)`: the encoder's state dict (our keys), and every checkpoint key left out with the
    reason. Raises `ValueError` listing the encoder keys the checkpoint lacks (our names), the keys it has that are
    neither used nor dropped on purpose, and the shapes that disagree with the config (fairseq names).
    """
    expected = expected_shapes(config)
    weights: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    unused: list[str] = []
    mismatched: list[str] = []
    for key in tqdm(sorted(state), desc="Mapping AV-HuBERT tensors", unit="tensor", disable=not verbose):
        tensor, name = state[key], encoder_key(key)
        if name in expected:
            if tuple(tensor.shape) != expected[name]:
                mismatched.append(f"{key}: config expects {list(expected[name])}, checkpoint has {list(tensor.shape)}")
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            weights[name] = tensor
        elif (reason := _drop_reason(key, dropped_on_purpose)) is not None:
            dropped[key] = reason
        else:
            unused.append(key)
    missing = sorted(set(expected) - set(weights))
    if missing or unused or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} encoder tensors missing from the checkpoint (our names): {missing}")
        if unused:
            problems.append(f"{len(unused)} checkpoint tensors neither used nor known to be droppable: {unused}")
        if mismatched:
            problems.append(f"{len(mismatched)} shapes disagree with the checkpoint's config: {mismatched}")
        raise ValueError("The AV-HuBERT weights do not match the encoder:\n- " + "\n- ".join(problems))
    return weights, dropped


def split_checkpoint(checkpoint: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str], dict, dict, str]:
    """
    Finds the AV-HuBERT model in a fairseq checkpoint.

    Returns `(state, dropped, model_cfg, task_cfg, kind)`: the model's state dict with keys relative to the
    AV-HuBERT model, the keys already dropped (a fine-tuned model's decoder), the model and task configs, and
    `"pre-training"` or `"fine-tuned"`.
    """
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"Not a fairseq checkpoint: expected a dict with the weights under 'model', found {found}")
    model_state = checkpoint["model"]
    cfg = checkpoint.get("cfg")
    if cfg is None and checkpoint.get("args") is not None:  # fairseq before its hydra configs: one flat namespace
        cfg = {"model": checkpoint["args"], "task": checkpoint["args"]}
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("model"), Mapping):
        raise ValueError("The checkpoint has no model config (neither 'cfg' nor 'args'): its architecture is unknown")
    model_cfg, task_cfg = cfg["model"], cfg.get("task") or {}

    if not any(key.startswith(FINE_TUNED_PREFIX) for key in model_state):
        return dict(model_state), {}, model_cfg, task_cfg, "pre-training"
    w2v_args = model_cfg.get("w2v_args")
    if not isinstance(w2v_args, Mapping):
        raise ValueError("A fine-tuned AV-HuBERT checkpoint must carry its pre-training config in cfg.model.w2v_args")
    if isinstance(w2v_args.get("model"), Mapping):
        model_cfg, task_cfg = w2v_args["model"], w2v_args.get("task") or {}
    else:  # an old flat namespace
        model_cfg = task_cfg = w2v_args
    state, dropped = {}, {}
    for key, tensor in model_state.items():
        if key.startswith(FINE_TUNED_PREFIX):
            state[key[len(FINE_TUNED_PREFIX) :]] = tensor
        elif (reason := _drop_reason(key, FINE_TUNED_DROPPED)) is not None:
            dropped[key] = reason
        else:
            raise ValueError(f"Unexpected key {key!r} in a fine-tuned AV-HuBERT checkpoint")
    return state, dropped, model_cfg, task_cfg, "fine-tuned"


def convert_checkpoint(
    path: str | Path, dtype: torch.dtype | None = None, verbose: bool = False
) -> tuple[AVHubertConfig, dict[str, torch.Tensor]]:
    """Reads a fairseq AV-HuBERT checkpoint and returns `(config, state_dict)` for `AVHubertVideoEncoder`; `dtype`
    casts the floating-point tensors (default: as stored)."""
    config, weights, _ = _convert(Path(path), dtype, verbose)
    return config, weights


def _convert(path: Path, dtype: torch.dtype | None, verbose: bool):
    log(f"Reading {path} ({path.stat().st_size / 2**20:.1f} MiB) without executing pickled code", verbose)
    checkpoint = load_checkpoint(path)
    state, dropped, model_cfg, task_cfg, kind = split_checkpoint(checkpoint)
    config = config_from_fairseq(model_cfg, task_cfg, state)
    log(
        f"AV-HuBERT {kind} checkpoint: {config.num_hidden_layers} layers, width {config.hidden_size}, "
        f"{config.num_attention_heads} heads, FFN {config.intermediate_size}, "
        f"{'pre' if config.layer_norm_first else 'post'}-LN, ResNet {config.resnet_channels}",
        verbose,
    )
    log(f"Mapping {len(state)} tensors", verbose)
    weights, encoder_dropped = map_weights(state, config, dtype=dtype, verbose=verbose)
    dropped.update(encoder_dropped)
    parameters = sum(tensor.numel() for tensor in weights.values())
    log(f"Kept {len(weights)} tensors ({parameters / 1e6:.1f} M values); dropped {len(dropped)} on purpose:", verbose)
    for key, reason in sorted(dropped.items()):
        log(f"  - {key}: {reason}", verbose)
    return config, weights, dropped


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**24), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_card(config: AVHubertConfig, source: Path, source_sha256: str, dropped: Mapping[str, str]) -> str:
    dropped_groups = sorted({re.sub(r"\.\d+\.", ".N.", key) for key in dropped})
    return f"""---
library_name: transformers
tags:
- av-hubert
- llama-mtsk
- visual-speech-recognition
---

# AV-HuBERT video encoder (converted from fairseq)

The video-only AV-HuBERT encoder of [Llama-MTSK](https://arxiv.org/abs/2503.06362), converted from the fairseq
checkpoint `{source.name}` (sha256 `{source_sha256}`) by `python -m mtsk_convert.avhubert`, without fairseq and
without executing the checkpoint's pickled code. The ResNet front end keeps fairseq's key names; the transformer is
transformers' HuBERT encoder, under its names.

- {config.num_hidden_layers} layers, width {config.hidden_size}, {config.num_attention_heads} heads, FFN
  {config.intermediate_size}, {"pre" if config.layer_norm_first else "post"}-LN; ResNet-18 front end
  {config.resnet_channels} on {config.image_size}x{config.image_size} grayscale mouth crops normalised with mean
  {config.image_mean}, std {config.image_std}.
- Dropped on purpose ({len(dropped)} tensors): {", ".join(f"`{group}`" for group in dropped_groups)} (the audio branch
  and the pre-training heads; the encoder runs on video alone, the audio half of the fused features being zeros).

```python
from llama_mtsk import AVHubertVideoEncoder

encoder = AVHubertVideoEncoder.from_pretrained("<this folder or repo>")
features = encoder(pixel_values_videos).last_hidden_state  # (batch, frames, {config.hidden_size}) at 25 Hz
```

The weights are those of the original AV-HuBERT release (Shi et al., 2022); see its license.
"""


def save_encoder(
    config: AVHubertConfig,
    weights: Mapping[str, torch.Tensor],
    output_dir: str | Path,
    source: Path,
    dropped: Mapping[str, str],
    verbose: bool = False,
) -> Path:
    """Writes `config.json`, `model.safetensors` and `README.md` to `output_dir`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dtypes = {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()}
    config.architectures = ["AVHubertVideoEncoder"]
    if len(dtypes) == 1:
        config.dtype = dtypes.pop()
    config.save_pretrained(output_dir)
    log(f"Writing {len(weights)} tensors to {output_dir / 'model.safetensors'}", verbose)
    save_file({key: tensor.contiguous() for key, tensor in weights.items()}, output_dir / "model.safetensors", {"format": "pt"})
    log(f"Hashing {source.name} for the model card", verbose)
    (output_dir / "README.md").write_text(_model_card(config, source, file_sha256(source), dropped))
    return output_dir


def push_folder(
    folder: Path,
    repo_id: str,
    commit_message: str,
    private: bool | None = None,
    token: str | None = None,
    verbose: bool = False,
) -> str:
    """Uploads a folder to the Hub model repo `repo_id` (created if missing); returns the repo id."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    log(f"Uploading {folder} to https://huggingface.co/{repo_id}", verbose)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return repo_id


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m mtsk_convert.avhubert",
        description="Convert a fairseq AV-HuBERT checkpoint (e.g. large_vox_iter5.pt) into Llama-MTSK's video encoder "
        "(config.json + model.safetensors), without fairseq and without executing the checkpoint's pickled code.",
    )
    parser.add_argument("checkpoint", type=Path, help="the fairseq AV-HuBERT checkpoint (.pt), pre-training or fine-tuned")
    parser.add_argument("output_dir", type=Path, help="the folder to write")
    parser.add_argument(
        "--dtype", choices=["auto", *DTYPES], default="auto", help="dtype of the saved weights (auto: as stored)"
    )
    parser.add_argument("--push_to_hub", "--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token", help="Hugging Face token (default: the logged-in user's)")
    args = parser.parse_args(argv)

    dtype = None if args.dtype == "auto" else DTYPES[args.dtype]
    config, weights, dropped = _convert(args.checkpoint, dtype, verbose=True)
    save_encoder(config, weights, args.output_dir, args.checkpoint, dropped, verbose=True)
    if args.push_to_hub:
        push_folder(
            args.output_dir, args.push_to_hub, "Upload AV-HuBERT video encoder converted from fairseq",
            private=args.private or None, token=args.token, verbose=True,
        )
    print(f"Done: {args.output_dir}", flush=True)
    return args.output_dir


__all__ = [
    "DROPPED",
    "config_from_fairseq",
    "config_from_weights",
    "convert_checkpoint",
    "encoder_key",
    "expected_shapes",
    "file_sha256",
    "log",
    "map_weights",
    "push_folder",
    "resnet_widths",
    "save_encoder",
    "split_checkpoint",
]


if __name__ == "__main__":
    main()
