"""eSpeak NG reading random strings of common words: the word ranking, the plan, the shards, the command line."""

import json
import subprocess
from pathlib import Path

import pytest

from mtsk_data.records import load_split
from mtsk_data.synthetic import espeak_words
from mtsk_data.synthetic.corpus import SPEAKERS
from mtsk_data.synthetic.espeak_words import common_words, generate, plan_clips


class WordPieceTokenizer:
    """Stands in for a BPE tokenizer: a word in `vocabulary` is one token (its position), any other several."""

    def __init__(self, vocabulary: list[str]):
        self.ids = {" " + word: index for index, word in enumerate(vocabulary)}

    def __call__(self, texts: list[str], add_special_tokens: bool):
        return {"input_ids": [[self.ids[text]] if text in self.ids else [900, 901] for text in texts]}


def test_common_words_are_single_tokens_in_token_order_without_abbreviations():
    tokenizer = WordPieceTokenizer(["the", "ex", "of", "conference", "pl", "a", "muted", "zebra"])
    word_list = ["zebra", "Paris", "muted", "the", "ex", "of", "pl", "a", "conference", "isn't", "unmuted"]
    assert common_words(word_list, tokenizer, 5) == ["the", "of", "conference", "a", "muted"]
    with pytest.raises(ValueError, match="only 6 words are single tokens, 7 asked for"):
        common_words(word_list, tokenizer, 7)


def test_plan_draws_one_to_twelve_words_per_clip_deterministically():
    words = [f"word{letter}" for letter in "abcdefghij"]
    plans = plan_clips(words, 300, seed=3)
    assert plans == plan_clips(words, 300, seed=3)
    assert plans != plan_clips(words, 300, seed=4)
    lengths = [len(plan.text.split()) for plan in plans]
    assert min(lengths) == 1 and max(lengths) == 12
    assert {word for plan in plans for word in plan.text.split()} == set(words)
    assert {plan.speaker for plan in plans} == {speaker.name for speaker in SPEAKERS}
    assert len({plan.id for plan in plans}) == 300


def test_generate_writes_audio_only_train_shards_and_refuses_other_settings(tmp_path):
    words = ["river", "seven", "budget", "calm", "window"]
    summary = generate(str(tmp_path), words, clips=6, seed=0, workers=1)
    assert summary["clips"] == 6 and summary["generated"] == 6
    records = load_split(str(tmp_path), "train")
    plans = plan_clips(words, 6, seed=0)
    assert records["text"] == [plan.text for plan in plans]
    for record in records:
        assert record["video"] is None and record["n_frames"] == 0
        assert 0.4 < record["duration"] < 12
    assert generate(str(tmp_path), words, clips=6, seed=0, workers=1)["generated"] == 0  # finished: nothing redone
    with pytest.raises(ValueError, match="was generated with"):
        generate(str(tmp_path), words[:4], clips=6, seed=0, workers=1)
    settings = json.loads((tmp_path / "generation.json").read_text())
    assert settings["vocabulary_size"] == 5 and settings["clips"] == 6


def test_command_line_reads_the_word_list_from_a_debian_package(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    word_file = staging / espeak_words.WORDLIST_FILE
    word_file.parent.mkdir(parents=True)
    word_file.write_text("calm\nriver\nRiver's\nex\nseven\n")
    (staging / "DEBIAN").mkdir()
    (staging / "DEBIAN" / "control").write_text(
        "Package: wamerican\nVersion: 1-1\nArchitecture: all\nMaintainer: test <test@example.org>\n"
        "Description: fake package for a test\n"
    )
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--build", str(staging), str(debs / "wamerican_1-1_all.deb")], check=True, capture_output=True)
    tokenizer = WordPieceTokenizer(["seven", "river", "ex", "calm"])
    monkeypatch.setattr("mtsk_train.assemble.load_tokenizer", lambda source: tokenizer)
    out = tmp_path / "out"
    espeak_words.main(["--out", str(out), "--debs", str(debs), "--clips", "3", "--vocabulary-size", "3", "--workers", "1"])
    texts = load_split(str(out), "train")["text"]
    assert len(texts) == 3
    assert set(" ".join(texts).split()) <= {"seven", "river", "calm"}
    assert "3 words" in Path(out / "README.md").read_text()
