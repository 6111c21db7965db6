"""The anchor a Whisper-encoder Llama-MTSK is judged against: the same Whisper checkpoint with its own decoder.

    python -m mtsk_train.whisper_anchor --whisper whisper-tiny.en --data data/asterisk --split test \
        --report outputs/real_asr/final

`--report DIR` writes `DIR/whisper_anchor.json` and adds the anchor's row to the evaluation report `DIR/eval_report.md`
that training wrote for the same split.

Whisper writes numbers as digits ("Press 1") where corpus transcripts spell them ("press one"); its transcripts have
their numbers spelled out before the shared normalisation, so that a digit is not counted as an error. The WER is
corpus-level, as in `mtsk_train.evaluation`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jiwer
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from llama_mtsk.configuration_llama_mtsk import SAMPLING_RATE
from llama_mtsk.processing_llama_mtsk import normalize_text
from mtsk_data.collator import decode_audio


_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(number: int) -> str:
    """An integer below a million in words, as it is usually read: 42 -> "forty two", 305 -> "three hundred five"."""
    if not 0 <= number < 1_000_000:
        raise ValueError(f"number_words reads integers from 0 to 999999, got {number}")
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens - 2] + ("" if ones == 0 else " " + _ONES[ones])
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        return f"{_ONES[hundreds]} hundred" + ("" if rest == 0 else " " + number_words(rest))
    thousands, rest = divmod(number, 1000)
    return f"{number_words(thousands)} thousand" + ("" if rest == 0 else " " + number_words(rest))


def spell_numbers(text: str) -> str:
    """Every run of digits (commas between thousands allowed) spelled out in words; longer numbers stay digits."""

    def spell(match: re.Match) -> str:
        number = int(match.group().replace(",", ""))
        return f" {number_words(number)} " if number < 1_000_000 else match.group()

    return re.sub(r"\d{1,3}(?:,\d{3})+|\d+", spell, text)


@torch.no_grad()
def evaluate_whisper_decoder(
    whisper: str | Path,
    records: Sequence[dict[str, Any]],
    batch_size: int = 16,
    max_new_tokens: int = 128,
) -> dict[str, Any]:
    """Transcribes `records` (corpus rows with `audio` and `text`) with a Whisper checkpoint's own encoder and
    decoder (greedy); returns the WER row: system, WER, errors, reference words, utterances, seconds, hypotheses."""
    model = WhisperForConditionalGeneration.from_pretrained(str(whisper), dtype=torch.float32).eval()
    processor = WhisperProcessor.from_pretrained(str(whisper))
    references = [normalize_text(record["text"]) for record in records]
    hypotheses: list[str] = []
    started = time.monotonic()
    for start in range(0, len(records), batch_size):
        waveforms = [decode_audio(record) for record in records[start : start + batch_size]]
        features = processor.feature_extractor(waveforms, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
        generated = model.generate(features, max_new_tokens=max_new_tokens)
        texts = processor.batch_decode(generated, skip_special_tokens=True)
        hypotheses += [normalize_text(spell_numbers(text)) for text in texts]
    seconds = time.monotonic() - started
    measures = jiwer.process_words(references, hypotheses)
    return {
        "system": f"{Path(str(whisper)).name} (own decoder)",
        "wer": measures.wer,
        "errors": measures.substitutions + measures.deletions + measures.insertions,
        "reference_words": measures.substitutions + measures.deletions + measures.hits,
        "utterances": len(records),
        "seconds": seconds,
        "hypotheses": hypotheses,
    }


def main(argv: Sequence[str] | None = None) -> None:
    from mtsk_data.records import load_split
    from mtsk_train.assemble import WHISPER_TINY_EN

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper", default=WHISPER_TINY_EN, help="Whisper folder or Hub id, or whisper-tiny.en")
    parser.add_argument("--data", required=True, help="prepared corpus folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--report", help="a checkpoint folder with eval_report.md: add the anchor's row and JSON there")
    args = parser.parse_args(argv)
    whisper = args.whisper
    if whisper == WHISPER_TINY_EN:
        from mtsk_convert.whisper_ct2 import whisper_tiny_en_folder

        whisper = whisper_tiny_en_folder()
    split = load_split(args.data, args.split)
    result = evaluate_whisper_decoder(whisper, [split[index] for index in range(len(split))])
    print(f"{result['system']}: WER {100 * result['wer']:.2f} % ({result['errors']} / {result['reference_words']} words)")
    if args.report:
        add_to_report(result, Path(args.report), args.split)


def add_to_report(result: dict[str, Any], report_dir: Path, split: str) -> None:
    """Writes `whisper_anchor.json` beside `eval_report.md` and appends the anchor's row to that report."""
    report = report_dir / "eval_report.md"
    if not report.is_file():
        raise FileNotFoundError(f"{report} does not exist: evaluate the checkpoint first (train.py writes it)")
    (report_dir / "whisper_anchor.json").write_text(json.dumps(result, indent=2) + "\n")
    row = (
        f"\n## Anchor: the same Whisper with its own decoder ({split} split, numbers spelled out)\n\n"
        "| system | WER (%) | errors / words |\n|---|---|---|\n"
        f"| {result['system']} | {100 * result['wer']:.1f} | {result['errors']} / {result['reference_words']} |\n"
    )
    with report.open("a") as handle:
        handle.write(row)


if __name__ == "__main__":
    main()
