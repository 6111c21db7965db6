"""Word error rate per scale, LLM input tokens and estimated LLM compute, written as a report and a trade-off plot.

    python -m mtsk_train.evaluation --model outputs/demo/final --data data/embedded --split test

writes `eval_report.json` (one entry per scale and SNR: rates, WER as a fraction as jiwer gives it, errors, reference
words, mean LLM input tokens, estimated LLM TFLOPs), `eval_report.md` (the same as a table, WER in %) and
`wer_vs_tokens.png` (WER against LLM tokens per scale, the paper's trade-off picture) into `--output_dir` (default: the
model folder).

WER is corpus-level: total word edits over total reference words (jiwer), on lower-cased whitespace-separated words
with punctuation removed, as in SPEC.md section 7. LLM compute is estimated as tokens x `model.llm_flops_per_token()`
(2 x the LLM's parameters without its input embedding), the rule the paper's token/TFLOPs table follows.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jiwer
import torch

from llama_mtsk import LlamaMTSKForConditionalGeneration
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor, normalize_text
from mtsk_data.augment import AugmentationConfig, NoiseSource
from mtsk_data.collator import MTSKCollator, babble_from_records


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

    @property
    def scale(self) -> tuple[int | None, int | None]:
        return (self.audio_rate, self.video_rate)


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
) -> tuple[list[ScaleResult], dict[str, list[str]]]:
    """Transcribes `records` at every scale (default: every trained scale) and SNR (None = clean audio).

    With `num_processes` > 1 (torch.distributed initialised, every process calling with the same arguments and the
    whole model, not FSDP shards: each process generates on its own), process `process_index` transcribes every
    `num_processes`-th batch and the transcripts are gathered, so every process returns what one process would.

    Returns the results and the hypotheses per `"<scale>@<snr>"` key, in record order."""
    model.eval()
    scales = [model.config.normalize_scale(scale) for scale in (scales or model.config.scales)]
    generate_kwargs = {"max_new_tokens": 32, "num_beams": 1, "do_sample": False, **(generate_kwargs or {})}
    flops_per_token = model.llm_flops_per_token()
    device = next(model.parameters()).device
    batch_starts = range(0, len(records), batch_size)
    # (SNR, scale, batch index) -> (normalised transcripts, LLM input tokens per record) of this process's batches
    outputs: dict[tuple, tuple[list[str], list[int]]] = {}
    for snr_db in snrs_db:
        if snr_db is not None and model.config.uses_audio and noise is None:
            raise ValueError(f"Evaluating at {snr_db} dB SNR needs a noise source (a noise file or corpus babble)")
        collator = MTSKCollator(
            processor,
            modality=model.config.modality,
            training=False,
            augmentation=AugmentationConfig(eval_snr_db=snr_db),
            noise=noise,
        )
        for batch_index in range(process_index, len(batch_starts), num_processes):
            batch = collator(records[batch_starts[batch_index] : batch_starts[batch_index] + batch_size])
            inputs = {name: value.to(device) for name, value in batch.items() if name != "labels"}
            for scale in scales:
                tokens = model.count_llm_input_tokens(scale, **inputs).tolist()
                generated = model.generate(**inputs, scale=scale, **generate_kwargs)
                texts = [normalize_text(text) for text in processor.batch_decode(generated)]
                outputs[(snr_db, scale, batch_index)] = (texts, tokens)
    if num_processes > 1:
        gathered: list[dict] = [{} for _ in range(num_processes)]
        torch.distributed.all_gather_object(gathered, outputs)
        outputs = {key: value for process_outputs in gathered for key, value in process_outputs.items()}

    references = [normalize_text(record["text"]) for record in records]
    results, hypotheses = [], {}
    for snr_db in snrs_db:
        for scale in scales:
            per_batch = [outputs[(snr_db, scale, index)] for index in range(len(batch_starts))]
            texts = [text for batch_texts, _ in per_batch for text in batch_texts]
            tokens = [count for _, batch_tokens in per_batch for count in batch_tokens]
            measures = jiwer.process_words(references, texts)
            errors = measures.substitutions + measures.deletions + measures.insertions
            reference_words = measures.substitutions + measures.deletions + measures.hits
            mean_tokens = sum(tokens) / len(tokens)
            results.append(
                ScaleResult(
                    audio_rate=scale[0],
                    video_rate=scale[1],
                    snr_db=snr_db,
                    wer=measures.wer,
                    errors=errors,
                    reference_words=reference_words,
                    utterances=len(records),
                    mean_llm_tokens=mean_tokens,
                    mean_llm_tflops=flops_per_token * mean_tokens / 1e12,
                )
            )
            hypotheses[f"{scale}@{snr_db}"] = texts
    return results, hypotheses


def _scale_label(result: ScaleResult) -> str:
    return f"({result.audio_rate}, {result.video_rate})".replace("None", "-")


def markdown_table(results: Sequence[ScaleResult]) -> str:
    lines = [
        "| scale (audio, video) | SNR (dB) | WER (%) | errors / words | LLM tokens | LLM TFLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        snr = "clean" if result.snr_db is None else f"{result.snr_db:g}"
        lines.append(
            f"| {_scale_label(result)} | {snr} | {100 * result.wer:.1f} | {result.errors} / {result.reference_words} "
            f"| {result.mean_llm_tokens:.1f} | {result.mean_llm_tflops:.4g} |"
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
    for snr_db in dict.fromkeys(result.snr_db for result in results):
        curve = sorted((r for r in results if r.snr_db == snr_db), key=lambda r: r.mean_llm_tokens)
        label = "clean" if snr_db is None else f"{snr_db:g} dB"
        axes.plot([r.mean_llm_tokens for r in curve], [100 * r.wer for r in curve], marker="o", label=label)
        for result in curve:
            axes.annotate(_scale_label(result), (result.mean_llm_tokens, 100 * result.wer), fontsize=8)
    axes.set_xlabel("LLM input tokens per utterance (mean)")
    axes.set_ylabel("WER (%)")
    axes.set_title(title or "WER against LLM tokens per scale")
    axes.grid(alpha=0.3)
    axes.legend(title="audio")
    figure.tight_layout()
    figure.savefig(paths["plot"], dpi=120)
    plt.close(figure)
    return paths


def wer_table(results: Sequence[ScaleResult]) -> dict[tuple, float]:
    """Clean-audio WER (%) per scale, the table the model card shows."""
    return {result.scale: round(100 * result.wer, 2) for result in results if result.snr_db is None}


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
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_samples", type=int, default=None)
    args = parser.parse_args(argv)

    model = AutoModel.from_pretrained(args.model, trust_remote_code=True)
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
    results, _ = evaluate_scales(
        model,
        processor,
        records,
        scales=scales,
        snrs_db=snrs,
        noise=noise,
        batch_size=args.batch_size,
        generate_kwargs={"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens},
    )
    paths = write_report(results, args.output_dir or args.model, title=f"{args.model} on {args.split}")
    print(markdown_table(results))
    print("wrote", ", ".join(str(path) for path in paths.values()))


if __name__ == "__main__":
    main()
