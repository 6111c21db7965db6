# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Low-memory LLM weights for inference: weight-only quantisation of the LLM's linear layers with torchao.

Decoding one token reads every LLM weight once, so the LLM's weight bytes set both its memory and the floor of its
per-token time. Only the frozen LLM projections are quantised (a `MatryoshkaLoRALinear`'s base weight included); the
encoders, the projectors, the LoRA adapters (`lora_A`, `lora_B`) and the LM head (tied to the input embedding in the
Llama 3.2 models) keep the precision they were loaded in.

At load time (transformers quantises each weight as it loads, so the full-precision LLM never sits on the device):

    from llama_mtsk.quantization import llm_quantization_config
    model = LlamaMTSKForConditionalGeneration.from_pretrained(path, quantization_config=llm_quantization_config("int8"))

or on a model already in memory: `quantize_language_model(model, "int8")`. A quantised model saves and loads again
with `save_pretrained` / `from_pretrained` like any torchao model in transformers.

Kinds:
- `"int8"`: one int8 per weight, one scale per output row. Runs on CPU and GPU.
- `"int4"`: 4-bit weights in groups of 128 with a scale and zero point each, in torchao's tinygemm layout: CUDA and
  bfloat16 only (torchao has no 4-bit CPU kernel).
"""

from __future__ import annotations

import re

from torch import nn


QUANTIZATION_KINDS = ("int8", "int4")
INT4_GROUP_SIZE = 128
# Modules that keep their precision, as transformers' `modules_to_not_convert` patterns: each matches a module name
# from its start up to a module boundary.
UNQUANTIZED_MODULES = (
    "audio_encoder",
    "video_encoder",
    "audio_projectors",
    "video_projectors",
    "language_model.lm_head",
    r".*\.lora_[AB]",
)


def _torchao_weight_config(kind: str):
    """torchao's weight-only configuration for `kind`."""
    if kind not in QUANTIZATION_KINDS:
        raise ValueError(f"LLM weight quantisation must be one of {QUANTIZATION_KINDS}, got {kind!r}")
    try:
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    except ImportError as error:
        raise ImportError(
            f"{kind} LLM weights need torchao: pip install 'llama-mtsk[quant]' (or pip install torchao)"
        ) from error
    if kind == "int8":
        return Int8WeightOnlyConfig()
    return Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d")


def llm_quantization_config(kind: str = "int8"):
    """The `quantization_config` for `from_pretrained` that quantises the LLM's linear layers to `kind` and keeps
    `UNQUANTIZED_MODULES` as loaded."""
    from transformers import TorchAoConfig

    return TorchAoConfig(_torchao_weight_config(kind), modules_to_not_convert=list(UNQUANTIZED_MODULES))


def keeps_precision(module_name: str) -> bool:
    """Whether the module named `module_name` (as in `model.named_modules()`) is one of `UNQUANTIZED_MODULES` or
    inside one."""
    return any(re.match(rf"(?:{pattern})(?:\.|$)", module_name) for pattern in UNQUANTIZED_MODULES)


def quantize_language_model(model: nn.Module, kind: str = "int8") -> nn.Module:
    """Quantises, in place, the LLM's linear layers of a Llama-MTSK model already in memory, as
    `llm_quantization_config(kind)` does at load time. Returns the model."""
    from torchao.quantization import quantize_

    quantize_(
        model,
        _torchao_weight_config(kind),
        filter_fn=lambda module, name: isinstance(module, nn.Linear) and not keeps_precision(name),
    )
    return model


__all__ = [
    "QUANTIZATION_KINDS",
    "UNQUANTIZED_MODULES",
    "keeps_precision",
    "llm_quantization_config",
    "quantize_language_model",
]
