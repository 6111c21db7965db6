"""eSpeak NG reading random strings of common English words: audio-only training clips with a wide vocabulary.

A small real corpus teaches few words and few sentences: the 434 training prompts of the Asterisk corpus (one
speaker) can be learnt by heart, and a model that has learnt them answers an unseen prompt with a seen one. Strings
of words in no grammar ("river seven budget the calm") can only be transcribed by listening, and thousands of
different words tie the projectors to what the audio says rather than to which sentence it resembles.

The words are the lower-case entries of Debian's ``wamerican`` word list (SCOWL, Copyright 2000-2011 Kevin Atkinson
and others; use, copying and distribution permitted with its notice) that the LLM's tokenizer writes as one token
after a space, taken in the order of their token ids: a byte-level BPE tokenizer numbers its merges by frequency, so
this puts common words first. Words of one or two letters are kept only when they are common English words (the
list also holds abbreviations such as "ex" or "pl").

    python -m mtsk_data.synthetic.espeak_words --out data/espeak_words --clips 1000

writes the ``train`` split (clips of 1 to 12 words spoken by the 16 eSpeak voices of
:mod:`mtsk_data.synthetic.corpus`) in the shard layout of :mod:`mtsk_data.records`; the same arguments give the same
clips.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import time
from dataclasses import dataclass

import numpy as np

from mtsk_data.asterisk import fetch_packages
from mtsk_data.records import ShardWriter, make_record
from mtsk_data.synthetic.corpus import SPEAKERS, check_generation_settings, synthesize_in_workers, synthesize_speech


WORDLIST_PACKAGE = "wamerican"
WORDLIST_FILE = "usr/share/dict/american-english"
SHORT_WORDS = frozenset(
    "a i am an as at be by do go he hi if in is it me my no of oh ok on or so to up us we".split()
)


def common_words(word_list: list[str], tokenizer, count: int) -> list[str]:
    """The first ``count`` words of ``word_list`` that ``tokenizer`` encodes as one token after a space, ordered by
    that token's id (frequent first for a BPE tokenizer); only lower-case a-z words, short ones from SHORT_WORDS."""
    candidates = sorted(
        {word for word in word_list if re.fullmatch(r"[a-z]+", word) and (len(word) > 2 or word in SHORT_WORDS)}
    )
    encoded = tokenizer([" " + word for word in candidates], add_special_tokens=False)["input_ids"]
    single = sorted((ids[0], word) for word, ids in zip(candidates, encoded) if len(ids) == 1)
    if len(single) < count:
        raise ValueError(f"common_words: only {len(single)} words are single tokens, {count} asked for")
    return [word for _, word in single[:count]]


@dataclass(frozen=True)
class ClipPlan:
    id: str
    text: str
    speaker: str
    seed: int


def plan_clips(words: list[str], clips: int, seed: int, max_words: int = 12) -> list[ClipPlan]:
    """``clips`` strings of 1 to ``max_words`` words drawn uniformly from ``words``, each with a speaker and a seed."""
    rng = np.random.default_rng([seed, 17])
    plans = []
    for index in range(clips):
        length = int(rng.integers(1, max_words + 1))
        text = " ".join(words[int(position)] for position in rng.integers(0, len(words), size=length))
        speaker = SPEAKERS[int(rng.integers(len(SPEAKERS)))].name
        plans.append(ClipPlan(f"words-{index:05d}", text, speaker, int(rng.integers(0, 2**31 - 1))))
    return plans


def make_clip_record(plan: ClipPlan) -> dict:
    audio, _, _ = synthesize_speech(plan.text, plan.speaker, np.random.default_rng(plan.seed))
    return make_record(plan.id, plan.text, plan.speaker, audio, None)


def write_clips(out_dir: str, plans: list[ClipPlan], workers: int, started: float) -> dict:
    """Speak and write the ``plans`` that ``out_dir``'s train shards do not hold yet (an interrupted run resumes);
    returns clips, clips generated now, hours generated and seconds taken since ``started`` (`time.perf_counter`)."""
    seconds = 0.0
    with ShardWriter(out_dir, "train") as writer:
        done = writer.done_ids()
        todo = [plan for plan in plans if plan.id not in done]
        for record in synthesize_in_workers(make_clip_record, todo, workers):
            writer.write(record)
            seconds += record["duration"]
    return {
        "clips": len(plans),
        "generated": len(todo),
        "hours_generated": seconds / 3600,
        "seconds_taken": time.perf_counter() - started,
    }


def read_word_list(work_dir: str, debs_dir: str | None = None) -> list[str]:
    """The entries of the ``wamerican`` word list, fetched (or taken from ``debs_dir``) and unpacked under
    ``work_dir`` (no root needed)."""
    extracted = fetch_packages(work_dir, debs_dir, packages=(WORDLIST_PACKAGE,))
    with open(os.path.join(extracted, WORDLIST_FILE), encoding="utf-8") as file:
        return [line.strip() for line in file if line.strip()]


# The front matter of a generated audio-only corpus's dataset card: one train split, its parquet shards.
TRAIN_ONLY_CARD_HEADER = [
    "---",
    "configs:",
    "- config_name: default",
    "  data_files:",
    "  - split: train",
    "    path: data/train-*.parquet",
    "---",
]


def write_dataset_card(out_dir: str, settings: dict) -> None:
    text = "\n".join([
        *TRAIN_ONLY_CARD_HEADER,
        "# eSpeak NG reading random strings of common English words (generated, audio only)",
        "",
        f"Made by `python -m mtsk_data.synthetic.espeak_words` ({settings}): {settings['clips']} clips of 1 to 12 words",
        f"drawn from {settings['vocabulary_size']} words (by default the most frequent words of Debian's wamerican",
        "list, SCOWL, Copyright 2000-2011 Kevin Atkinson and others, that the LLM's tokenizer holds as one token), spoken by",
        f"{len(SPEAKERS)} eSpeak NG voices at 15-30 dB SNR. Columns: id, text, speaker, duration (s), audio (16 kHz WAV).",
        "",
    ])  # fmt: skip
    with open(os.path.join(out_dir, "README.md"), "w") as file:
        file.write(text)


def generate(out_dir: str, words: list[str], clips: int, seed: int = 0, workers: int = 2) -> dict:
    """Generate (or finish) ``clips`` clips of ``words`` under ``out_dir``; returns clips, clips generated now, hours
    generated and seconds taken. A folder made with other arguments is refused."""
    started = time.perf_counter()
    vocabulary = hashlib.sha256("\n".join(words).encode()).hexdigest()[:16]
    settings = {"clips": clips, "seed": seed, "vocabulary_size": len(words), "vocabulary_sha256": vocabulary}
    check_generation_settings(out_dir, settings, "espeak_words")
    summary = write_clips(out_dir, plan_clips(words, clips, seed), workers, started)
    write_dataset_card(out_dir, settings)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="eSpeak NG reading random strings of common English words.")
    parser.add_argument("--out", required=True, help="output folder (parquet shards under OUT/data)")
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--vocabulary-size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", default="smollm2", help="the LLM whose tokenizer ranks the words")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--debs", help="a folder holding the wamerican .deb (nothing is downloaded)")
    args = parser.parse_args(argv)
    from mtsk_train.assemble import load_tokenizer

    word_list = read_word_list(os.path.join(args.out, "debian"), args.debs)
    words = common_words(word_list, load_tokenizer(args.tokenizer), args.vocabulary_size)
    summary = generate(args.out, words, args.clips, args.seed, args.workers)
    print(f"{summary} -> {args.out}")


if __name__ == "__main__":
    main()
