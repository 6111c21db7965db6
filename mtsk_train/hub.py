# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Writing a Llama-MTSK checkpoint that loads anywhere with `trust_remote_code=True`, and its model card.

A checkpoint folder holds: `config.json` (with `auto_map` for AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq and
AutoProcessor, and `custom_pipelines` for the automatic-speech-recognition pipeline), `model.safetensors`,
`generation_config.json`, the remote-code modules, the processor files (`processor_config.json`, tokenizer files) and
`README.md` (model card with Hub metadata). Used by training and conversion code; not needed to load a checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.distributed.fsdp import FSDPModule

from llama_mtsk.configuration_llama_mtsk import VIDEO_FPS, WHISPER_FRAMES_PER_SECOND
from llama_mtsk.modeling_llama_mtsk import CUSTOM_PIPELINES


REQUIRED_AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForSpeechSeq2Seq", "AutoProcessor")

_TASK_TAGS = {
    "audio": ["automatic-speech-recognition"],
    "video": ["visual-speech-recognition", "lip-reading"],
    "audiovisual": ["audio-visual-speech-recognition", "lip-reading"],
}
_TASK_NAMES = {
    "audio": "speech recognition from audio (ASR)",
    "video": "lip reading from video (VSR)",
    "audiovisual": "audio-visual speech recognition (AVSR)",
}
_STRATEGY_NAMES = {
    "ms": "MS: one global LoRA shared by every scale",
    "ss": "SS: one LoRA per scale",
    "mss": "MSS: a global LoRA plus one LoRA per scale, summed",
    "none": "no LoRA (frozen LLM)",
}
_COMPRESSION_NAMES = {"avg_pool": "averaged", "stack": "stacked along the channels"}

WerTable = Mapping[str, Mapping[object, float]]


def _scale_label(scale: tuple[int | None, int | None]) -> str:
    audio_rate, video_rate = scale
    if video_rate is None:
        return str(audio_rate)
    if audio_rate is None:
        return str(video_rate)
    return f"({audio_rate}, {video_rate})"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "evaluation"


def _normalized_wer_table(config, wer_table: WerTable | None) -> dict[str, dict[tuple, float]]:
    """Checks a `{dataset name: {scale: WER %}}` table against the trained scales."""
    if not wer_table:
        return {}
    table = {}
    for dataset, results in wer_table.items():
        if not isinstance(results, Mapping):
            raise ValueError(f"wer_table[{dataset!r}] must map scales to WER (%), got {type(results).__name__}")
        table[str(dataset)] = {config.normalize_scale(scale): float(wer) for scale, wer in results.items()}
    return table


def model_card(
    config,
    model_name: str,
    wer_table: WerTable | None = None,
    base_model: str | None = None,
    language: str | list[str] | None = "en",
    license: str | None = None,
    datasets: str | list[str] | None = None,
    cascade: Mapping[str, Any] | None = None,
):
    """
    The model card (`huggingface_hub.ModelCard`) of a Llama-MTSK checkpoint: Hub metadata (pipeline tag, library, tags,
    the trained scales, the LoRA strategy, and a `model-index` with the WER results when `wer_table` is given) and a
    README with the scales, a usage example and the WER table.

    Args:
        config: The model's `LlamaMTSKConfig`.
        model_name: The name in the title and the `model-index`, e.g. the Hub repo id.
        wer_table: `{dataset name: {scale: WER in %}}`, e.g. `{"LRS3 test": {(4, 2): 2.4, (16, 5): 3.5}}`.
        base_model: The Hub id of the LLM the model was built on, if it has one.
        language, license, datasets: Optional Hub metadata.
        cascade: The calibrated cascade's evaluation, when known: `dataset`, `wer` and `llm_tokens` (WER % and LLM
            tokens processed per clip), `finest_wer` and `finest_llm_tokens` (the finest scale's), `threshold` and
            `confidence`.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    table = _normalized_wer_table(config, wer_table)
    scales = config.scales
    eval_results = [
        EvalResult(
            task_type="automatic-speech-recognition",
            dataset_type=_slug(dataset),
            dataset_name=dataset,
            metric_type="wer",
            metric_value=wer,
            metric_name=f"WER at scale {_scale_label(scale)}",
        )
        for dataset, results in table.items()
        for scale, wer in results.items()
    ]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
        tags=["llama-mtsk", "matryoshka", "custom_code", *_TASK_TAGS[config.modality]],
        base_model=base_model,
        language=language,
        license=license,
        datasets=datasets,
        metrics=["wer"],
        model_name=model_name,
        eval_results=eval_results or None,
        llama_mtsk={
            "modality": config.modality,
            "scales": [list(scale) for scale in scales],
            "lora_strategy": config.lora_strategy,
            "compression": config.compression,
        },
    )

    rows = []
    for scale in scales:
        audio_rate, video_rate = scale
        audio = f"{WHISPER_FRAMES_PER_SECOND / audio_rate:g}" if audio_rate else "-"
        video = f"{VIDEO_FPS / video_rate:g}" if video_rate else "-"  # AV-HuBERT: one output frame per video frame
        rows.append(f"| `{_scale_label(scale)}` | {audio_rate or '-'} | {video_rate or '-'} | {audio} | {video} |")
    scale_table = "\n".join(
        ["| scale | audio rate | video rate | audio tokens / s | video tokens / s |", "|---|---|---|---|---|", *rows]
    )
    example_input = {"audio": '"speech.wav"', "video": '"mouth_roi.mp4"', "audiovisual": '"talking_face.mp4"'}
    usage = f"""```python
from transformers import pipeline

asr = pipeline("automatic-speech-recognition", model="{model_name}", trust_remote_code=True)
asr({example_input[config.modality]}, scale={_scale_label(scales[-1])})["text"]  # the coarsest scale: fewest LLM tokens
```"""
    results = ""
    if table:
        datasets_ = list(table)
        header = "| scale | " + " | ".join(datasets_) + " |\n|---|" + "---|" * len(datasets_)
        lines = [
            f"| `{_scale_label(scale)}` | "
            + " | ".join(f"{table[name][scale]:.2f}" if scale in table[name] else "-" for name in datasets_)
            + " |"
            for scale in scales
        ]
        results = "\n## Results (WER %, lower is better)\n\n" + header + "\n" + "\n".join(lines) + "\n"
    if cascade:
        results += f"""
## Adaptive inference

`scale="cascade"` decodes at the coarsest scale first and again at finer scales only where the transcript's
{cascade["confidence"]} token log-probability is below {cascade["threshold"]:.4g} (calibrated, stored in
`generation_config.json`).

| {cascade["dataset"]} | WER (%) | LLM tokens per clip (input and generated, every pass) |
|---|---|---|
| cascade | {cascade["wer"]:.2f} | {cascade["llm_tokens"]:.1f} |
| finest scale | {cascade["finest_wer"]:.2f} | {cascade["finest_llm_tokens"]:.1f} |
"""
    text_config = config.text_config
    body = f"""
# {model_name}

A [Llama-MTSK](https://arxiv.org/abs/2503.06362) model for {_TASK_NAMES[config.modality]}: one checkpoint that
transcribes at any of its trained compression scales, so the caller trades accuracy for compute per call.

## Scales

A scale is `(audio rate, video rate)`: how many encoder frames become one LLM token ({_COMPRESSION_NAMES[config.compression]}).
Larger rates mean fewer LLM tokens and less compute.

{scale_table}

## Usage

{usage}

With the processor and the model directly:

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{model_name}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{model_name}", trust_remote_code=True)
inputs = processor(audio=waveform, videos=mouth_frames, sampling_rate=16000)  # the modalities the model uses
ids = model.generate(**inputs, scale={_scale_label(scales[0])}, num_beams=15, max_new_tokens=32)
processor.batch_decode(ids)
```
{results}
## Model details

- Modality: `{config.modality}`; trained scales: {", ".join(f"`{_scale_label(scale)}`" for scale in scales)}
- LLM: {text_config.model_type}, {text_config.num_hidden_layers} layers, hidden size {text_config.hidden_size}
- LoRA strategy: {_STRATEGY_NAMES[config.lora_strategy]} (rank {config.lora_r}, alpha {config.lora_alpha:g}, on
  {", ".join(config.lora_target_modules)})
- Audio encoder: {"Whisper, " + str(config.audio_config.encoder_layers) + " layers, d=" + str(config.audio_config.d_model) if config.uses_audio else "none"}
- Video encoder: {"AV-HuBERT, " + str(config.video_config.num_hidden_layers) + " layers, d=" + str(config.video_config.hidden_size) + f", {config.video_config.image_size}x{config.video_config.image_size} mouth crops" if config.uses_video else "none"}
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def save_checkpoint(
    save_directory: str | Path,
    model,
    processor,
    wer_table: WerTable | None = None,
    model_name: str | None = None,
    base_model: str | None = None,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload Llama-MTSK checkpoint",
) -> Path:
    """
    Saves a complete checkpoint (see the module docstring) and, with `push_to_hub=True`, uploads the folder. The
    model's `save_pretrained` writes the auto classes, the pipeline entry and the remote code; this adds the processor
    and the model card.

    Args:
        save_directory: The checkpoint folder (created if needed).
        model: A `LlamaMTSKForConditionalGeneration`.
        processor: Its `LlamaMTSKProcessor` (see `LlamaMTSKProcessor.from_model_config`).
        wer_table: `{dataset name: {scale: WER in %}}` for the model card, when known.
        model_name: Title of the model card; default `repo_id` or the folder name.
        base_model: Hub id of the LLM, for the model card metadata.
        push_to_hub, repo_id, private, token, commit_message: Upload the folder to the Hub repo `repo_id` (created if
            missing).

    Returns:
        The checkpoint folder.
    """
    save_directory = Path(save_directory)
    if isinstance(model, FSDPModule):
        # Its class and its parameters are FSDP's: the folder would name torch's class as the model and hold shards.
        raise ValueError("save_checkpoint needs the whole model, not an FSDP2-sharded one: gather its weights first")
    if push_to_hub and not repo_id:
        raise ValueError("push_to_hub=True needs a repo_id, e.g. 'your-name/llama-mtsk-avsr'")
    processor.check_whisper_window(model.config)
    _normalized_wer_table(model.config, wer_table)  # fail before writing anything

    model.save_pretrained(save_directory)
    processor.save_pretrained(save_directory)

    auto_map = model.config.auto_map
    missing = [name for name in REQUIRED_AUTO_CLASSES if name not in auto_map]
    if missing:
        raise RuntimeError(f"The saved config's auto_map lacks {missing}; got {auto_map}")

    name = model_name or repo_id or save_directory.resolve().name
    model_card(model.config, name, wer_table=wer_table, base_model=base_model).save(save_directory / "README.md")

    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        api.upload_folder(repo_id=repo_id, folder_path=str(save_directory), commit_message=commit_message)
    return save_directory


__all__ = ["CUSTOM_PIPELINES", "model_card", "save_checkpoint"]
