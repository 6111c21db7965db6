"""Word error rate per scale, LLM input tokens and estimated LLM compute, written as a report and a trade-off plot.

    python -m mtsk_train.evaluation --model outputs/demo/final --data data/embedded --split test

writes `eval_report.json` (one entry per scale and SNR: rates, WER as a fraction as jiwer gives it, errors, reference
words, mean LLM input tokens, mean LLM tokens processed (input and generated, every pass), estimated LLM TFLOPs, wall
time), `eval_report.md` (the same as a table, WER in %) and `wer_vs_tokens.png` (WER against LLM tokens processed per
clip, the paper's trade-off picture) into `--output_dir` (default: the model folder).

The video ablation gets rows of its own (`blank_video` true, labelled "video blanked"): `--blank_video` evaluates the
audio-visual model again with every pixel value 0 after normalisation (each frame the mean gray, the clip's length and
so its video tokens kept), at the same scales and SNRs, which shows how much the lips add to the audio.

Adaptive inference gets rows of its own (`mode` "auto" or "cascade"): `--budgets 60,90` adds `scale="auto"` at those
LLM input token budgets; `--calibrate_cascade` first chooses the cascade's confidence threshold on `--calibration_split`
(the cheapest whose WER is within `--max_wer_increase` of the finest scale's), stores it in the checkpoint's
generation config (so `generate(..., scale="cascade")` uses it), writes the whole frontier to
`cascade_calibration.json`, and adds the cascade's row; a checkpoint that already carries a threshold gets the row too.

WER is corpus-level: total word edits over total reference words (jiwer), on lower-cased whitespace-separated words
with punctuation removed. LLM compute is estimated as tokens x `model.llm_flops_per_token()`
(2 x the LLM's parameters without its input embedding), the rule the paper's token/TFLOPs table follows.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jiwer
import torch

from llama_mtsk import LlamaMTSKForConditionalGeneration
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor, normalize_text
from mtsk_data.augment import AugmentationConfig, NoiseSource
from mtsk_data.collator import MTSKCollator, babble_from_records, decode_records


@dataclass
class ScaleResult:
    """One scale (and SNR) evaluated on a split."""

    audio_rate: int | None
    video_rate: int | None
    snr_db: float | None
    wer: float
    errors: int
    reference_words: int
    utterances: int
    mean_llm_tokens: float
    mean_llm_tflops: float
    # Input and generated tokens of every LLM pass, per clip: the cost that compares fixed scales with adaptive modes.
    mean_llm_tokens_processed: float = 0.0
    seconds: float = 0.0
    mode: str = "fixed"  # "fixed", "auto" (scale="auto" under max_llm_tokens) or "cascade"
    max_llm_tokens: int | None = None
    cascade_threshold: float | None = None
    # Adaptive modes: the share of clips that ended at each scale.
    final_scales: dict[str, float] | None = None
    # The video ablation: the model saw every pixel value 0 (after normalisation) instead of the clips.
    blank_video: bool = False

    @property
    def scale(self) -> tuple[int | None, int | None]:
        return (self.audio_rate, self.video_rate)


# One decoding condition of an evaluation: the SNR of the audio (None: clean), the scale, and whether the video is
# blanked.
Condition = tuple[float | None, tuple, bool]


@torch.no_grad()
def evaluate_scales(
    model: LlamaMTSKForConditionalGeneration,
    processor: LlamaMTSKProcessor,
    records: Sequence[dict[str, Any]],
    scales: Sequence[tuple] | None = None,
    snrs_db: Sequence[float | None] = (None,),
    noise: NoiseSource | None = None,
    batch_size: int = 16,
    generate_kwargs: dict[str, Any] | None = None,
    process_index: int = 0,
    num_processes: int = 1,
    blank_video: bool = False,
) -> tuple[list[ScaleResult], dict[str, list[str]]]:
    """Transcribes `records` at every scale (default: every trained scale) and SNR (None = clean audio). Each batch is
    decoded once for all SNRs, and its audio encoded once per SNR for all scales.

    With `blank_video` (audio-visual models), the model gets `pixel_values_videos` of zeros, the value of the mean
    pixel after normalisation, with the clips' masks, so the same number of video tokens: the rows (`blank_video`
    true) measure what the lips add to the audio.

    With `num_processes` > 1 (torch.distributed initialised, every process calling with the same arguments and the
    whole model, not FSDP shards: each process generates on its own), process `process_index` transcribes every
    `num_processes`-th batch and the transcripts are gathered, so every process returns what one process would.

    Returns the results and the hypotheses per `"<scale>@<snr>"` key (`"<scale>@<snr> video blanked"` with
    `blank_video`), in record order."""
    scales = [model.config.normalize_scale(scale) for scale in (scales or model.config.scales)]
    conditions = [(snr_db, scale, blank_video) for snr_db in snrs_db for scale in scales]
    return _evaluate_conditions(
        model, processor, records, conditions, noise, batch_size, generate_kwargs, process_index, num_processes
    )


@torch.no_grad()
def evaluate_sweep(
    model: LlamaMTSKForConditionalGeneration,
    processor: LlamaMTSKProcessor,
    records: Sequence[dict[str, Any]],
    scales: Sequence[tuple] | None = None,
    snrs_db: Sequence[float | None] = (None,),
    noise: NoiseSource | None = None,
    noise_scales: Sequence[tuple] | None = None,
    blank_video: bool = False,
    **kwargs: Any,
) -> tuple[list[ScaleResult], dict[str, list[str]]]:
    """`evaluate_scales` (whose other arguments are `kwargs`) over a noise sweep and the video ablation: clean audio
    (None in `snrs_db`) at `scales` (default: every trained scale), the other SNRs at `noise_scales` (default:
    `scales`), then with `blank_video` every SNR of `snrs_db` at `noise_scales` again with the video blanked. The
    noisy SNRs and the ablation can so be kept to a few scales, and the evaluation short, while the clean row of every
    scale stays. Each batch's audio is encoded once per SNR for all of these rows."""
    scales = [model.config.normalize_scale(scale) for scale in (scales or model.config.scales)]
    if noise_scales is None:
        noise_scales = scales
        conditions = [(snr_db, scale, False) for snr_db in snrs_db for scale in scales]
    else:
        noise_scales = [model.config.normalize_scale(scale) for scale in noise_scales]
        conditions = [(snr_db, scale, False) for snr_db in snrs_db if snr_db is None for scale in scales]
        conditions += [(snr_db, scale, False) for snr_db in snrs_db if snr_db is not None for scale in noise_scales]
    if blank_video:
        conditions += [(snr_db, scale, True) for snr_db in snrs_db for scale in noise_scales]
    return _evaluate_conditions(model, processor, records, conditions, noise, **kwargs)


def _evaluate_conditions(
    model: LlamaMTSKForConditionalGeneration,
    processor: LlamaMTSKProcessor,
    records: Sequence[dict[str, Any]],
    conditions: Sequence[Condition],
    noise: NoiseSource | None,
    batch_size: int = 16,
    generate_kwargs: dict[str, Any] | None = None,
    process_index: int = 0,
    num_processes: int = 1,
) -> tuple[list[ScaleResult], dict[str, list[str]]]:
    """The results of `conditions`, in their order, and their hypotheses. Per batch the media are decoded once, the
    audio mixed and encoded once per SNR, and every condition of that SNR decoded from that. A row's seconds are its
    generate calls plus the audio encoding it used (shared with the other rows of its SNR, but part of what a
    transcription at that scale costs)."""
    if any(blank for _, _, blank in conditions) and model.config.modality != "audiovisual":
        raise ValueError(
            "blank_video measures what the video adds to the audio: it needs an audiovisual model, got modality "
            f"{model.config.modality!r}"
        )
    model.eval()
    generate_kwargs = {"max_new_tokens": 32, "num_beams": 1, "do_sample": False, **(generate_kwargs or {})}
    flops_per_token = model.llm_flops_per_token()
    device = next(model.parameters()).device
    batch_starts = range(0, len(records), batch_size)
    collators = []
    for snr_db in dict.fromkeys(snr_db for snr_db, _, _ in conditions):
        if snr_db is not None and model.config.uses_audio and noise is None:
            raise ValueError(f"Evaluating at {snr_db} dB SNR needs a noise source (a noise file or corpus babble)")
        augmentation = AugmentationConfig(eval_snr_db=snr_db)
        collators.append(
            (snr_db, MTSKCollator(processor, modality=model.config.modality, augmentation=augmentation, noise=noise))
        )
    # (condition index, batch index) -> (normalised transcripts, LLM input tokens, LLM tokens processed, seconds)
    outputs: dict[tuple[int, int], tuple[list[str], list[int], list[int], float]] = {}
    for batch_index in range(process_index, len(batch_starts), num_processes):
        start = batch_starts[batch_index]
        decoded = decode_records(records[start : start + batch_size], processor, model.config.modality)
        for snr_db, collator in collators:
            inputs = {name: value.to(device) for name, value in collator(decoded).items() if name != "labels"}
            encoding_seconds = 0.0
            if model.config.uses_audio:
                started = time.monotonic()
                inputs.update(
                    model.precompute_audio_encoder_outputs(inputs.pop("input_features"), inputs.pop("input_features_mask"))
                )
                encoding_seconds = time.monotonic() - started
            for index, (condition_snr, scale, blank) in enumerate(conditions):
                if condition_snr != snr_db:
                    continue
                condition_inputs = dict(inputs)
                if blank:
                    condition_inputs["pixel_values_videos"] = torch.zeros_like(inputs["pixel_values_videos"])
                tokens = model.count_llm_input_tokens(scale, **condition_inputs).tolist()
                started = time.monotonic()
                generated = model.generate(**condition_inputs, scale=scale, return_dict_in_generate=True, **generate_kwargs)
                seconds = time.monotonic() - started + encoding_seconds
                texts = [normalize_text(text) for text in processor.batch_decode(generated.sequences)]
                outputs[(index, batch_index)] = (texts, tokens, generated.llm_tokens.tolist(), seconds)
    if num_processes > 1:
        gathered: list[dict] = [{} for _ in range(num_processes)]
        torch.distributed.all_gather_object(gathered, outputs)
        outputs = {key: value for process_outputs in gathered for key, value in process_outputs.items()}

    references = [normalize_text(record["text"]) for record in records]
    results, hypotheses = [], {}
    for index, (snr_db, scale, blank) in enumerate(conditions):
        per_batch = [outputs[(index, batch_index)] for batch_index in range(len(batch_starts))]
        texts = [text for batch in per_batch for text in batch[0]]
        tokens = [count for batch in per_batch for count in batch[1]]
        processed = [count for batch in per_batch for count in batch[2]]
        seconds = sum(batch[3] for batch in per_batch)
        results.append(
            _result(references, texts, tokens, processed, seconds, flops_per_token, snr_db, audio_rate=scale[0],
                    video_rate=scale[1], blank_video=blank)
        )
        hypotheses[f"{scale}@{snr_db}" + (" video blanked" if blank else "")] = texts
    return results, hypotheses


def _result(
    references: Sequence[str],
    texts: Sequence[str],
    input_tokens: Sequence[int],
    processed_tokens: Sequence[int],
    seconds: float,
    flops_per_token: float,
    snr_db: float | None,
    **fields: Any,
) -> ScaleResult:
    """One report row from the hypotheses and per-clip LLM costs of a decoding run."""
    measures = jiwer.process_words(list(references), list(texts))
    mean_tokens = sum(input_tokens) / len(input_tokens)
    mean_processed = sum(processed_tokens) / len(processed_tokens)
    return ScaleResult(
        **{"audio_rate": None, "video_rate": None, **fields},
        snr_db=snr_db,
        wer=measures.wer,
        errors=measures.substitutions + measures.deletions + measures.insertions,
        reference_words=measures.substitutions + measures.deletions + measures.hits,
        utterances=len(references),
        mean_llm_tokens=mean_tokens,
        mean_llm_tflops=flops_per_token * mean_tokens / 1e12,
        mean_llm_tokens_processed=mean_processed,
        seconds=seconds,
    )


@torch.no_grad()
def evaluate_adaptive(
    model: LlamaMTSKForConditionalGeneration,
    processor: LlamaMTSKProcessor,
    records: Sequence[dict[str, Any]],
    budgets: Sequence[int] = (),
    cascade: bool = True,
    batch_size: int = 16,
    generate_kwargs: dict[str, Any] | None = None,
) -> list[ScaleResult]:
    """Rows for `scale="auto"` at each LLM input token budget and for `scale="cascade"` (at the checkpoint's calibrated
    threshold), on clean audio. LLM tokens count input and generated tokens of every pass."""
    model.eval()
    generate_kwargs = {"max_new_tokens": 32, "num_beams": 1, "do_sample": False, **(generate_kwargs or {})}
    references = [normalize_text(record["text"]) for record in records]
    collator = MTSKCollator(processor, modality=model.config.modality, training=False)
    device = next(model.parameters()).device
    batches = [collator(records[start : start + batch_size]) for start in range(0, len(records), batch_size)]
    threshold = getattr(model.generation_config, "cascade_threshold", None)
    modes = [("auto", {"max_llm_tokens": int(budget)}) for budget in budgets]
    if cascade:
        if threshold is None:
            raise ValueError("A cascade row needs a calibrated threshold: evaluate with --calibrate_cascade first")
        modes.append(("cascade", {}))
    results = []
    for mode, options in modes:
        texts, input_tokens, processed, final = [], [], [], []
        seconds = 0.0
        for batch in batches:
            inputs = {name: value.to(device) for name, value in batch.items() if name != "labels"}
            started = time.monotonic()
            generated = model.generate(**inputs, scale=mode, return_dict_in_generate=True, **options, **generate_kwargs)
            seconds += time.monotonic() - started
            texts += [normalize_text(text) for text in processor.batch_decode(generated.sequences)]
            processed += generated.llm_tokens.tolist()
            for row, scale in enumerate(generated.scales):
                input_tokens.append(int(model.count_llm_input_tokens(scale, **{k: v[row : row + 1] for k, v in inputs.items()})[0]))
            final += [str(scale) for scale in generated.scales]
        results.append(
            _result(
                references, texts, input_tokens, processed, seconds, model.llm_flops_per_token(), None, mode=mode,
                max_llm_tokens=options.get("max_llm_tokens"),
                cascade_threshold=threshold if mode == "cascade" else None,
                final_scales={scale: final.count(scale) / len(final) for scale in dict.fromkeys(final)},
            )
        )
    return results


def _scale_label(result: ScaleResult) -> str:
    if result.mode == "auto":
        return f"auto, <= {result.max_llm_tokens} tokens"
    if result.mode == "cascade":
        return f"cascade, threshold {result.cascade_threshold:.3g}"
    label = f"({result.audio_rate}, {result.video_rate})".replace("None", "-")
    return label + (", video blanked" if result.blank_video else "")


def markdown_table(results: Sequence[ScaleResult]) -> str:
    lines = [
        "| scale (audio, video) | SNR (dB) | WER (%) | errors / words | LLM input tokens | LLM tokens processed "
        "| LLM TFLOPs | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        snr = "clean" if result.snr_db is None else f"{result.snr_db:g}"
        lines.append(
            f"| {_scale_label(result)} | {snr} | {100 * result.wer:.1f} | {result.errors} / {result.reference_words} "
            f"| {result.mean_llm_tokens:.1f} | {result.mean_llm_tokens_processed:.1f} | {result.mean_llm_tflops:.4g} "
            f"| {result.seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(results: Sequence[ScaleResult], output_dir: str | Path, title: str = "") -> dict[str, Path]:
    """Writes `eval_report.json`, `eval_report.md` and `wer_vs_tokens.png`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": output_dir / "eval_report.json",
        "markdown": output_dir / "eval_report.md",
        "plot": output_dir / "wer_vs_tokens.png",
    }
    paths["json"].write_text(json.dumps([asdict(result) for result in results], indent=2) + "\n")
    paths["markdown"].write_text((f"# {title}\n\n" if title else "") + markdown_table(results))

    figure, axes = plt.subplots(figsize=(6, 4))
    fixed = [result for result in results if result.mode == "fixed"]
    for snr_db, blank_video in dict.fromkeys((result.snr_db, result.blank_video) for result in fixed):
        curve = sorted(
            (r for r in fixed if r.snr_db == snr_db and r.blank_video == blank_video),
            key=lambda r: r.mean_llm_tokens_processed,
        )
        label = ("clean" if snr_db is None else f"{snr_db:g} dB") + (", video blanked" if blank_video else "")
        axes.plot(
            [r.mean_llm_tokens_processed for r in curve], [100 * r.wer for r in curve], marker="o", label=label,
            linestyle="--" if blank_video else "-",
        )
        for result in curve:
            axes.annotate(_scale_label(result), (result.mean_llm_tokens_processed, 100 * result.wer), fontsize=8)
    for mode, marker in (("auto", "x"), ("cascade", "*")):
        points = [result for result in results if result.mode == mode]
        if points:
            axes.scatter(
                [r.mean_llm_tokens_processed for r in points], [100 * r.wer for r in points], marker=marker, s=80,
                label=f"{mode} (clean)", zorder=3,
            )
    axes.set_xlabel("LLM tokens processed per utterance (mean; input and generated, every pass)")
    axes.set_ylabel("WER (%)")
    axes.set_title(title or "WER against LLM tokens per scale")
    axes.grid(alpha=0.3)
    axes.legend(title="audio")
    figure.tight_layout()
    figure.savefig(paths["plot"], dpi=120)
    plt.close(figure)
    return paths


def wer_table(results: Sequence[ScaleResult]) -> dict[tuple, float]:
    """Clean-audio WER (%) per fixed scale with the video seen, the table the model card shows."""
    return {
        result.scale: round(100 * result.wer, 2)
        for result in results
        if result.snr_db is None and result.mode == "fixed" and not result.blank_video
    }


def main(argv: Sequence[str] | None = None) -> None:
    from transformers import AutoModel, AutoProcessor

    from mtsk_data.records import load_split

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Llama-MTSK checkpoint folder or Hub id")
    parser.add_argument("--data", required=True, help="prepared corpus folder (data/<split>-*.parquet)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output_dir", default=None, help="where the report goes (default: the model folder)")
    parser.add_argument("--scales", default=None, help='e.g. "4,2;16,5" (default: every trained scale)')
    parser.add_argument("--snrs", default=None, help='babble SNRs in dB, e.g. "clean,5,0,-5" (default: clean)')
    parser.add_argument("--noise_file", default=None, help="noise wav/flac for --snrs (default: babble of the train split)")
    parser.add_argument(
        "--blank_video", action="store_true",
        help="audio-visual models: also evaluate every scale and SNR with the video blanked (rows of their own)",
    )
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--budgets", default=None, help='scale="auto" rows at these LLM input token budgets, e.g. "60,90"')
    parser.add_argument(
        "--calibrate_cascade", action="store_true",
        help="choose the cascade threshold on --calibration_split and store it in the checkpoint's generation config",
    )
    parser.add_argument("--calibration_split", default="validation")
    parser.add_argument(
        "--max_wer_increase", type=float, default=0.5, help="calibration target: WER (points) above the finest scale's"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if present")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="CUDA: decode with a static KV cache and the LLM's decoding step compiled (greedy decoding; transformers "
        "runs beam search eagerly)",
    )
    args = parser.parse_args(argv)
    if args.compile and torch.device(args.device).type != "cuda":
        parser.error(f"--compile needs a CUDA device (transformers compiles decoding on accelerators), got {args.device}")

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).to(args.device)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    records = load_split(args.data, args.split)
    if args.max_samples is not None:
        records = records.select(range(min(args.max_samples, len(records))))
    records = [records[index] for index in range(len(records))]
    scales = [tuple(int(rate) for rate in item.split(",")) for item in args.scales.split(";")] if args.scales else None
    snrs = [None if item == "clean" else float(item) for item in args.snrs.split(",")] if args.snrs else [None]
    noise = None
    if any(snr is not None for snr in snrs):
        noise = NoiseSource.from_file(args.noise_file) if args.noise_file else babble_from_records(load_split(args.data, "train"))
    results, _ = evaluate_sweep(
        model,
        processor,
        records,
        scales=scales,
        snrs_db=snrs,
        noise=noise,
        blank_video=args.blank_video,
        batch_size=args.batch_size,
        generate_kwargs={
            "num_beams": args.num_beams,
            "max_new_tokens": args.max_new_tokens,
            # On CUDA, transformers compiles the decoding step whenever the KV cache is static.
            **({"cache_implementation": "static"} if args.compile else {}),
        },
    )
    generate_kwargs = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    if args.calibrate_cascade:
        calibrate_and_store(model, processor, load_split(args.data, args.calibration_split), args, generate_kwargs)
    budgets = [int(budget) for budget in args.budgets.split(",")] if args.budgets else []
    has_threshold = getattr(model.generation_config, "cascade_threshold", None) is not None
    if budgets or has_threshold:
        results += evaluate_adaptive(
            model, processor, records, budgets, cascade=has_threshold, batch_size=args.batch_size,
            generate_kwargs=generate_kwargs,
        )
    paths = write_report(results, args.output_dir or args.model, title=f"{args.model} on {args.split}")
    cascade_rows = [result for result in results if result.mode == "cascade"]
    if cascade_rows and Path(args.model).is_dir() and args.output_dir is None:
        update_model_card(model, Path(args.model), f"{Path(args.data).name} {args.split}", results, cascade_rows[0])
    print(markdown_table(results))
    print("wrote", ", ".join(str(path) for path in paths.values()))


def update_model_card(model, folder: Path, dataset: str, results: Sequence[ScaleResult], cascade: ScaleResult) -> None:
    """Rewrites the checkpoint's model card with the fixed scales' WER and the cascade's row beside the finest scale's."""
    from mtsk_train.hub import model_card

    finest_scale = model.cascade_order()[-1]
    finest = next(
        r for r in results if r.mode == "fixed" and r.scale == finest_scale and r.snr_db is None and not r.blank_video
    )
    card = model_card(
        model.config,
        folder.resolve().name,
        wer_table={dataset: wer_table(results)},
        cascade={
            "dataset": dataset,
            "wer": 100 * cascade.wer,
            "llm_tokens": cascade.mean_llm_tokens_processed,
            "finest_wer": 100 * finest.wer,
            "finest_llm_tokens": finest.mean_llm_tokens_processed,
            "threshold": cascade.cascade_threshold,
            "confidence": getattr(model.generation_config, "cascade_confidence", "mean"),
        },
    )
    card.save(folder / "README.md")


def calibrate_and_store(model, processor, split, args: argparse.Namespace, generate_kwargs: dict[str, Any]) -> None:
    """Chooses the cascade's threshold and confidence on `split`, stores them in the checkpoint folder's generation
    config and writes the frontier to `cascade_calibration.json` there."""
    from mtsk_train.cascade import choose_threshold, decode_every_scale

    folder = Path(args.model)
    if not folder.is_dir():
        raise ValueError(f"--calibrate_cascade stores the threshold in the checkpoint folder; {args.model} is not one")
    records = [split[index] for index in range(len(split))]
    decodes = decode_every_scale(model, processor, records, batch_size=args.batch_size, generate_kwargs=generate_kwargs)
    references = [normalize_text(record["text"]) for record in records]
    best, frontier = choose_threshold(decodes, references, max_wer_increase=args.max_wer_increase / 100)
    model.generation_config.cascade_threshold = best.threshold
    model.generation_config.cascade_confidence = best.confidence
    # A generation config marked as derived from the model config is rebuilt on loading, which would drop the threshold.
    model.generation_config._from_model_config = False
    model.generation_config.save_pretrained(folder)
    finest = decodes[-1]
    calibration = {
        "split": args.calibration_split,
        "clips": len(records),
        "max_wer_increase_points": args.max_wer_increase,
        "finest_scale": list(finest.scale),
        "finest_wer": jiwer.wer(references, finest.hypotheses),
        "finest_mean_llm_tokens_processed": sum(finest.llm_tokens) / len(finest.llm_tokens),
        "chosen": asdict(best),
        "frontier": [asdict(point) for point in frontier],
    }
    (folder / "cascade_calibration.json").write_text(json.dumps(calibration, indent=2, default=str) + "\n")
    print(
        f"cascade: {best.confidence} confidence >= {best.threshold:.4g}: WER {100 * best.wer:.2f} % at "
        f"{best.mean_llm_tokens:.1f} LLM tokens per clip on {args.calibration_split} (finest scale "
        f"{100 * calibration['finest_wer']:.2f} % at {calibration['finest_mean_llm_tokens_processed']:.1f})"
    )


if __name__ == "__main__":
    main()
