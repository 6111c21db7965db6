"""Decoding speed: per-token latency and clips/s, eager against a static KV cache with compiled decoding, the card's
bandwidth floor per token and memory with int8 / int4 LLM weights (GPU); the WER of a checkpoint under each decoding
option (CPU).

    python benchmarks/decode_speed.py --device cuda --output decode_gpu.json   # the GPU part, one run (~10 min, H200)
    python benchmarks/decode_speed.py --merge decode_gpu.json                  # ... added to BENCHMARKS.json / BENCHMARKS.md
    python benchmarks/decode_speed.py --wer outputs/demo/final --data data/embedded   # WER under each option, on CPU
    python benchmarks/decode_speed.py --smoke --output /tmp/d.json             # tiny shapes on CPU: tests the code only

The GPU part builds random-weight models at the Llama 3.2-1B and 3B shapes in bf16 on the device (speed does not
depend on the values), decodes 32 tokens per clip at (4, 2) with greedy decoding, and times each variant back to back
in one process. Per-token latency is the median time between consecutive tokens as `generate` hands them to a
streamer, past the first (which carries the encoders and the prefill); clips/s is whole `generate` calls from media.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from run_benchmarks import (
    NEW_TOKENS,
    PROFILES,
    REAL_ENCODERS,
    REPORT,
    RESULTS,
    TINY_ENCODERS,
    build_model,
    llama32_shape,
    machine,
    media_inputs,
    synchronize,
    timed,
)
from transformers import CompileConfig
from transformers.generation.streamers import BaseStreamer

from llama_mtsk import LlamaMTSKForConditionalGeneration
from llama_mtsk.quantization import llm_quantization_config, quantize_language_model


SCALE = (4, 2)
# Eight clips of different lengths (seconds); batch 1 takes the first.
CLIP_SECONDS = [10.0, 8.0, 9.0, 6.0, 10.0, 7.5, 8.5, 9.5]
BATCH_SIZES = (1, 8)
# Peak memory bandwidth from the vendors' data sheets, in TB/s, by a fragment of `torch.cuda.get_device_name()`;
# the first fragment found in the name wins, so more specific names come first.
MEMORY_BANDWIDTH_TB_S = {
    "H200": 4.8,
    "H100 NVL": 3.9,
    "H100 PCIe": 2.0,
    "H100": 3.35,  # SXM, "NVIDIA H100 80GB HBM3"
    "A100-SXM4-80GB": 2.039,
    "A100 80GB PCIe": 1.935,
    "A100": 1.555,  # 40 GB, SXM4 or PCIe
    "B200": 8.0,
    "L40S": 0.864,
    "L4": 0.3,
    "A10G": 0.6,
    "RTX 4090": 1.008,
    "T4": 0.32,
}


def memory_bandwidth_tb_s(device_name: str) -> float | None:
    """The card's peak memory bandwidth from `MEMORY_BANDWIDTH_TB_S`, or None for a card it does not list."""
    return next((bandwidth for fragment, bandwidth in MEMORY_BANDWIDTH_TB_S.items() if fragment in device_name), None)


# ---------------------------------------------------------------------------------------------------------------------
# What a decoding step reads, and how long it takes
# ---------------------------------------------------------------------------------------------------------------------


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor occupies, counting a quantised tensor (a torchao subclass) by the tensors it stores."""
    if type(tensor) is torch.Tensor:
        return tensor.numel() * tensor.element_size()
    names, _ = tensor.__tensor_flatten__()
    return sum(stored_bytes(getattr(tensor, name)) for name in names if getattr(tensor, name) is not None)


def llm_bytes_per_token(model: LlamaMTSKForConditionalGeneration, scale: tuple) -> int:
    """LLM weight bytes one decoding step reads at `scale`: every base weight (a tied LM head once), except an untied
    input embedding (a lookup reads one row), plus the LoRA adapters that `scale` routes to."""
    routed = set(model.lora_routes_for(torch.tensor([model.config.scales.index(scale)])))
    untied_embedding = model.get_input_embeddings().weight is not model.get_output_embeddings().weight
    total = 0
    for name, parameter in model.language_model.named_parameters():
        if ".lora_" in name and name.split(".")[-2] not in routed:
            continue
        if untied_embedding and parameter is model.get_input_embeddings().weight:
            continue
        total += stored_bytes(parameter.data)
    return total


class TokenClock(BaseStreamer):
    """A streamer that notes the time each new token reaches it."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def decoding_options(device: torch.device, compile_backend: str) -> dict[str, dict[str, Any]]:
    """`generate` arguments of each way to decode. On CUDA a static cache is all it takes: transformers then compiles
    the decoding step (inductor, CUDA graphs). Elsewhere the compile config has to ask for it."""
    compiled: dict[str, Any] = {"cache_implementation": "static"}
    if device.type != "cuda":
        config = CompileConfig(backend=compile_backend, mode=None)
        config._compile_all_devices = True  # transformers' own switch to compile on any device
        compiled["compile_config"] = config
    return {"eager": {}, "static + compiled": compiled}


@torch.no_grad()
def decode_speed(model, device: torch.device, dtype: torch.dtype, batch_size: int, options: dict[str, Any], repeats: int):
    """One decoding option at one batch size: the first call (with any compilation), per-token latency, clips/s."""
    inputs = media_inputs(model, CLIP_SECONDS[:batch_size], device, dtype)
    arguments = dict(scale=SCALE, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, **options)
    started = time.perf_counter()
    sequences = model.generate(**inputs, **arguments)
    synchronize(device)
    first_call_s = time.perf_counter() - started
    clock = TokenClock()
    for _ in range(2):  # the first streamed call warms up (CUDA graphs are recorded over the first calls)
        clock = TokenClock()
        model.generate(**inputs, streamer=clock, **arguments)
    # times[0]: the (empty) prompt; times[1]: the first token, after the encoders and the prefill.
    per_token_s = statistics.median(later - earlier for earlier, later in zip(clock.times[1:], clock.times[2:]))
    generate_s = timed(lambda: model.generate(**inputs, **arguments), device, repeats, warmup=0)
    return {
        "batch_size": batch_size,
        "first_call_s": first_call_s,
        "per_token_ms": 1000 * per_token_s,
        "generate_s": generate_s,
        "clips_per_s": batch_size / generate_s,
    }, sequences


def peak_memory(model, device: torch.device, dtype: torch.dtype) -> dict[str, float | None]:
    """Memory the model holds, and the peak of an eager batch-8 `generate` (GiB; None off CUDA)."""
    if device.type != "cuda":
        return {"model_gib": None, "peak_gib": None}
    gc.collect()
    torch.cuda.empty_cache()
    model_bytes = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    inputs = media_inputs(model, CLIP_SECONDS, device, dtype)
    with torch.no_grad():
        model.generate(**inputs, scale=SCALE, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    synchronize(device)
    return {"model_gib": model_bytes / 2**30, "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}


# ---------------------------------------------------------------------------------------------------------------------
# The GPU part (and its smoke test on CPU)
# ---------------------------------------------------------------------------------------------------------------------


def release(device: torch.device) -> None:
    """Forget compiled graphs and free the device before the next model."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def shape_section(
    size: str,
    device: torch.device,
    smoke: bool,
    compile_backend: str,
    bandwidth_tb_s: float | None,
    progress: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Eager against static + compiled at batch 1 and 8 in bf16 (fp32 off CUDA), and the memory of int8 LLM weights;
    for the 1B shape also the decoding speed of int8 and int4 LLM weights. `progress` gets the section as it grows."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    repeats = 1 if smoke else 3
    if smoke:
        text_config, encoders, lora_r = PROFILES["smoke"].inference_llm(), TINY_ENCODERS, 4
        description = f"Llama 3.2-{size.upper()} slot with a tiny LLM and tiny encoders (smoke)"
    else:
        text_config, encoders, lora_r = llama32_shape(size), REAL_ENCODERS, 64
        description = f"Llama 3.2-{size.upper()} shape, Whisper-small + AV-HuBERT Large shapes"

    def fresh_model():
        return build_model(text_config, encoders, lora_strategy="mss", lora_r=lora_r, device=device, dtype=dtype)

    options = decoding_options(device, compile_backend)
    model = fresh_model()
    weight_bytes = llm_bytes_per_token(model, SCALE)
    section: dict[str, Any] = {
        "model": f"{description}, MSS LoRA r={lora_r}, {str(dtype).removeprefix('torch.')}",
        "llm_bytes_per_token": weight_bytes,
        "floor_ms": None if bandwidth_tb_s is None else 1000 * weight_bytes / (bandwidth_tb_s * 1e12),
        "decoding": [],
        # Memory before any compilation: CUDA graphs keep a memory pool of their own.
        "weights": [{"weights": str(dtype).removeprefix("torch."), **peak_memory(model, device, dtype)}],
    }
    for batch_size in BATCH_SIZES:
        eager, eager_sequences = decode_speed(model, device, dtype, batch_size, options["eager"], repeats)
        compiled, compiled_sequences = decode_speed(model, device, dtype, batch_size, options["static + compiled"], repeats)
        section["decoding"].append({
            "batch_size": batch_size,
            "eager": eager,
            "static + compiled": compiled,
            "speedup": eager["per_token_ms"] / compiled["per_token_ms"],
            # bf16 kernels may round differently once fused: how many rows keep every eager token.
            "rows_equal_to_eager": int((compiled_sequences == eager_sequences).all(-1).sum()),
        })
        progress(section)
    del model
    release(device)
    # Quantised weights: memory at both shapes; decoding speed (static + compiled, batch 1) at the 1B shape only,
    # each compilation costing about a minute of the run.
    with_speed = size == "1b"
    for kind in ("int8", "int4"):
        if kind == "int4" and (device.type != "cuda" or not with_speed):
            continue  # torchao's int4 kernel needs CUDA
        model = quantize_language_model(fresh_model(), kind)
        row = {"weights": kind, **peak_memory(model, device, dtype), "llm_bytes_per_token": llm_bytes_per_token(model, SCALE)}
        if with_speed:
            row["batch_1"], _ = decode_speed(model, device, dtype, 1, options["static + compiled"], repeats)
        section["weights"].append(row)
        progress(section)
        del model
        release(device)
    return section


def run_decoding(device: torch.device, smoke: bool, sizes: list[str], compile_backend: str, output: Path | None) -> dict:
    started = time.perf_counter()
    bandwidth = memory_bandwidth_tb_s(machine(device)["device"]) if device.type == "cuda" else None
    results: dict[str, Any] = {
        "machine": machine(device),
        "profile": "smoke" if smoke else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "memory_bandwidth_tb_s": bandwidth,
        "shapes": {},
    }
    for size in sizes:

        def progress(section: dict[str, Any], size: str = size) -> None:
            """Keeps what was measured so far on disk: a run cut short still leaves its figures."""
            results["shapes"][size] = section
            results["seconds"] = time.perf_counter() - started
            if output is not None:
                output.write_text(json.dumps(results, indent=2) + "\n")
            print(f"[{results['seconds']:.0f} s] {size}: {json.dumps(section)}", flush=True)

        progress(shape_section(size, device, smoke, compile_backend, bandwidth, progress))
    return results


# ---------------------------------------------------------------------------------------------------------------------
# WER under each option (CPU)
# ---------------------------------------------------------------------------------------------------------------------


def wer_under_options(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "test",
    max_samples: int | None = None,
    batch_size: int = 16,
    compile_backend: str = "inductor",
) -> dict[str, Any]:
    """The WER per scale of a checkpoint decoded eagerly, with a static cache, with a static cache and compiled
    decoding, and with int8 LLM weights, on CPU, and how many transcripts each option leaves as eager decoding wrote
    them. The model loads with this package's class, so the decoding code under test is this repository's, whatever
    remote code the checkpoint carries."""
    from transformers import AutoProcessor

    from mtsk_data.records import load_split
    from mtsk_train.evaluation import evaluate_scales

    records = load_split(str(data), split)
    if max_samples is not None:
        records = records.select(range(min(max_samples, len(records))))
    records = [records[index] for index in range(len(records))]
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    options = decoding_options(torch.device("cpu"), compile_backend)
    variants = {
        "eager": (options["eager"], None),
        "static cache": ({"cache_implementation": "static"}, None),
        "static cache + compiled": (options["static + compiled"], None),
        "int8 LLM weights": (options["eager"], "int8"),
    }
    rows: dict[str, Any] = {}
    eager_hypotheses: dict[str, list[str]] = {}
    for name, (generate_kwargs, quantization) in variants.items():
        quantization_config = None if quantization is None else llm_quantization_config(quantization)
        model = LlamaMTSKForConditionalGeneration.from_pretrained(checkpoint, quantization_config=quantization_config)
        started = time.perf_counter()
        results, hypotheses = evaluate_scales(model, processor, records, batch_size=batch_size, generate_kwargs=generate_kwargs)
        if name == "eager":
            eager_hypotheses = hypotheses
        same = sum(
            ours == theirs for key in hypotheses for ours, theirs in zip(hypotheses[key], eager_hypotheses[key])
        )
        rows[name] = {
            "wer_percent": {str(result.scale): 100 * result.wer for result in results},
            "same_transcripts_as_eager": same,
            "transcripts": sum(len(texts) for texts in hypotheses.values()),
            "seconds": time.perf_counter() - started,
        }
        print(f"{name}: {json.dumps(rows[name])}", flush=True)
        release(torch.device("cpu"))
    return {"checkpoint": str(checkpoint), "split": split, "utterances": len(records), "machine": machine(torch.device("cpu")), "options": rows}


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: tests the code")
    parser.add_argument("--sizes", default="1b,3b", help="Llama 3.2 shapes to measure, e.g. 1b")
    parser.add_argument("--output", default=None, help="write this run's JSON here (and nothing else), e.g. on a GPU machine")
    parser.add_argument("--merge", default=None, help="merge a JSON written with --output into the results")
    parser.add_argument("--wer", default=None, help="a checkpoint folder: its WER under each decoding option (CPU)")
    parser.add_argument("--data", default=None, help="with --wer: the prepared corpus folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--compile_backend", default="inductor", help="off CUDA: torch.compile's backend")
    parser.add_argument("--results", default=str(RESULTS), help="results JSON (default BENCHMARKS.json)")
    parser.add_argument("--report", default=str(REPORT), help="report (default BENCHMARKS.md)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    section = results.setdefault("decode_speed", {})
    if args.merge is not None:
        section["cuda"] = json.loads(Path(args.merge).read_text())
    elif args.wer is not None:
        if args.data is None:
            parser.error("--wer needs --data, the corpus the checkpoint is evaluated on")
        section["wer"] = wer_under_options(
            args.wer, args.data, args.split, args.max_samples, compile_backend=args.compile_backend
        )
    else:
        device = torch.device(args.device)
        output = None if args.output is None else Path(args.output)
        measured = run_decoding(device, args.smoke, args.sizes.split(","), args.compile_backend, output)
        if output is not None:
            return
        section[device.type] = measured
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    from report import write_report

    Path(args.report).write_text(write_report(results))
    print(f"wrote {results_path} and {args.report}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
