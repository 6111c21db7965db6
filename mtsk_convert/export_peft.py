# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Export one Matryoshka scale of a Llama-MTSK model to the standard peft format.

The model keeps its LoRA adapters in its own module (a global pair and/or one pair per scale, as the LoRA strategy
says: MS, SS or MSS); peft is the interchange format. For a chosen scale this writes three folders:

- `base/`: the plain LLM (`AutoModelForCausalLM`, e.g. `LlamaForCausalLM`) without any adapter;
- `adapter/`: a peft LoRA adapter for that LLM holding the scale's adapters: MS the global one, SS the scale's one,
  MSS both as one adapter of rank 2r (`[A_global; A_scale]`, `[B_global, B_scale]`, same scaling), so that
  `PeftModel.from_pretrained(base_llm, "adapter")` computes what the model's LLM computes at that scale;
- `merged/`: the plain LLM with that adapter folded into its weights (peft's `merge_and_unload`).

Only the LLM is exported: the encoders and projectors have no peft equivalent. This lives outside the remote code
because it needs peft, which loading a checkpoint does not.

Usage: `python -m mtsk_convert.export_peft CHECKPOINT OUTPUT_DIR --scale 4 2`
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from llama_mtsk.modeling_llama_mtsk import lora_adapter_names


def _is_lora_layer(module: nn.Module) -> bool:
    # Duck-typed: a model loaded through remote code has its own copy of the LoRA class.
    return isinstance(getattr(module, "lora_A", None), nn.ModuleDict) and isinstance(getattr(module, "lora_B", None), nn.ModuleDict)


def scale_adapter_names(config, scale) -> list[str]:
    """The model's adapters that are active at `scale` (the global one and the scale's own, as the strategy defines
    them), in the order they are stacked in the exported adapter."""
    scale_name = config.scale_name(config.normalize_scale(scale))
    return [name for name in lora_adapter_names(config) if name in ("global", scale_name)]


def plain_language_model(model) -> nn.Module:
    """The model's LLM as a plain `AutoModelForCausalLM` (same weights, no adapters), on the CPU."""
    language_model = AutoModelForCausalLM.from_config(model.config.text_config)
    state = {
        name: tensor.detach().cpu()
        for name, tensor in model.language_model.state_dict().items()
        if ".lora_A." not in name and ".lora_B." not in name
    }
    language_model.load_state_dict(state, strict=True)
    return language_model.to(model.language_model.dtype).eval()


def export_peft(model, scale, output_dir: str | Path, tokenizer=None) -> dict[str, Path]:
    """
    Writes `output_dir/base`, `output_dir/adapter` and `output_dir/merged` for one scale (see the module docstring).

    Args:
        model: A `LlamaMTSKForConditionalGeneration` (loaded from this repo or through remote code).
        scale: A trained scale, `(audio_rate, video_rate)` or an int for a single-modality model.
        output_dir: Where to write the three folders.
        tokenizer: Saved beside `base` and `merged` when given, so they load as complete LLM folders.

    Returns:
        `{"base": path, "adapter": path, "merged": path}`.
    """
    config = model.config
    adapter_names = scale_adapter_names(config, scale)
    if not adapter_names:
        raise ValueError("This model has no LoRA adapters (lora_strategy='none'): its LLM is the plain base model")
    output_dir = Path(output_dir)
    paths = {name: output_dir / name for name in ("base", "adapter", "merged")}

    layers = {name: module for name, module in model.language_model.named_modules() if _is_lora_layer(module)}
    if not layers:
        raise ValueError("Found no LoRA layer in the model's LLM")
    scalings = {float(module.scaling) for module in layers.values()}
    if len(scalings) != 1:
        raise ValueError(f"The LoRA layers use different scalings {sorted(scalings)}; peft needs one per adapter")
    rank = config.lora_r * len(adapter_names)
    # peft scales the update by lora_alpha / r: keep the model's scaling at the stacked rank.
    lora_config = LoraConfig(
        r=rank,
        lora_alpha=scalings.pop() * rank,
        target_modules=sorted({name.rsplit(".", 1)[-1] for name in layers}),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )

    base = plain_language_model(model)
    base.save_pretrained(paths["base"])
    peft_model = get_peft_model(copy.deepcopy(base), lora_config)
    peft_layers = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if name.startswith("base_model.model.") and hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})
    }
    if set(peft_layers) != set(layers):
        raise RuntimeError(f"peft adapted {sorted(set(peft_layers) ^ set(layers))[:4]} differently from the model")
    with torch.no_grad():
        for name, layer in layers.items():
            down = torch.cat([layer.lora_A[adapter].weight for adapter in adapter_names], dim=0)
            up = torch.cat([layer.lora_B[adapter].weight for adapter in adapter_names], dim=1)
            peft_layers[name].lora_A["default"].weight.copy_(down)
            peft_layers[name].lora_B["default"].weight.copy_(up)
    peft_model.peft_config["default"].base_model_name_or_path = str(paths["base"])
    peft_model.save_pretrained(paths["adapter"])

    merged = peft_model.merge_and_unload()
    merged.save_pretrained(paths["merged"])
    if tokenizer is not None:
        tokenizer.save_pretrained(paths["base"])
        tokenizer.save_pretrained(paths["merged"])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a Llama-MTSK checkpoint folder or Hub id")
    parser.add_argument("output_dir")
    parser.add_argument("--scale", type=int, nargs="+", required=True, help="audio_rate video_rate, or one rate")
    args = parser.parse_args()
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(args.checkpoint, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    scale = args.scale[0] if len(args.scale) == 1 else tuple(args.scale)
    for name, path in export_peft(model, scale, args.output_dir, tokenizer=tokenizer).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
