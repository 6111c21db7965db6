# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Convert the authors' Llama-AVSR and Llama-MTSK training checkpoints into a Llama-MTSK checkpoint folder.

Their checkpoints are the state dict of their `AVSR_LLMs` module: the averaged `model_avg_*.pth` their training
writes (and the model zoo ships), or a PyTorch Lightning `.ckpt` (keys under `model.`, training arguments under
`hyper_parameters`). Both are read without executing pickled code. The state dict holds every weight:

- `llm.*`: the LLM, its embedding already resized for the 5 added tokens (whose rows are random and frozen, so they
  exist nowhere else), with LoRA on q/v as `llm.model.layers.{i}.self_attn.lora_{down,up}_{Q,V}.weight`;
- `audio_encoder.*`: the Whisper encoder (transformers key names); `video_encoder.*`: the whole fairseq AV-HuBERT
  (pre-training heads and audio branch included), optionally with their LoRA on its q/v;
- `audio_proj.*` / `video_proj.*`: `Sequential(Linear, ReLU, Linear[, LayerNorm])`, one (Llama-AVSR) or a `ModuleList`
  with one per rate (Llama-MTSK, `audio_proj.{index}.*` in the order of their `--downsample-ratio-*`).

What the state dict does not record comes from the command line, with the authors' own flag names accepted: the LLM
and Whisper (their Hub ids or local folders: configs and tokenizer; weights only if the checkpoint lacks them), the
compression and rates, and the LoRA reduction and alpha.

LoRA, theirs -> ours: their bottleneck is `round(hidden / reduction)` and their update `q += (alpha / reduction) *
up_Q(down_Q(x))`; ours is `q += (lora_alpha / lora_r) * B(A(x))`. So `lora_r` = bottleneck (the rows of `lora_down_Q`),
`lora_alpha = alpha / reduction * lora_r`, `lora_A` = `lora_down` (r x in) and `lora_B` = `lora_up` (out x r), as
stored. Their single LoRA serves every rate, which is our strategy "ms" (one global adapter): for a single-rate
Llama-AVSR model that is exactly their model, for their Llama-MTSK (MS) too. Their AV-HuBERT LoRA
(`q += 2 * up_Q(down_Q(x))`, scaling hard-coded to 2) is merged into AV-HuBERT's q/v weights, which is exact.

Usage (the authors' AVSR model zoo checkpoint):
    python -m mtsk_convert.llama_avsr AVSR_Whisper-M_AVH-L_Llama3.1-8B_lrs3vox_Adown4_Vdown2_seed42.pth out \\
        --llm meta-llama/Meta-Llama-3.1-8B --whisper openai/whisper-medium.en --compression stack \\
        --audio-rates 4 --video-rates 2 --reduction-lora 64 --alpha 8 [--push_to_hub REPO]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase, WhisperConfig, WhisperModel

from llama_mtsk import AVHubertConfig, LlamaMTSKConfig, LlamaMTSKForConditionalGeneration
from llama_mtsk.configuration_llama_mtsk import DEFAULT_PROMPTS
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_train.assemble import add_special_tokens
from mtsk_train.hub import save_checkpoint

from .avhubert import (
    DTYPES,
    config_from_fairseq,
    config_from_weights,
    convert_checkpoint,
    encoder_key,
    file_sha256,
    log,
    map_weights,
    push_folder,
    split_checkpoint,
)
from .safe_unpickle import load_checkpoint


# Their AV-HuBERT LoRA: `self_attn.scaling_lora = 2`, hard-coded in `AVSR_LLMs.__init__`.
AVHUBERT_LORA_SCALING = 2.0
COMPRESSIONS = {"stack": "stack", "avg-pooling": "avg_pool", "avg_pool": "avg_pool"}
# Encoder widths, to suggest what a projector with an unexpected input size was trained with.
KNOWN_WIDTHS = {
    "audio": {"whisper-tiny": 384, "whisper-base": 512, "whisper-small": 768, "whisper-medium": 1024, "whisper-large": 1280},
    "video": {"AV-HuBERT Base": 768, "AV-HuBERT Large": 1024},
}
COMPONENTS = ("llm.", "audio_encoder.", "audio_proj.", "video_encoder.", "video_proj.")
_LLM_LORA = re.compile(r"llm\.model\.layers\.(\d+)\.self_attn\.lora_(down|up)_([QV])\.weight")
_AVHUBERT_LORA = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.lora_(down|up)_([QV])\.weight")
_PROJECTOR = re.compile(r"(audio|video)_proj\.(?:(\d+)\.)?([023])\.(weight|bias)")
_PROJECTOR_LAYERS = {"0": "linear_1", "2": "linear_2", "3": "layer_norm"}


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------


def read_training_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`(state dict of AVSR_LLMs, training arguments)` from an averaged `.pth` or a Lightning `.ckpt` (whose
    `hyper_parameters` are their argparse arguments; empty for a `.pth`)."""
    checkpoint = load_checkpoint(path)
    training_args: dict[str, Any] = {}
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        training_args = dict(checkpoint.get("hyper_parameters") or {})
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(f"{path}: expected a state dict (model_avg_*.pth) or a Lightning checkpoint with a 'state_dict'")
    not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: expected a state dict of tensors; these entries are not tensors: {not_tensors[:10]}")
    state = dict(checkpoint)
    if all(key.startswith("model.") for key in state):  # the Lightning module holds AVSR_LLMs as `model`
        state = {key[len("model.") :]: tensor for key, tensor in state.items()}
    unknown = sorted({key.split(".")[0] for key in state if not key.startswith(COMPONENTS)})
    if any(name.startswith("audiovisual_") for name in unknown):
        raise ValueError(
            f"{path} uses AV-HuBERT as an audio-visual encoder (`audiovisual_encoder` / `audiovisual_proj`, their "
            "modality 'audiovisual_avhubert'); Llama-MTSK uses Whisper for audio and AV-HuBERT for video only"
        )
    if unknown:
        raise ValueError(f"{path}: unknown modules {unknown}; an AVSR_LLMs state dict has {[c[:-1] for c in COMPONENTS]}")
    return state, training_args


def _component(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: tensor for key, tensor in state.items() if key.startswith(prefix)}


# ---------------------------------------------------------------------------------------------------------------------
# Settings the state dict does not record
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingSettings:
    """What the conversion needs beyond the weights (the authors' training flags in brackets)."""

    llm: str  # [--llm-model]
    whisper: str | None  # [--audio-encoder-name]
    compression: str  # "stack" | "avg_pool"  [--compression-mode]
    audio_rates: list[int] | None  # in training order  [--downsample-ratio-audio]
    video_rates: list[int] | None  # [--downsample-ratio-video]
    reduction: float | None  # [--reduction_lora / --rank]
    alpha: float | None  # [--alpha]
    prompt: str | None
    avhubert: str | None = None  # the original AV-HuBERT: a fairseq .pt or a converted folder
    avhubert_lora_scaling: float = AVHUBERT_LORA_SCALING


def _as_rates(value: Any) -> list[int] | None:
    if value is None:
        return None
    return [int(rate) for rate in (value if isinstance(value, (list, tuple)) else [value])]


def settings_from(cli: Mapping[str, Any], training_args: Mapping[str, Any], modality: str) -> TrainingSettings:
    """Merges the command line with the training arguments a Lightning checkpoint carries. A setting given both ways
    must agree; the LLM and Whisper locations given on the command line replace the training ones (a local copy of
    the same model is fine)."""
    trained = {
        "llm": training_args.get("llm_model"),
        "whisper": training_args.get("audio_encoder_name"),
        "compression": training_args.get("compression_mode"),
        "audio_rates": _as_rates(training_args.get("downsample_ratio_audio")),
        "video_rates": _as_rates(training_args.get("downsample_ratio_video")),
        "reduction": training_args.get("reduction_lora", training_args.get("rank")),
        "alpha": training_args.get("alpha"),
        "prompt": training_args.get(f"prompt_{modality}"),
    }
    chosen: dict[str, Any] = {}
    for name, from_training in trained.items():
        given = cli.get(name)
        if name.endswith("_rates"):
            given = _as_rates(given)
        if given is not None and from_training is not None and given != from_training and name not in ("llm", "whisper"):
            flag = {"reduction": "reduction-lora"}.get(name, name.replace("_", "-"))
            raise ValueError(f"--{flag} {given} disagrees with the checkpoint's training arguments ({from_training})")
        chosen[name] = given if given is not None else from_training
    if chosen["llm"] is None:
        raise ValueError("--llm is required: the Hub id or folder of the LLM the checkpoint was trained from")
    if modality in ("audio", "audiovisual") and chosen["whisper"] is None:
        raise ValueError("--whisper is required for an audio model: the Whisper the checkpoint was trained with")
    if chosen["compression"] not in COMPRESSIONS:
        raise ValueError(
            f"--compression must be one of {sorted(COMPRESSIONS)} (the training's --compression-mode), got {chosen['compression']!r}"
        )
    chosen["compression"] = COMPRESSIONS[chosen["compression"]]
    scaling = cli.get("avhubert_lora_scaling")
    return TrainingSettings(
        **chosen, avhubert=cli.get("avhubert"), avhubert_lora_scaling=AVHUBERT_LORA_SCALING if scaling is None else scaling
    )


# ---------------------------------------------------------------------------------------------------------------------
# LLM and LoRA
# ---------------------------------------------------------------------------------------------------------------------


def authors_tokenizer(llm: str) -> tuple[PreTrainedTokenizerBase, dict[str, int]]:
    """The LLM tokenizer with the tokens the authors add (a pad token, then the four delimiters, in their
    `ModelModule_LLM`'s order, which `add_special_tokens` keeps); returns it and the special token ids."""
    tokenizer = AutoTokenizer.from_pretrained(llm)
    return tokenizer, add_special_tokens(tokenizer)


@dataclass
class LoRAMapping:
    """Their LoRA expressed in our terms."""

    weights: dict[str, torch.Tensor]  # our keys
    rank: int
    alpha: float


def map_llm_lora(
    state: Mapping[str, torch.Tensor], num_layers: int, hidden_size: int, reduction: float | None, alpha: float | None
) -> LoRAMapping | None:
    """Maps `llm.model.layers.{i}.self_attn.lora_{down,up}_{Q,V}` onto our global adapter of q_proj / v_proj, or
    returns None when the checkpoint has no LLM LoRA. Checks that every layer has all four matrices with one
    bottleneck, and that the bottleneck is `round(hidden / reduction)`."""
    found = {match.groups(): key for key in state if (match := _LLM_LORA.fullmatch(key))}
    others = sorted(key for key in state if key.startswith("llm.") and "lora" in key and not _LLM_LORA.fullmatch(key))
    if others:
        raise ValueError(
            f"Unsupported LoRA layout in the LLM: {others[:6]}. Only the single LoRA on q/v of Llama-AVSR and "
            "Llama-MTSK (MS) is converted; scale-specific LoRA (`local_loras`, `global_lora`) was never wired into the "
            "authors' model, so there is no checkpoint layout to follow"
        )
    if not found:
        return None
    if reduction is None or alpha is None:
        raise ValueError(
            "The checkpoint has LoRA adapters: pass --reduction-lora and --alpha as used in training (the authors' "
            "--reduction_lora/--rank and --alpha; e.g. 64 and 8 for Llama 3.1-8B, 32 and 4 for Llama 3.2-1B/3B)"
        )
    expected = {(str(layer), kind, target) for layer in range(num_layers) for kind in ("down", "up") for target in "QV"}
    missing, extra = sorted(expected - set(found)), sorted(set(found) - expected)
    if missing or extra:
        raise ValueError(
            f"The LLM's LoRA matrices (layer, down/up, Q/V) do not fit its {num_layers} layers: missing {missing[:8]}, "
            f"extra {extra[:8]}"
        )
    ranks = {state[key].shape[0] for (layer, kind, target), key in found.items() if kind == "down"}
    ranks |= {state[key].shape[1] for (layer, kind, target), key in found.items() if kind == "up"}
    if len(ranks) != 1:
        raise ValueError(f"The LLM's LoRA matrices disagree on the bottleneck: {sorted(ranks)}")
    rank = ranks.pop()
    if round(hidden_size / reduction) != rank:
        raise ValueError(
            f"The LLM's LoRA bottleneck is {rank} (rows of lora_down_Q) but round(hidden {hidden_size} / "
            f"--reduction-lora {reduction:g}) = {round(hidden_size / reduction)}: the reduction factor is the one the "
            f"checkpoint was trained with (here {hidden_size / rank:g})"
        )
    ours = {"down": "lora_A", "up": "lora_B"}
    target_module = {"Q": "q_proj", "V": "v_proj"}
    weights = {
        f"language_model.model.layers.{layer}.self_attn.{target_module[target]}.{ours[kind]}.global.weight": state[key]
        for (layer, kind, target), key in found.items()
    }
    return LoRAMapping(weights, rank=rank, alpha=alpha / reduction * rank)


def map_llm(
    state: Mapping[str, torch.Tensor], text_config, vocabulary_size: int, llm: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The LLM's own weights under our `language_model.` prefix (LoRA excluded), and what was dropped."""
    embedding = state.get("llm.model.embed_tokens.weight")
    if embedding is None:
        raise ValueError(
            "The checkpoint has no LLM weights (llm.model.embed_tokens.weight): the authors' checkpoints hold the whole "
            "model, including the embedding rows of the 5 added tokens, which exist nowhere else"
        )
    if embedding.shape[0] != vocabulary_size:
        raise ValueError(
            f"The checkpoint's LLM embedding has {embedding.shape[0]} rows, but the tokenizer of {llm} plus the 5 added "
            f"tokens has {vocabulary_size}: --llm must be the LLM the checkpoint was trained from"
        )
    weights, dropped = {}, {}
    for key, tensor in state.items():
        if not key.startswith("llm.") or _LLM_LORA.fullmatch(key):
            continue
        if key.endswith("rotary_emb.inv_freq"):  # older transformers saved it; recomputed from the config
            dropped[key] = "rotary frequencies, recomputed from the LLM config"
        elif key == "llm.lm_head.weight" and text_config.tie_word_embeddings:
            if not torch.equal(tensor, embedding):
                raise ValueError(f"{llm} ties lm_head to the embedding, but the checkpoint's lm_head.weight differs from it")
            dropped[key] = "tied to llm.model.embed_tokens.weight"
        else:
            weights["language_model." + key[len("llm.") :]] = tensor
    return weights, dropped


# ---------------------------------------------------------------------------------------------------------------------
# Projectors
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Projectors:
    rates: list[int]
    hidden_size: int
    layer_norm: bool
    weights: dict[str, torch.Tensor]


def _input_size_hint(found: int, encoder: str, width: int, modality: str) -> str:
    """What an unexpected projector input size fits: a rate with this encoder, or a known encoder of another width."""
    def method(size: int, encoder_width: int) -> str:
        return "average pooling" if size == encoder_width else f"stacking at rate {size // encoder_width}"

    candidates = [f"{method(found, width)} with {encoder}"] if found % width == 0 else []
    candidates += [
        f"{method(found, known)} with {name} (width {known})"
        for name, known in KNOWN_WIDTHS[modality].items()
        if known != width and found % known == 0
    ]
    if not candidates:
        return f"no {modality} encoder width we know divides {found}"
    return "was it trained with " + ", or with ".join(candidates) + "?"


def map_projectors(
    state: Mapping[str, torch.Tensor],
    modality: str,
    rates: list[int] | None,
    compression: str,
    encoder: str,
    encoder_width: int,
    llm_hidden_size: int,
) -> Projectors:
    """Maps `{modality}_proj[.{index}].{0,2,3}` onto our per-rate projectors, checking their shapes against the
    declared rates, compression, encoder width and LLM width."""
    parts: dict[int | None, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _PROJECTOR.fullmatch(key)
        if match and match.group(1) == modality:
            index = None if match.group(2) is None else int(match.group(2))
            parts.setdefault(index, {})[f"{_PROJECTOR_LAYERS[match.group(3)]}.{match.group(4)}"] = tensor
        elif key.startswith(f"{modality}_proj."):
            raise ValueError(f"Unexpected projector key {key!r}: expected {modality}_proj[.<index>].<0|2|3>.<weight|bias>")
    if None in parts and len(parts) > 1:
        raise ValueError(f"{modality}_proj mixes a single projector with per-rate projectors (indices {sorted(i for i in parts if i is not None)})")
    indices = sorted(parts, key=lambda index: -1 if index is None else index)
    if indices != [None] and indices != list(range(len(indices))):
        raise ValueError(f"{modality}_proj has projector indices {indices}; expected 0..{len(indices) - 1}")
    first_inputs = {index: parts[index]["linear_1.weight"].shape[1] for index in indices if "linear_1.weight" in parts[index]}
    flag = f"--{modality}-rates"
    if rates is None:
        if compression != "stack":
            raise ValueError(
                f"Average-pooling checkpoints do not record their rates: pass {flag} as in training "
                f"(--downsample-ratio-{modality}), in the same order ({len(indices)} projector(s) found)"
            )
        if any(size % encoder_width for size in first_inputs.values()):
            sizes = sorted(set(first_inputs.values()))
            raise ValueError(
                f"The {modality} projectors take {sizes} inputs, not multiples of {encoder} (width {encoder_width}): "
                f"{_input_size_hint(sizes[0], encoder, encoder_width, modality)}"
            )
        rates = [first_inputs[index] // encoder_width for index in indices]
    if len(rates) != len(indices):
        layout = "one projector" if indices == [None] else f"{len(indices)} per-rate projectors"
        raise ValueError(f"{flag} lists {len(rates)} rate(s) {rates} but the checkpoint has {layout} for {modality}")
    if len(set(rates)) != len(rates):
        raise ValueError(f"{flag} repeats a rate: {rates}")

    weights: dict[str, torch.Tensor] = {}
    hidden_sizes, layer_norms = set(), set()
    for index, rate in zip(indices, rates):
        part = parts[index]
        source = f"{modality}_proj." + ("" if index is None else f"{index}.")
        needed = {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
        if not needed <= set(part):
            raise ValueError(f"{source}* lacks {sorted(needed - set(part))}")
        expected_inputs = encoder_width * rate if compression == "stack" else encoder_width
        found_inputs = part["linear_1.weight"].shape[1]
        if found_inputs != expected_inputs:
            how = f"rate {rate} stacking" if compression == "stack" else f"rate {rate} average pooling"
            raise ValueError(
                f"{how} with {encoder} (width {encoder_width}) expects {expected_inputs} inputs to the {modality} "
                f"projector, but the checkpoint's {source}0.weight is {list(part['linear_1.weight'].shape)} "
                f"({found_inputs} inputs): {_input_size_hint(found_inputs, encoder, encoder_width, modality)} "
                f"Check --compression, {flag} (in training order) and the encoder against the training command."
            )
        outputs = part["linear_2.weight"].shape[0]
        if outputs != llm_hidden_size:
            raise ValueError(
                f"{source}2.weight outputs {outputs} features but the LLM's hidden size is {llm_hidden_size}: "
                "--llm is not the LLM the checkpoint was trained with"
            )
        hidden_sizes.add(part["linear_1.weight"].shape[0])
        layer_norms.add("layer_norm.weight" in part)
        weights.update({f"{modality}_projectors.{rate}.{name}": tensor for name, tensor in part.items()})
    if len(hidden_sizes) != 1 or len(layer_norms) != 1:
        raise ValueError(f"The {modality} projectors differ in hidden size {hidden_sizes} or LayerNorm {layer_norms}")
    return Projectors(rates=list(rates), hidden_size=hidden_sizes.pop(), layer_norm=layer_norms.pop(), weights=weights)


# ---------------------------------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------------------------------


def merge_avhubert_lora(state: Mapping[str, torch.Tensor], scaling: float) -> tuple[dict[str, torch.Tensor], int]:
    """Folds the authors' AV-HuBERT LoRA (`q += scaling * up_Q(down_Q(x))`, same for v) into the q/v weights;
    returns the state without LoRA keys and the number of layers merged."""
    merged = {key: tensor for key, tensor in state.items() if not _AVHUBERT_LORA.fullmatch(key)}
    layers = sorted({int(match.group(1)) for key in state if (match := _AVHUBERT_LORA.fullmatch(key))})
    for layer in layers:
        prefix = f"encoder.layers.{layer}.self_attn"
        for target, projection in (("Q", "q_proj"), ("V", "v_proj")):
            try:
                down, up = state[f"{prefix}.lora_down_{target}.weight"], state[f"{prefix}.lora_up_{target}.weight"]
            except KeyError as error:
                raise ValueError(f"AV-HuBERT LoRA of layer {layer} is incomplete: {error.args[0]} is missing") from None
            weight = state[f"{prefix}.{projection}.weight"]
            delta = scaling * (up.float() @ down.float())
            merged[f"{prefix}.{projection}.weight"] = (weight.float() + delta).to(weight.dtype)
    return merged, len(layers)


def whisper_weights(state: Mapping[str, torch.Tensor], whisper: str, verbose: bool) -> tuple[dict[str, torch.Tensor], str]:
    """The Whisper encoder's weights: from the checkpoint, or from `whisper` when the checkpoint lacks them."""
    weights = _component(state, "audio_encoder.")
    if weights:
        if "conv1.weight" not in weights:
            kind = "AV-HuBERT" if any(key.startswith("feature_extractor_audio.") for key in weights) else "WavLM"
            raise ValueError(f"The checkpoint's audio encoder is {kind}, not Whisper; Llama-MTSK uses Whisper for audio")
        return weights, "the checkpoint"
    log(f"The checkpoint has no Whisper weights: loading them from {whisper}", verbose)
    return WhisperModel.from_pretrained(whisper, dtype=torch.float32).encoder.state_dict(), whisper


def avhubert_weights(
    state: Mapping[str, torch.Tensor], settings: TrainingSettings, verbose: bool
) -> tuple[AVHubertConfig, dict[str, torch.Tensor], dict[str, str], str]:
    """`(config, encoder weights, dropped keys, source)` of the video encoder, from the checkpoint's `video_encoder.*`
    (the whole fairseq AV-HuBERT, LoRA merged) or, if absent, from `--avhubert`."""
    source_config = None
    if settings.avhubert is not None:
        path = Path(settings.avhubert)
        if path.is_dir():
            source_config = AVHubertConfig.from_pretrained(path)
        elif not path.is_file():
            raise FileNotFoundError(f"--avhubert {path} is neither a converted folder nor a fairseq checkpoint")
    video_state = _component(state, "video_encoder.")
    if not video_state:
        if settings.avhubert is None:
            raise ValueError("The checkpoint has no AV-HuBERT weights (video_encoder.*): pass --avhubert")
        path = Path(settings.avhubert)
        if source_config is not None:
            from safetensors.torch import load_file

            # Folders converted before the encoder used transformers' HuBERT modules hold fairseq's key names.
            weights = {encoder_key(key): tensor for key, tensor in load_file(path / "model.safetensors").items()}
            return source_config, weights, {}, str(path)
        config, weights = convert_checkpoint(path, verbose=verbose)
        return config, weights, {}, str(path)

    video_state, merged_layers = merge_avhubert_lora(video_state, settings.avhubert_lora_scaling)
    if merged_layers:
        log(f"Merged the AV-HuBERT LoRA of {merged_layers} layers into q/v (scaling {settings.avhubert_lora_scaling:g})", verbose)
    if source_config is None and settings.avhubert is not None:
        _, _, model_cfg, task_cfg, _ = split_checkpoint(load_checkpoint(settings.avhubert))
        source_config = config_from_fairseq(model_cfg, task_cfg, video_state)
    if source_config is None:
        source_config = config_from_weights(video_state)
        log(
            f"AV-HuBERT architecture from the weights: {source_config.num_hidden_layers} layers, width "
            f"{source_config.hidden_size}, {source_config.num_attention_heads} heads (head size 64, pre-LN, as in "
            "AV-HuBERT Base and Large; pass --avhubert to read them from the original checkpoint)",
            verbose,
        )
    weights, dropped = map_weights(video_state, source_config, verbose=verbose)
    return source_config, weights, {f"video_encoder.{key}": reason for key, reason in dropped.items()}, "the checkpoint"


# ---------------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------------


def _check_shapes(weights: Mapping[str, torch.Tensor], config: LlamaMTSKConfig, settings: TrainingSettings) -> None:
    """Every weight our model expects is there with its shape, and nothing else is."""
    with torch.device("meta"):
        expected = {key: tuple(tensor.shape) for key, tensor in LlamaMTSKForConditionalGeneration(config).state_dict().items()}
    if config.text_config.tie_word_embeddings:
        expected.pop("language_model.lm_head.weight", None)
    hints = {
        "language_model.": f"--llm {settings.llm} differs from the checkpoint's LLM",
        "audio_encoder.": f"--whisper {settings.whisper} is not the Whisper the checkpoint was trained with",
        "video_encoder.": "the AV-HuBERT config does not match its weights",
    }
    problems = []
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = sorted(key for key in set(expected) & set(weights) if tuple(weights[key].shape) != expected[key])
    if missing:
        problems.append(f"missing {missing[:10]}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:10]}")
    for key in mismatched[:10]:
        hint = next((text for prefix, text in hints.items() if key.startswith(prefix)), "")
        problems.append(f"{key}: model expects {list(expected[key])}, checkpoint has {list(weights[key].shape)} ({hint})")
    if problems:
        raise ValueError("The converted weights do not fit the model:\n- " + "\n- ".join(problems))


def convert(checkpoint: str | Path, settings_cli: Mapping[str, Any], dtype: torch.dtype | None = None, verbose: bool = False):
    """
    Converts one of the authors' checkpoints. `settings_cli` holds the command-line settings (`llm`, `whisper`,
    `avhubert`, `compression`, `audio_rates`, `video_rates`, `reduction`, `alpha`, `prompt`, `modality`,
    `avhubert_lora_scaling`), None where not given.

    Returns `(model, processor, report)` where `report` lists what was dropped on purpose and where each part came from.
    """
    checkpoint = Path(checkpoint)
    log(f"Reading {checkpoint} ({checkpoint.stat().st_size / 2**20:.1f} MiB) without executing pickled code", verbose)
    state, training_args = read_training_checkpoint(checkpoint)
    uses_audio, uses_video = any(k.startswith("audio_proj.") for k in state), any(k.startswith("video_proj.") for k in state)
    modality = {(True, True): "audiovisual", (True, False): "audio", (False, True): "video"}.get((uses_audio, uses_video))
    if modality is None:
        raise ValueError(f"{checkpoint} has neither audio_proj nor video_proj: not an AVSR_LLMs state dict")
    if settings_cli.get("modality") not in (None, modality):
        raise ValueError(f"--modality {settings_cli['modality']} disagrees with the checkpoint, which is {modality!r}")
    settings = settings_from(settings_cli, training_args, modality)
    log(f"{len(state)} tensors; modality {modality}; compression {settings.compression}", verbose)

    text_config = AutoConfig.from_pretrained(settings.llm)
    if text_config.model_type != "llama":
        raise ValueError(
            f"--llm {settings.llm} is a {text_config.model_type!r} model; the authors' sequence layout converted here is "
            "their Llama one (their Qwen path drops the BOS token)"
        )
    tokenizer, special_token_ids = authors_tokenizer(settings.llm)
    text_config.vocab_size = len(tokenizer)
    text_config.pad_token_id = special_token_ids["pad_token_id"]

    log(f"Mapping the LLM ({text_config.num_hidden_layers} layers, hidden {text_config.hidden_size})", verbose)
    weights, dropped = map_llm(state, text_config, len(tokenizer), settings.llm)
    lora = map_llm_lora(state, text_config.num_hidden_layers, text_config.hidden_size, settings.reduction, settings.alpha)
    if lora is not None:
        weights.update(lora.weights)
        log(
            f"LoRA on q/v of {text_config.num_hidden_layers} layers: bottleneck {lora.rank} = round({text_config.hidden_size} / "
            f"{settings.reduction:g}), scaling {settings.alpha:g}/{settings.reduction:g} -> lora_r {lora.rank}, "
            f"lora_alpha {lora.alpha:g} (strategy 'ms': one global adapter)",
            verbose,
        )

    audio_config = video_config = None
    sources = {"llm": f"{settings.llm} (config, tokenizer); weights from the checkpoint"}
    projector_settings: dict[str, Projectors] = {}
    if uses_audio:
        audio_config = WhisperConfig.from_pretrained(settings.whisper)
        whisper, sources["whisper"] = whisper_weights(state, settings.whisper, verbose)
        weights.update({f"audio_encoder.{key}": tensor for key, tensor in whisper.items()})
        projector_settings["audio"] = map_projectors(
            state, "audio", settings.audio_rates, settings.compression, f"Whisper {Path(settings.whisper).name}",
            audio_config.d_model, text_config.hidden_size,
        )
    if uses_video:
        video_config, avhubert, video_dropped, sources["avhubert"] = avhubert_weights(state, settings, verbose)
        weights.update({f"video_encoder.{key}": tensor for key, tensor in avhubert.items()})
        dropped.update(video_dropped)
        projector_settings["video"] = map_projectors(
            state, "video", settings.video_rates, settings.compression, "AV-HuBERT", video_config.hidden_size,
            text_config.hidden_size,
        )
    for projectors in projector_settings.values():
        weights.update(projectors.weights)
    hidden_sizes = {projectors.hidden_size for projectors in projector_settings.values()}
    layer_norms = {projectors.layer_norm for projectors in projector_settings.values()}
    if len(hidden_sizes) != 1 or len(layer_norms) != 1:
        raise ValueError(f"The audio and video projectors differ in hidden size {hidden_sizes} or LayerNorm {layer_norms}")

    lora_settings: dict[str, Any] = {"lora_strategy": "none"}
    if lora is not None:
        lora_settings = {
            "lora_strategy": "ms",
            "lora_r": lora.rank,
            "lora_alpha": lora.alpha,
            "lora_target_modules": ["q_proj", "v_proj"],
            "lora_init": "gaussian",  # what their runs start from, should the model be trained further
        }
    config = LlamaMTSKConfig(
        text_config=text_config,
        audio_config=audio_config,
        video_config=video_config,
        modality=modality,
        audio_rates=projector_settings["audio"].rates if uses_audio else None,
        video_rates=projector_settings["video"].rates if uses_video else None,
        compression=settings.compression,
        projector_hidden_size=hidden_sizes.pop(),
        projector_layer_norm=layer_norms.pop(),
        prompt=settings.prompt or DEFAULT_PROMPTS[modality],
        **lora_settings,
        **special_token_ids,
    )
    config.prompt_token_ids = tokenizer(config.prompt, add_special_tokens=False)["input_ids"]
    log(f"Scales {config.scales}; projector hidden {config.projector_hidden_size}, LayerNorm {config.projector_layer_norm}", verbose)

    if dropped:
        groups = sorted({re.sub(r"\.\d+\.", ".N.", key) for key in dropped})
        log(f"Dropped {len(dropped)} tensors on purpose: {', '.join(groups)}", verbose)
    for prefix, used in (("audio_encoder.", uses_audio), ("video_encoder.", uses_video)):
        if not used and any(key.startswith(prefix) for key in state):
            raise ValueError(f"The checkpoint has {prefix}* weights but no projector for them: not a {modality} model")
    _check_shapes(weights, config, settings)
    if dtype is None:
        dtype = state["llm.model.embed_tokens.weight"].dtype
    log(f"Building the model from {len(weights)} tensors ({dtype})", verbose)
    weights = {key: tensor.to(dtype) if tensor.is_floating_point() else tensor for key, tensor in tqdm(
        weights.items(), desc="Casting", unit="tensor", disable=not verbose)}
    model, info = LlamaMTSKForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=weights, dtype=dtype, output_loading_info=True
    )
    if info["missing_keys"] or info["unexpected_keys"] or info.get("mismatched_keys"):
        raise RuntimeError(f"Loading the converted weights left keys unplaced: {info}")
    # Their code rounds the log-mels to bf16 before Whisper whatever the encoder's dtype: the converted model sees the
    # same inputs.
    processor = LlamaMTSKProcessor.from_model_config(config, tokenizer, round_features_to_bfloat16=True)
    report = {"sources": sources, "dropped": dropped, "lora": lora, "settings": settings}
    return model.eval(), processor, report


def _conversion_section(checkpoint: Path, report: Mapping[str, Any]) -> str:
    lora: LoRAMapping | None = report["lora"]
    settings: TrainingSettings = report["settings"]
    groups = sorted({re.sub(r"\.\d+\.", ".N.", key) for key in report["dropped"]})
    lines = [
        "",
        "## Conversion",
        "",
        f"Converted from the authors' checkpoint `{checkpoint.name}` (sha256 `{file_sha256(checkpoint)}`) by "
        "`python -m mtsk_convert.llama_avsr`, without executing its pickled code.",
        "",
        *[f"- {part}: {source}" for part, source in report["sources"].items()],
        f"- compression `{settings.compression}`, rates audio {settings.audio_rates} / video {settings.video_rates} "
        "(as declared or read from the projector shapes)",
    ]
    if lora is not None:
        lines.append(
            f"- LoRA: their reduction {settings.reduction:g} and alpha {settings.alpha:g} (bottleneck {lora.rank}, "
            f"scaling {settings.alpha / settings.reduction:g}) -> `lora_r={lora.rank}`, `lora_alpha={lora.alpha:g}`, "
            "strategy `ms`"
        )
    if groups:
        lines.append(f"- dropped on purpose: {', '.join(f'`{group}`' for group in groups)}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m mtsk_convert.llama_avsr",
        description="Convert an authors' Llama-AVSR / Llama-MTSK training checkpoint (model_avg_*.pth or Lightning "
        ".ckpt) into a Llama-MTSK checkpoint folder, without fairseq and without executing pickled code. The authors' "
        "training flag names are accepted as aliases.",
    )
    parser.add_argument("checkpoint", type=Path, help="the authors' checkpoint (.pth state dict or Lightning .ckpt)")
    parser.add_argument("output_dir", type=Path, help="the checkpoint folder to write")
    parser.add_argument("--llm", "--llm-model", "--llm_model", help="Hub id or folder of the base LLM (config, tokenizer)")
    parser.add_argument("--whisper", "--audio-encoder-name", "--audio_encoder_name", help="Hub id or folder of the Whisper model")
    parser.add_argument(
        "--avhubert", "--pretrain-avhubert-enc-video-path",
        help="the AV-HuBERT the model was trained from (fairseq .pt or converted folder): gives the exact architecture, "
        "and the weights when the checkpoint lacks them",
    )
    parser.add_argument("--modality", choices=["audio", "video", "audiovisual"], help="checked against the checkpoint")
    parser.add_argument("--compression", "--compression-mode", choices=sorted(COMPRESSIONS), help="as in training")
    parser.add_argument("--audio-rates", "--downsample-ratio-audio", type=int, nargs="+", metavar="RATE", help="in training order")
    parser.add_argument("--video-rates", "--downsample-ratio-video", type=int, nargs="+", metavar="RATE", help="in training order")
    parser.add_argument(
        "--reduction-lora", "--reduction_lora", "--rank", type=float, dest="reduction", metavar="REDUCTION",
        help="LoRA reduction factor: bottleneck = hidden / reduction",
    )
    parser.add_argument("--alpha", type=float, help="LoRA alpha (scaling = alpha / reduction)")
    parser.add_argument(
        "--avhubert-lora-scaling", type=float, default=AVHUBERT_LORA_SCALING, help="scaling of the AV-HuBERT LoRA (theirs: 2)"
    )
    parser.add_argument("--prompt", help="the instruction used in training (default: theirs for the modality)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="saved dtype (auto: the LLM's in the checkpoint)")
    parser.add_argument("--push_to_hub", "--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token", help="Hugging Face token (default: the logged-in user's)")
    args = parser.parse_args(argv)

    cli = {name: getattr(args, name) for name in (
        "llm", "whisper", "avhubert", "modality", "compression", "audio_rates", "video_rates", "reduction", "alpha",
        "avhubert_lora_scaling", "prompt",
    )}
    model, processor, report = convert(
        args.checkpoint, cli, dtype=None if args.dtype == "auto" else DTYPES[args.dtype], verbose=True
    )
    settings: TrainingSettings = report["settings"]
    print(f"Writing {args.output_dir}", flush=True)
    base_model = settings.llm if re.fullmatch(r"[\w.-]+/[\w.-]+", settings.llm) and not Path(settings.llm).exists() else None
    save_checkpoint(args.output_dir, model, processor, model_name=args.push_to_hub or args.output_dir.name, base_model=base_model)
    print(f"Hashing {args.checkpoint.name} for the model card", flush=True)
    with open(args.output_dir / "README.md", "a") as card:
        card.write(_conversion_section(args.checkpoint, report))
    if args.push_to_hub:
        push_folder(
            args.output_dir, args.push_to_hub, "Upload Llama-MTSK converted from the authors' checkpoint",
            private=args.private or None, token=args.token, verbose=True,
        )
    print(f"Done: {args.output_dir}", flush=True)
    return args.output_dir


__all__ = ["authors_tokenizer", "convert", "map_llm", "map_llm_lora", "map_projectors", "merge_avhubert_lora", "read_training_checkpoint"]


if __name__ == "__main__":
    main()
