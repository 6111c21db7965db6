"""eSpeak NG reading WordNet's example sentences: the sentences kept, the plan, the shards, the license, the command line."""

import subprocess
from pathlib import Path

import pytest

from mtsk_data.records import load_split
from mtsk_data.synthetic import wordnet_sentences
from mtsk_data.synthetic.corpus import SPEAKERS
from mtsk_data.synthetic.wordnet_sentences import plan_clips, read_wordnet


# Two data files in WordNet's layout: the numbered license lines, then one synset per line, its gloss after "|".
NOTICE_LINES = [
    "  1 This software and database is being provided to you, the LICENSEE, by  ",
    "  2 Princeton University under the following license.  ",
    "  3   ",
    "  4 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  ",
]
VERB_SYNSETS = [
    '00001740 29 v 04 breathe 0 | draw air into the lungs; "I can breathe better when the air is clean"; "Inhale deeply"',
    '00002325 29 v 01 pant 0 | breathe noisily; "The runners reached the finish line, panting heavily"',
    '00003142 29 v 01 count 0 | recite numbers; "Count from 1 to 10"; "she said \'no\' to the well-meant offer"',
]
ADJ_SYNSETS = [
    '00001740 00 a 01 able 0 | having the means; "she was able to program her computer"; "a not-so-great idea"',
    '00002098 00 a 01 unable 0 | lacking the means; "unable to get to town without a car because the bus was late and '
    'the train left early"',
]


def build_fake_wordnet_package(debs: Path, staging: Path) -> None:
    wordnet_dir = staging / wordnet_sentences.WORDNET_DIR
    wordnet_dir.mkdir(parents=True)
    files = {"data.adj": ADJ_SYNSETS, "data.adv": [], "data.noun": [], "data.verb": VERB_SYNSETS}
    for name, synsets in files.items():
        (wordnet_dir / name).write_text("\n".join(NOTICE_LINES + synsets) + "\n", encoding="latin-1")
    (staging / "DEBIAN").mkdir()
    (staging / "DEBIAN" / "control").write_text(
        "Package: wordnet-base\nVersion: 1-1\nArchitecture: all\nMaintainer: test <test@example.org>\n"
        "Description: fake package for a test\n"
    )
    debs.mkdir()
    subprocess.run(
        ["dpkg-deb", "--build", str(staging), str(debs / "wordnet-base_1-1_all.deb")], check=True, capture_output=True
    )


def test_read_keeps_plain_examples_of_3_to_14_words_normalised_with_the_license(tmp_path):
    build_fake_wordnet_package(tmp_path / "debs", tmp_path / "staging")
    sentences, notice = read_wordnet(str(tmp_path / "work"), str(tmp_path / "debs"))
    # Dropped: "Inhale deeply" (2 words), "Count from 1 to 10" (digits) and the 19-word example; hyphens become
    # spaces, quotes and commas go.
    assert sentences == [
        "a not so great idea",
        "i can breathe better when the air is clean",
        "she said no to the well meant offer",
        "she was able to program her computer",
        "the runners reached the finish line panting heavily",
    ]
    assert notice.splitlines() == [
        "This software and database is being provided to you, the LICENSEE, by",
        "Princeton University under the following license.",
        "",
        "WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.",
    ]


def test_plan_draws_each_sentence_at_most_once_deterministically():
    sentences = [f"sentence number {index}" for index in range(400)]
    plans = plan_clips(sentences, 300, seed=3)
    assert plans == plan_clips(sentences, 300, seed=3)
    assert plans != plan_clips(sentences, 300, seed=4)
    assert len({plan.text for plan in plans}) == 300 and {plan.text for plan in plans} <= set(sentences)
    assert {plan.speaker for plan in plans} == {speaker.name for speaker in SPEAKERS}
    with pytest.raises(ValueError, match="401 clips asked for, WordNet has 400 usable sentences"):
        plan_clips(sentences, 401, seed=0)


def test_command_line_writes_audio_only_shards_with_the_license_and_refuses_other_settings(tmp_path):
    build_fake_wordnet_package(tmp_path / "debs", tmp_path / "staging")
    out = tmp_path / "out"
    arguments = ["--out", str(out), "--debs", str(tmp_path / "debs"), "--clips", "3", "--workers", "1"]
    wordnet_sentences.main(arguments)
    records = load_split(str(out), "train")
    sentences, _ = read_wordnet(str(tmp_path / "work"), str(tmp_path / "debs"))
    assert records["text"] == [plan.text for plan in plan_clips(sentences, 3, seed=0)]
    for record in records:
        assert record["video"] is None and record["n_frames"] == 0
        assert 0.5 < record["duration"] < 8
    card = (out / "README.md").read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved." in card
    again = wordnet_sentences.generate(str(out), 3, seed=0, workers=1, debs_dir=str(tmp_path / "debs"))
    assert again["generated"] == 0  # finished: nothing redone
    with pytest.raises(ValueError, match="was generated with"):
        wordnet_sentences.main(arguments[:-4] + ["--clips", "2", "--workers", "1"])
