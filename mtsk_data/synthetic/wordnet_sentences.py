"""eSpeak NG reading the example sentences of WordNet: audio-only training clips of natural English.

A small real corpus teaches few words and few sentences: the 434 training prompts of the Asterisk corpus (one
speaker) can be learnt by heart, and a model that has learnt them answers an unseen prompt with a seen one. WordNet's
glosses hold about 40,000 short example sentences ("the runners reached the finish line panting heavily") over
every part of the vocabulary: natural text, which the frozen LLM's prior can complete, and far too many sentences to
learn by heart, so the projectors must carry what the audio says.

The sentences come from Debian's ``wordnet-base`` (WordNet 3.0, Copyright 2006 by Princeton University; use, copying
and distribution permitted with its notice, which the dataset card written here repeats in full). Examples of 3 to
14 words of letters and plain punctuation (none with digits) are kept, normalised as every transcript of the project.

    python -m mtsk_data.synthetic.wordnet_sentences --out data/wordnet --clips 1000

writes the ``train`` split (each sentence once, spoken by one of the 16 eSpeak voices of
:mod:`mtsk_data.synthetic.corpus`) in the shard layout of :mod:`mtsk_data.records`; the same arguments give the same
clips.
"""

from __future__ import annotations

import argparse
import os
import re
import time

import numpy as np

from llama_mtsk.processing_llama_mtsk import normalize_text
from mtsk_data.asterisk import fetch_packages
from mtsk_data.synthetic.corpus import SPEAKERS, check_generation_settings
from mtsk_data.synthetic.espeak_words import TRAIN_ONLY_CARD_HEADER, ClipPlan, write_clips


WORDNET_PACKAGE = "wordnet-base"
WORDNET_DIR = "usr/share/wordnet"
WORDNET_DATA_FILES = ("data.adj", "data.adv", "data.noun", "data.verb")
EXAMPLE_PATTERN = re.compile(r"[A-Za-z][A-Za-z ,'.?!-]*")
MIN_WORDS, MAX_WORDS = 3, 14


def read_wordnet(work_dir: str, debs_dir: str | None = None) -> tuple[list[str], str]:
    """The normalised example sentences of WordNet (sorted, each once) and its license notice, from the
    ``wordnet-base`` package fetched (or taken from ``debs_dir``) and unpacked under ``work_dir`` (no root needed)."""
    extracted = fetch_packages(work_dir, debs_dir, packages=(WORDNET_PACKAGE,))
    sentences, notice = set(), []
    for file_name in WORDNET_DATA_FILES:
        with open(os.path.join(extracted, WORDNET_DIR, file_name), encoding="latin-1") as file:
            for line in file:
                if line.startswith("  "):
                    # The license notice heads every data file, one numbered line each: "  1 This software ...".
                    if file_name == WORDNET_DATA_FILES[0]:
                        notice.append(re.sub(r"^\s*\d+ ?", "", line).rstrip())
                    continue
                gloss = line.split("|", 1)[-1]
                for example in re.findall(r'"([^"]+)"', gloss):
                    if EXAMPLE_PATTERN.fullmatch(example) and MIN_WORDS <= len(example.split()) <= MAX_WORDS:
                        sentences.add(normalize_text(example.replace("-", " ")))
    return sorted(sentences), "\n".join(notice).strip()


def plan_clips(sentences: list[str], clips: int, seed: int) -> list[ClipPlan]:
    """``clips`` different sentences drawn at random, each with a speaker and a synthesis seed."""
    if clips > len(sentences):
        raise ValueError(f"wordnet_sentences: {clips} clips asked for, WordNet has {len(sentences)} usable sentences")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(sentences))[:clips]
    plans = []
    for index, position in enumerate(chosen):
        speaker = SPEAKERS[int(rng.integers(len(SPEAKERS)))].name
        plans.append(ClipPlan(f"wordnet-{index:05d}", sentences[position], speaker, int(rng.integers(0, 2**31 - 1))))
    return plans


def write_dataset_card(out_dir: str, settings: dict, notice: str) -> None:
    text = "\n".join([
        *TRAIN_ONLY_CARD_HEADER,
        "# eSpeak NG reading WordNet's example sentences (generated, audio only)",
        "",
        f"Made by `python -m mtsk_data.synthetic.wordnet_sentences` ({settings}): {settings['clips']} example sentences of 3 to",
        f"14 words from WordNet 3.0 (Debian's wordnet-base), each spoken once by one of {len(SPEAKERS)} eSpeak NG voices",
        "at 15-30 dB SNR. Columns: id, text, speaker, duration (s), audio (16 kHz WAV).",
        "",
        "The sentences are WordNet's, under its license:",
        "",
        notice,
        "",
    ])  # fmt: skip
    with open(os.path.join(out_dir, "README.md"), "w") as file:
        file.write(text)


def generate(out_dir: str, clips: int, seed: int = 0, workers: int = 2, debs_dir: str | None = None) -> dict:
    """Generate (or finish) ``clips`` clips under ``out_dir``; returns clips, clips generated now, hours generated and
    seconds taken. A folder made with other arguments is refused."""
    started = time.perf_counter()
    settings = {"clips": clips, "seed": seed}
    check_generation_settings(out_dir, settings, "wordnet_sentences")
    sentences, notice = read_wordnet(os.path.join(out_dir, "debian"), debs_dir)
    summary = write_clips(out_dir, plan_clips(sentences, clips, seed), workers, started)
    write_dataset_card(out_dir, settings, notice)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="eSpeak NG reading the example sentences of WordNet.")
    parser.add_argument("--out", required=True, help="output folder (parquet shards under OUT/data)")
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--debs", help="a folder holding the wordnet-base .deb (nothing is downloaded)")
    args = parser.parse_args(argv)
    summary = generate(args.out, args.clips, args.seed, args.workers, args.debs)
    print(f"{summary} -> {args.out}")


if __name__ == "__main__":
    main()
