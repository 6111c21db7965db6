"""Llama-MTSK benchmarks: cost per scale, overhead against the bare LLM, batching, the Matryoshka training step
against the authors' one-pass-per-scale approach, the data pipeline, and (on a GPU) Llama 3.2 shapes in bf16.

    python benchmarks/run_benchmarks.py              # writes BENCHMARKS.json and BENCHMARKS.md
    python benchmarks/run_benchmarks.py --quick      # fewer repeats, smaller inputs: under 3 minutes on 2 CPU cores
    python benchmarks/run_benchmarks.py --smoke --results /tmp/r.json --report /tmp/B.md   # tiny shapes: tests only
    python benchmarks/run_benchmarks.py --device cuda --output gpu.json   # the GPU sections, on a GPU machine
    python benchmarks/run_benchmarks.py --merge gpu.json                  # ... added to the report here
    python benchmarks/run_benchmarks.py --demo outputs/demo               # the record of a finished demo run

Every figure comes from the run that wrote it; each comparison is measured in one process, back to back, and is
reported as a ratio. BENCHMARKS.json keeps one entry per device kind ("cpu", "cuda"), so BENCHMARKS.md shows both
once both were run; `--report_only` rewrites BENCHMARKS.md from BENCHMARKS.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
import yaml
from transformers import GenerationMixin, LlamaConfig, WhisperConfig

from llama_mtsk import AVHubertConfig, LlamaMTSKConfig, LlamaMTSKForConditionalGeneration
from llama_mtsk.configuration_llama_mtsk import WHISPER_FRAMES_PER_SECOND
from llama_mtsk.modeling_llama_mtsk import IGNORE_INDEX, use_lora_routes
from mtsk_train.trainer import train_mode


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "BENCHMARKS.json"
REPORT = ROOT / "BENCHMARKS.md"
NEW_TOKENS = 32


# ---------------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time in seconds of `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def gpu_peak_gib(function: Callable[[], Any], device: torch.device) -> float:
    """Peak GPU memory allocated while `function` runs, above what was allocated before, in GiB."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    function()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**30


# ---------------------------------------------------------------------------------------------------------------------
# Models with random weights at real shapes, and their inputs
# ---------------------------------------------------------------------------------------------------------------------


def smollm2_shape(num_hidden_layers: int = 30) -> LlamaConfig:
    """SmolLM2-135M (the offline default LLM), with the five added tokens."""
    return LlamaConfig(
        vocab_size=49152 + 5, hidden_size=576, intermediate_size=1536, num_hidden_layers=num_hidden_layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
        rope_theta=100000.0,
    )


def llama32_shape(size: str) -> LlamaConfig:
    """Llama 3.2 1B / 3B (their public configs), with the five added tokens."""
    hidden, layers, heads = {"1b": (2048, 16, 32), "3b": (3072, 28, 24)}[size]
    return LlamaConfig(
        vocab_size=128256 + 5, hidden_size=hidden, intermediate_size=8192, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=8, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_theta=500000.0,
    )


SMALL_ENCODERS = {
    "audio": dict(d_model=256, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=1024, num_mel_bins=80,
                  max_source_positions=1500),
    "video": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
                  frontend_channels=16, resnet_channels=[16, 32, 64, 128]),
}
# Whisper-small and AV-HuBERT Large, the encoders of the paper's smaller setting.
REAL_ENCODERS = {
    "audio": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072, num_mel_bins=80,
                  max_source_positions=1500),
    "video": {},
}


def build_model(
    text_config: LlamaConfig,
    encoders: dict[str, dict[str, Any]],
    lora_strategy: str = "mss",
    lora_r: int = 16,
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
) -> LlamaMTSKForConditionalGeneration:
    """A random-weight audio-visual model at the paper's four scales, LoRA adapters non-zero as after training, frozen
    as training freezes it (the training-step rows back-propagate into what training trains)."""
    vocab = text_config.vocab_size
    config = LlamaMTSKConfig(
        text_config=text_config,
        audio_config=WhisperConfig(**encoders["audio"]),
        video_config=AVHubertConfig(**encoders["video"]),
        modality="audiovisual",
        audio_rates=[4, 16],
        video_rates=[2, 5],
        lora_strategy=lora_strategy,
        lora_r=lora_r,
        lora_alpha=2.0 * lora_r,
        bos_token_id=1, eos_token_id=2, pad_token_id=vocab - 5, audio_start_token_id=vocab - 4,
        audio_end_token_id=vocab - 3, video_start_token_id=vocab - 2, video_end_token_id=vocab - 1,
        prompt_token_ids=list(range(100, 109)),  # the AVSR prompt is 9 SmolLM2 tokens
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaMTSKForConditionalGeneration(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    return model.freeze_for_training().to(dtype).eval()


def media_inputs(model, seconds: list[float], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random log-mels and mouth crops, one clip per entry of `seconds`, padded and masked like the processor's."""
    generator = torch.Generator().manual_seed(0)
    audio_config, video_config = model.config.audio_config, model.config.video_config
    window = 2 * audio_config.max_source_positions
    frames = [int(round(length * 25)) for length in seconds]
    features_mask = torch.zeros(len(seconds), window, dtype=torch.long)
    videos_mask = torch.zeros(len(seconds), max(frames), dtype=torch.long)
    for row, (length, count) in enumerate(zip(seconds, frames)):
        features_mask[row, : min(window, int(length * 100))] = 1
        videos_mask[row, :count] = 1
    side = video_config.image_size
    return {
        "input_features": torch.randn(len(seconds), audio_config.num_mel_bins, window, generator=generator).to(device, dtype),
        "input_features_mask": features_mask.to(device),
        "pixel_values_videos": torch.randn(len(seconds), max(frames), 1, side, side, generator=generator).to(device, dtype),
        "pixel_values_videos_mask": videos_mask.to(device),
    }


def transcript_labels(batch_size: int, eos_token_id: int, device: torch.device, length: int = 12) -> torch.Tensor:
    labels = torch.randint(200, 1000, (batch_size, length), generator=torch.Generator().manual_seed(1))
    labels[:, -1] = eos_token_id
    return labels.to(device)


def generation_options(model) -> dict[str, Any]:
    return dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=model.config.pad_token_id)


def llm_generate(model, embeds: torch.Tensor, mask: torch.Tensor, scale_index: torch.Tensor):
    """`generate` from prepared LLM inputs, through our forward (LoRA routing included): the LLM part alone."""
    return GenerationMixin.generate(
        model, inputs_embeds=embeds, attention_mask=mask, scale_index=scale_index, **generation_options(model)
    )


# ---------------------------------------------------------------------------------------------------------------------
# 1. Cost per scale  2. Overhead against the bare LLM  3. Batching
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def inference_per_scale(model, device, dtype, repeats: int, seconds: float) -> list[dict[str, Any]]:
    """LLM input tokens, estimated TFLOPs, prefill time and 32-token generation time per scale, for one clip."""
    inputs = media_inputs(model, [seconds], device, dtype)
    flops_per_token = model.llm_flops_per_token()
    rows = []
    for index, scale in enumerate(model.config.scales):
        scale_index = torch.tensor([index], device=device)
        embeds, mask, _ = model.build_inputs_embeds(**inputs, scale_index=scale_index, padding_side="left")
        prefill = timed(lambda: model(inputs_embeds=embeds, attention_mask=mask, scale_index=scale_index, logits_to_keep=1), device, repeats)
        generate = timed(lambda: llm_generate(model, embeds, mask, scale_index), device, repeats)
        tokens = int(mask.sum())
        rows.append({"scale": list(scale), "llm_tokens": tokens, "llm_tflops": flops_per_token * tokens / 1e12,
                     "prefill_s": prefill, "generate_s": generate})
    for row in rows:
        for key in ("llm_tokens", "prefill_s", "generate_s"):
            row[f"{key}_ratio"] = row[key] / rows[0][key]
    return rows


@torch.no_grad()
def overhead_against_bare_llm(models: dict[str, Any], device, dtype, repeats: int, seconds: float) -> list[dict]:
    """Our `generate` at (4, 2) against `LlamaForCausalLM.generate` fed `inputs_embeds` of the same length, after
    subtracting our encoder + projection + sequence-building time. With strategy "none" the difference is pure
    wrapper overhead; with "mss" it also holds the two adapters' arithmetic per q/v projection."""
    rows = []
    for strategy, model in models.items():
        inputs = media_inputs(model, [seconds], device, dtype)
        scale_index = torch.tensor([0], device=device)
        embeds, mask, _ = model.build_inputs_embeds(**inputs, scale_index=scale_index, padding_side="left")
        ours = timed(lambda: model.generate(**inputs, scale=(4, 2), **generation_options(model)), device, repeats)
        encoding = timed(lambda: model.build_inputs_embeds(**inputs, scale_index=scale_index, padding_side="left"), device, repeats)
        # Outside our forward no LoRA route is active: the bare LLM, no adapter runs.
        bare = timed(
            lambda: model.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **generation_options(model)),
            device,
            repeats,
        )
        rows.append({"lora_strategy": strategy, "ours_s": ours, "encoding_s": encoding, "bare_llm_s": bare,
                     "overhead": (ours - encoding - bare) / bare})
    return rows


@torch.no_grad()
def batching(model, device, dtype, repeats: int, seconds: float, batch_size: int = 8) -> dict[str, Any]:
    """Clips per second through the LLM part (prefill + 32 tokens) at (4, 2): one clip at a time (the authors'
    decoding) against one left-padded batch of `batch_size` clips of different lengths."""
    lengths = [seconds * factor for factor in (1.0, 0.8, 0.6, 0.9, 0.7, 1.0, 0.85, 0.75)][:batch_size]
    inputs = media_inputs(model, lengths, device, dtype)
    scale_index = torch.zeros(batch_size, dtype=torch.long, device=device)
    embeds, mask, _ = model.build_inputs_embeds(**inputs, scale_index=scale_index, padding_side="left")
    singles = []
    for row in range(batch_size):
        real = mask[row].bool()
        singles.append((embeds[row : row + 1, real], mask[row : row + 1, real], scale_index[row : row + 1]))
    one_at_a_time = timed(lambda: [llm_generate(model, *single) for single in singles], device, repeats)
    batched = timed(lambda: llm_generate(model, embeds, mask, scale_index), device, repeats)
    return {"batch_size": batch_size, "one_at_a_time_clips_per_s": batch_size / one_at_a_time,
            "batched_clips_per_s": batch_size / batched, "speedup": one_at_a_time / batched}


# ---------------------------------------------------------------------------------------------------------------------
# 4. The Matryoshka training step
# ---------------------------------------------------------------------------------------------------------------------


def one_pass_per_scale_loss(model, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The authors' step: encoders once, then one LLM pass per scale; the loss is the mean of the per-scale losses."""
    batch_size = labels.shape[0]
    sample_index = torch.arange(batch_size, device=labels.device)
    audio_features, audio_lengths = model.encode_audio(inputs["input_features"], inputs["input_features_mask"])
    video_features, video_lengths = model._encode_video(inputs["pixel_values_videos"], inputs["pixel_values_videos_mask"])
    losses = []
    for index, (audio_rate, video_rate) in enumerate(model.config.scales):
        audio = model._project(audio_features, audio_lengths, [audio_rate] * batch_size, sample_index, model.audio_projectors)
        video = model._project(video_features, video_lengths, [video_rate] * batch_size, sample_index, model.video_projectors)
        embeds, mask, sequence_labels = model._build_sequences(audio, video, sample_index, None, None, labels, "right")
        with use_lora_routes(model.lora_routes_for(torch.full((batch_size,), index, device=labels.device))):
            logits = model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        targets = sequence_labels[:, 1:]
        predicted = targets != IGNORE_INDEX
        losses.append(F.cross_entropy(logits[:, :-1][predicted].float(), targets[predicted]))
    return torch.stack(losses).mean()


APPROACHES = {
    "one stacked pass (ours)": lambda model, inputs, labels: model(**inputs, labels=labels).loss,
    "one pass per scale (authors)": one_pass_per_scale_loss,
}


def training_step_times(model, device, dtype, repeats: int, seconds: list[float]) -> list[dict[str, Any]]:
    """Forward + backward of the four-scale objective, stacked vs per scale, with and without activation
    checkpointing; on a GPU also the peak memory (CPU memory: `cpu_training_memory`)."""
    inputs = media_inputs(model, seconds, device, dtype)
    labels = transcript_labels(len(seconds), model.config.eos_token_id, device)
    train_mode(model)
    rows = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        for approach, loss_function in APPROACHES.items():
            def step():
                model.zero_grad(set_to_none=True)
                loss_function(model, inputs, labels).backward()

            row = {"approach": approach, "activation_checkpointing": checkpointing, "step_s": timed(step, device, repeats)}
            if device.type == "cuda":
                row["peak_gib"] = gpu_peak_gib(step, device)
            rows.append(row)
        if checkpointing:
            model.activation_checkpointing_disable()
    model.zero_grad(set_to_none=True)
    model.eval()
    return rows


def cpu_training_memory(profile: Profile) -> list[dict[str, Any]]:
    """Peak resident memory of one training step per variant, each in a fresh process (RSS peaks never go down)."""
    rows = []
    for checkpointing in (False, True):
        for approach in APPROACHES:
            command = [sys.executable, str(Path(__file__)), "--memory_probe", approach, "--profile", profile.name]
            if checkpointing:
                command.append("--checkpointing")
            output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
    return rows


def memory_probe(approach: str, checkpointing: bool, profile: Profile) -> None:
    """One training step in this process; prints the increase of peak RSS it caused, as JSON."""
    model = build_model(profile.training_llm(), profile.encoders)
    inputs = media_inputs(model, profile.training_seconds, torch.device("cpu"), torch.float32)
    labels = transcript_labels(len(profile.training_seconds), model.config.eos_token_id, torch.device("cpu"))
    train_mode(model)
    if checkpointing:
        model.activation_checkpointing_enable()
    gc.collect()
    # Building the model peaks higher than a small step: reset the kernel's peak-RSS mark (VmHWM) so that only the
    # step is measured.
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    APPROACHES[approach](model, inputs, labels).backward()
    increase_gib = (_status_kib("VmHWM") - before) / 2**20
    print(json.dumps({"approach": approach, "activation_checkpointing": checkpointing, "peak_rss_increase_gib": increase_gib}))


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status (Linux), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


# ---------------------------------------------------------------------------------------------------------------------
# 5. The data pipeline
# ---------------------------------------------------------------------------------------------------------------------


def data_pipeline(profile: Profile) -> dict[str, Any]:
    """Decode + augment throughput of the training collator on generated clips (one process, one thread), and the
    same with the processor's features; as clips/s and as a multiple of real time per core."""
    from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
    from mtsk_data.augment import AugmentationConfig, NoiseSource
    from mtsk_data.collator import MTSKCollator
    from mtsk_data.synthetic.corpus import make_utterance_record, plan_corpus
    from mtsk_train.assemble import add_special_tokens, load_tokenizer

    records = [make_utterance_record(plan) for plan in plan_corpus(profile.data_clips, 0, 0, seed=11)]
    tokenizer = load_tokenizer("smollm2")
    add_special_tokens(tokenizer)
    config = build_model(smollm2_shape(1), demo_encoders(), lora_strategy="none").config
    processor = LlamaMTSKProcessor.from_model_config(config, tokenizer)
    noise = NoiseSource(np.random.default_rng(0).standard_normal(16000 * 30).astype(np.float32) * 0.1, name="white")
    collator = MTSKCollator(processor, training=True, augmentation=AugmentationConfig(), noise=noise)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    audio_seconds = sum(record["duration"] for record in records)
    started = time.perf_counter()
    for record in records:
        collator.decode_and_augment(record)
    decode_augment = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, len(records), 8):
        collator(records[start : start + 8])
    with_features = time.perf_counter() - started
    torch.set_num_threads(threads)
    return {
        "clips": len(records),
        "audio_seconds": audio_seconds,
        "decode_augment_clips_per_s": len(records) / decode_augment,
        "decode_augment_x_real_time": audio_seconds / decode_augment,
        "with_features_clips_per_s": len(records) / with_features,
        "with_features_x_real_time": audio_seconds / with_features,
    }


# ---------------------------------------------------------------------------------------------------------------------
# The run and the report
# ---------------------------------------------------------------------------------------------------------------------

def demo_encoders() -> dict[str, dict[str, Any]]:
    """Encoders that take the demo's inputs (its video encoder's 32x32 crops, its Whisper window of
    `audio_window_seconds` over 80 mel bins), read from configs/demo.yaml: what the data pipeline section prepares
    inputs for. The audio encoder is a tiny one: the processor's work depends on the window alone."""
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    audio = {**TINY_ENCODERS["audio"], "max_source_positions": demo["audio_window_seconds"] * WHISPER_FRAMES_PER_SECOND}
    return {"audio": audio, "video": demo["video_encoder_config"]}


TINY_ENCODERS = {
    "audio": dict(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=80,
                  max_source_positions=1500),
    "video": dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                  num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, frontend_channels=4,
                  resnet_channels=[4, 4, 8, 8], image_size=16, roi_size=18),
}


@dataclasses.dataclass(frozen=True)
class Profile:
    """How big and how long a CPU run is: `full` for BENCHMARKS.md, `quick` for a look, `smoke` to test the code."""

    name: str
    repeats: int
    inference_seconds: float  # the clip of the inference sections
    inference_layers: int  # SmolLM2's 30, or fewer
    training_layers: int  # the training-step section's LLM depth at SmolLM2's width
    training_seconds: tuple[float, ...]  # its clips
    data_clips: int
    encoders: dict = dataclasses.field(default_factory=lambda: SMALL_ENCODERS)
    hidden_size: int | None = None  # smaller than SmolLM2's, for `smoke`

    def llm(self, layers: int) -> LlamaConfig:
        config = smollm2_shape(layers)
        if self.hidden_size is not None:
            config = LlamaConfig(**{**config.to_dict(), "hidden_size": self.hidden_size, "intermediate_size": 2 * self.hidden_size,
                                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": self.hidden_size // 4})
        return config

    def inference_llm(self) -> LlamaConfig:
        return self.llm(self.inference_layers)

    def training_llm(self) -> LlamaConfig:
        return self.llm(self.training_layers)


PROFILES = {
    "full": Profile("full", repeats=5, inference_seconds=10.0, inference_layers=30, training_layers=8,
                    training_seconds=(4.0, 3.0, 3.5, 2.5), data_clips=64),
    "quick": Profile("quick", repeats=2, inference_seconds=5.0, inference_layers=30, training_layers=4,
                     training_seconds=(3.0, 2.0), data_clips=16),
    "smoke": Profile("smoke", repeats=1, inference_seconds=2.0, inference_layers=2, training_layers=2,
                     training_seconds=(2.0, 1.5), data_clips=2, encoders=TINY_ENCODERS, hidden_size=32),
}


def machine(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        name = names[0] if names else platform.processor()
    return {"device": name, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def run(device: torch.device, profile: Profile) -> dict[str, Any]:
    repeats = profile.repeats
    results: dict[str, Any] = {"machine": machine(device), "profile": profile.name, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    started = time.perf_counter()
    if device.type == "cpu":
        dtype = torch.float32
        seconds = profile.inference_seconds
        model = build_model(profile.inference_llm(), profile.encoders, lora_strategy="mss")
        results["inference_model"] = (
            f"SmolLM2-135M shape ({profile.inference_layers} layers), MSS LoRA r=16, small encoders, fp32, a {seconds:g} s clip"
        )
        results["inference_per_scale"] = inference_per_scale(model, device, dtype, repeats, seconds)
        plain = build_model(profile.inference_llm(), profile.encoders, lora_strategy="none")
        results["overhead"] = overhead_against_bare_llm({"none": plain, "mss": model}, device, dtype, repeats, seconds)
        del plain
        results["batching"] = batching(model, device, dtype, repeats, seconds)
        del model
        trainer_model = build_model(profile.training_llm(), profile.encoders, lora_strategy="mss")
        results["training_model"] = (
            f"SmolLM2's width cut to {profile.training_layers} layers, MSS LoRA r=16, small encoders, fp32, "
            f"{len(profile.training_seconds)} clips of {', '.join(f'{length:g}' for length in profile.training_seconds)} s"
        )
        results["training_step"] = training_step_times(trainer_model, device, dtype, repeats, list(profile.training_seconds))
        del trainer_model
        results["training_memory"] = cpu_training_memory(profile)
        results["data_pipeline"] = data_pipeline(profile)
    else:
        dtype = torch.bfloat16
        results["shapes"] = {}
        for size in ("1b", "3b"):
            model = build_model(llama32_shape(size), REAL_ENCODERS, lora_strategy="mss", lora_r=64, device=device, dtype=dtype)
            batch_seconds = [6.0, 5.0, 5.5, 4.5, 6.0, 5.0, 4.0, 6.0]
            section = {"model": f"Llama 3.2-{size.upper()} shape, Whisper-small + AV-HuBERT Large shapes, MSS LoRA r=64, bf16"}
            section["training_step"] = training_step_times(model, device, dtype, repeats, batch_seconds)
            tokens = sum(
                int(model.count_llm_input_tokens(scale, **media_inputs(model, batch_seconds, device, dtype)).sum()) + 12 * len(batch_seconds)
                for scale in model.config.scales
            )
            for row in section["training_step"]:
                row["llm_tokens_per_s"] = tokens / row["step_s"]
            section["inference_per_scale"] = inference_per_scale(model, device, dtype, repeats, 10.0)
            section["batching"] = batching(model, device, dtype, repeats, 10.0)
            results["shapes"][size] = section
            del model
            gc.collect()
            torch.cuda.empty_cache()
    results["seconds"] = time.perf_counter() - started
    return results


def demo_record(output_dir: Path) -> dict[str, Any]:
    """What `python train.py configs/demo.yaml` measured, read from its output folder, with this machine's description
    (run it on the machine that ran the demo)."""
    summary_path, report_path = output_dir / "run_summary.json", output_dir / "final" / "eval_report.json"
    for path in (summary_path, report_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: is {output_dir} the output_dir of a finished train.py run?")
    return {
        "machine": machine(torch.device("cpu")),
        "output_dir": str(output_dir),
        "summary": json.loads(summary_path.read_text()),
        "per_scale": json.loads(report_path.read_text()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_const", const="quick", dest="profile", help="fewer repeats, smaller inputs")
    parser.add_argument("--smoke", action="store_const", const="smoke", dest="profile", help="tiny shapes: tests the code")
    parser.add_argument("--profile", choices=sorted(PROFILES), help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--output", default=None, help="write this run's JSON here (and nothing else), e.g. on a GPU machine")
    parser.add_argument("--merge", default=None, help="merge a JSON written with --output into the results")
    parser.add_argument(
        "--demo", default=None, help="add the record of a demo run: its output_dir (run_summary.json, final/eval_report.json)"
    )
    parser.add_argument("--report_only", action="store_true", help="rewrite the report from the results")
    parser.add_argument("--results", default=str(RESULTS), help="results JSON (default BENCHMARKS.json)")
    parser.add_argument("--report", default=str(REPORT), help="report (default BENCHMARKS.md)")
    parser.add_argument("--memory_probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(profile="full")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # denormals slow CPU steps several-fold on some machines
    profile = PROFILES[args.profile]
    if args.memory_probe is not None:
        memory_probe(args.memory_probe, args.checkpointing, profile)
        return
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if args.merge is not None:
        merged = json.loads(Path(args.merge).read_text())
        results["cuda" if "shapes" in merged else "cpu"] = merged
    elif args.demo is not None:
        results["demo"] = demo_record(Path(args.demo))
    elif not args.report_only:
        device = torch.device(args.device)
        current = run(device, profile)
        if args.output is not None:
            Path(args.output).write_text(json.dumps(current, indent=2) + "\n")
            print(json.dumps(current, indent=2))
            return
        results[device.type] = current
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    from report import write_report

    Path(args.report).write_text(write_report(results))
    print(f"wrote {results_path} and {args.report}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
