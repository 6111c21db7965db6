"""The embedded corpus generator: eSpeak NG speech, phoneme-driven mouth video, grammar, splits, shards, export."""

import csv
import io
import math
import os

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from mtsk_data.records import shard_paths
from mtsk_data.synthetic.corpus import (
    SPEAKERS,
    espeak,
    export_auto_avsr,
    generate_corpus,
    main,
    plan_corpus,
    synthesize_utterance,
    word_token_ids,
)
from mtsk_data.synthetic.grammar import TEMPLATES, VOCABULARY, make_splits, sample_sentence
from mtsk_data.synthetic.visemes import VISEMES, Phoneme, lip_track, phoneme_visemes

from audio_checks import intelligibility_problems


SENTENCE = "place blue at f two now"


@pytest.fixture(scope="module")
def utterances():
    """One sentence said by every speaker (same seed)."""
    return [synthesize_utterance(SENTENCE, speaker, seed=3) for speaker in SPEAKERS]


# ------------------------------------------------------------------ eSpeak and audio


def test_espeak_gives_audio_and_timed_phonemes():
    engine = espeak()
    samples, phonemes = engine.synthesize("dial nine", "en-us", 150, 50, 50)
    assert engine.sample_rate == 22050
    assert samples.dtype == np.float32 and samples.size > 0.3 * engine.sample_rate
    names = [p.name.replace("'", "") for p in phonemes]
    assert names[:3] == ["d", "aI@", "l"] and "n" in names and "aI" in names
    starts = [p.start for p in phonemes]
    assert starts == sorted(starts) and all(p.end >= p.start for p in phonemes)
    assert phonemes[-1].end == pytest.approx(samples.size / engine.sample_rate)


def test_espeak_rejects_an_unknown_voice():
    with pytest.raises(ValueError, match="unknown eSpeak voice 'xx-nothing'"):
        espeak().synthesize("one", "xx-nothing", 150, 50, 50)


def test_every_speaker_voice_exists_and_every_vocabulary_phoneme_has_a_viseme():
    text = " ".join(VOCABULARY)
    for speaker in SPEAKERS:
        _, phonemes = espeak().synthesize(text, speaker.voice, speaker.rate, speaker.pitch, speaker.pitch_range)
        for phoneme in phonemes:
            phoneme_visemes(phoneme.name)  # raises on a phoneme without a viseme


def test_generated_audio_is_intelligible_speech(utterances):
    for utterance in utterances:
        assert intelligibility_problems(utterance.audio, utterance.phonemes) == [], utterance.speaker
        assert utterance.audio.dtype == np.float32 and np.abs(utterance.audio).max() <= 0.99
        assert 15.0 <= utterance.snr_db <= 30.0


def test_intelligibility_check_fails_on_noise_and_silence(utterances):
    utterance = utterances[0]
    rng = np.random.default_rng(0)
    level = float(np.sqrt(np.mean(utterance.audio**2)))
    white = (level * rng.standard_normal(utterance.audio.size)).astype(np.float32)
    rumble = np.cumsum(white) / 30.0
    rumble = (rumble - rumble.mean()).astype(np.float32)
    for signal in (white, rumble, np.zeros_like(utterance.audio)):
        assert intelligibility_problems(signal, utterance.phonemes) != []
    # speech with timing that cannot belong to it
    stretched = [Phoneme(p.name, 3 * p.start, 3 * p.end) for p in utterance.phonemes]
    assert intelligibility_problems(utterance.audio, stretched) != []


def test_audio_and_video_cover_the_same_time(utterances):
    for utterance in utterances:
        n_frames = utterance.frames.shape[0]
        assert utterance.frames.shape[1:] == (96, 96) and utterance.frames.dtype == np.uint8
        assert utterance.audio.size == 640 * n_frames
        spoken = [p for p in utterance.phonemes if not p.name.startswith("_")]
        assert 0.2 <= spoken[0].start and spoken[-1].end <= utterance.duration - 0.15


def test_speakers_sound_different(utterances):
    durations = {round(u.duration, 2) for u in utterances}
    assert len(durations) > 3  # different speeds
    spectra = [np.abs(np.fft.rfft(u.audio[: 16000 * 1])) for u in utterances]
    assert not np.allclose(spectra[0], spectra[1], rtol=0.1)


# ------------------------------------------------------------------ video


def _dark_area(frame: np.ndarray) -> int:
    return int((frame < 70).sum())


def _frames_in(utterance, visemes: set[str], min_length: float = 0.06) -> list[int]:
    """Frames whose centre lies in the middle of a phoneme of the given visemes."""
    indices = []
    for phoneme in utterance.phonemes:
        if set(phoneme_visemes(phoneme.name)) <= visemes and phoneme_visemes(phoneme.name):
            if phoneme.end - phoneme.start >= min_length:
                indices.append(int((phoneme.start + phoneme.end) / 2 * 25))
    return indices


def test_mouth_opens_for_open_vowels_and_closes_for_bilabials():
    for speaker in SPEAKERS:
        closing = synthesize_utterance("bin white by b five please", speaker, seed=1)
        opening = synthesize_utterance("call maria at five nine", speaker, seed=1)
        closed = [_dark_area(closing.frames[k]) for k in _frames_in(closing, {"bilabial"}, 0.04)]
        opened = [_dark_area(opening.frames[k]) for k in _frames_in(opening, {"open"})]
        assert closed and opened
        assert max(closed) < 0.15 * min(opened), speaker.name
        assert _dark_area(closing.frames[0]) < 0.3 * min(opened), speaker.name  # at rest before speaking


def test_identical_text_speaker_and_seed_give_identical_clips(utterances):
    again = synthesize_utterance(SENTENCE, SPEAKERS[0], seed=3)
    np.testing.assert_array_equal(again.frames, utterances[0].frames)
    np.testing.assert_array_equal(again.audio, utterances[0].audio)
    other_seed = synthesize_utterance(SENTENCE, SPEAKERS[0], seed=4)
    assert not np.array_equal(other_seed.audio, utterances[0].audio)


def test_speakers_look_different(utterances):
    first_frames = np.stack([u.frames[0].astype(float) for u in utterances])
    differences = np.abs(first_frames[:, None] - first_frames[None]).mean(axis=(2, 3))
    assert differences[~np.eye(len(utterances), dtype=bool)].min() > 2.0


def test_visemes_are_recognisable_at_32_pixels_across_speakers():
    """A nearest-centroid classifier on 32x32 frames of 8 speakers recognises the visemes of 8 other speakers."""
    groups = {"bilabial": "closed", "open": "open", "round": "round", "w": "round", "round_open": "round",
              "spread": "spread", "labiodental": "labiodental"}  # fmt: skip

    def examples(speakers):
        features, labels = [], []
        for index, sentence in enumerate(make_splits(24, 0, 0, seed=5)["train"]):
            utterance = synthesize_utterance(sentence, speakers[index % len(speakers)], seed=index)
            small = utterance.frames.reshape(-1, 32, 3, 32, 3).mean(axis=(2, 4))  # 96 -> 32 by 3x3 averaging
            for phoneme in utterance.phonemes:
                visemes = phoneme_visemes(phoneme.name)
                if len(visemes) == 1 and visemes[0] in groups and phoneme.end - phoneme.start >= 0.06:
                    frame = small[int((phoneme.start + phoneme.end) / 2 * 25)].ravel()
                    features.append((frame - frame.mean()) / frame.std())
                    labels.append(groups[visemes[0]])
        return np.array(features), np.array(labels)

    train_x, train_y = examples(SPEAKERS[:8])
    test_x, test_y = examples(SPEAKERS[8:])
    classes = sorted(set(train_y))
    centroids = np.stack([train_x[train_y == c].mean(axis=0) for c in classes])
    predicted = np.array(classes)[np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    majority = max(np.mean(test_y == c) for c in classes)
    assert len(classes) == 5
    assert np.mean(predicted == test_y) > max(0.8, majority + 0.3)


def test_lip_track_holds_viseme_targets_and_rests_outside_speech():
    phonemes = [Phoneme("m", 0.4, 0.6), Phoneme("'a", 0.6, 0.9), Phoneme("_:", 0.9, 1.0)]
    track = lip_track(phonemes, n_frames=40)
    assert track.shape == (40, 6) and track.dtype == np.float32
    np.testing.assert_allclose(track[2], VISEMES["rest"], atol=1e-6)
    np.testing.assert_allclose(track[12, 0], VISEMES["bilabial"][0], atol=1e-6)  # 0.48-0.52 s: closed
    np.testing.assert_allclose(track[18, 0], VISEMES["open"][0], atol=1e-6)  # 0.72-0.76 s: open
    np.testing.assert_allclose(track[-1], VISEMES["rest"], atol=1e-6)
    with pytest.raises(ValueError, match="n_frames"):
        lip_track(phonemes, n_frames=0)


def test_phoneme_visemes():
    assert phoneme_visemes("'p") == ("bilabial",)
    assert phoneme_visemes("t#") == ("alveolar",)
    assert phoneme_visemes("'aU") == ("open", "round")
    assert phoneme_visemes(",i:") == ("spread",)
    assert phoneme_visemes("_:") == ("rest",)
    assert phoneme_visemes(";") == ()
    with pytest.raises(ValueError, match="unknown eSpeak phoneme '\\*\\*'"):
        phoneme_visemes("**")


# ------------------------------------------------------------------ grammar and splits


def test_splits_are_deterministic_disjoint_and_share_the_vocabulary():
    splits = make_splits(3000, 200, 300, seed=0)
    assert splits == make_splits(3000, 200, 300, seed=0)
    assert splits != make_splits(3000, 200, 300, seed=1)
    assert [len(splits[name]) for name in ("train", "validation", "test")] == [3000, 200, 300]
    train = set(splits["train"])
    assert len(train) == 3000
    for name in ("validation", "test"):
        assert len(set(splits[name])) == len(splits[name])
        assert not train & set(splits[name])
    assert not set(splits["validation"]) & set(splits["test"])
    words = {name: {w for s in sentences for w in s.split()} for name, sentences in splits.items()}
    assert words["train"] == set(VOCABULARY)
    assert words["validation"] <= words["train"] and words["test"] <= words["train"]
    # held-out sets do not depend on the training size
    assert make_splits(100, 200, 300, seed=0)["test"] == splits["test"]


def test_sentences_have_3_to_7_words_of_the_vocabulary():
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(500):
        words = sample_sentence(rng).split()
        assert set(words) <= set(VOCABULARY)
        lengths.add(len(words))
    assert lengths == {3, 4, 5, 6, 7}
    assert 50 <= len(VOCABULARY) <= 100
    # Distinct sentences: the product of the slot choices, summed over the templates.
    sentences = sum(math.prod(1 if isinstance(slot, str) else len(slot) for slot in slots) for slots in TEMPLATES)
    assert sentences > 10_000 and len(TEMPLATES) >= 5


def test_make_splits_refuses_more_sentences_than_the_grammar_holds():
    with pytest.raises(ValueError, match="template"):
        make_splits(30_000, 0, 0, seed=0)


def test_plan_is_deterministic_and_balanced_over_speakers():
    plans = plan_corpus(160, 16, 32, seed=2)
    assert plans == plan_corpus(160, 16, 32, seed=2)
    assert len({plan.id for plan in plans}) == len(plans)
    train_speakers = [plan.speaker for plan in plans if plan.split == "train"]
    assert {train_speakers.count(speaker.name) for speaker in SPEAKERS} == {10}


# ------------------------------------------------------------------ corpus, resume, export, CLI


def _shard_bytes(folder) -> dict[str, bytes]:
    files = {}
    for split in ("train", "validation", "test"):
        for path in shard_paths(folder, split):
            with open(path, "rb") as file:
                files[os.path.basename(path)] = file.read()
    return files


def test_generate_corpus_is_the_same_with_one_or_two_workers(tmp_path):
    one = generate_corpus(str(tmp_path / "one"), 6, 2, 2, seed=0, workers=1, records_per_shard=4)
    generate_corpus(str(tmp_path / "two"), 6, 2, 2, seed=0, workers=2, records_per_shard=4)
    assert one["clips"] == 10 and one["generated"] == 10 and 0.002 < one["hours"] < 0.02
    files = _shard_bytes(tmp_path / "one")
    assert sorted(files) == [
        "test-00000.parquet", "train-00000.parquet", "train-00001.parquet", "validation-00000.parquet"
    ]  # fmt: skip
    assert files == _shard_bytes(tmp_path / "two")

    rows = pq.read_table(tmp_path / "one" / "data" / "train-00000.parquet").to_pylist()
    row = rows[0]
    assert row["id"] == "train-00000" and row["speaker"].startswith("spk")
    assert set(row["text"].split()) <= set(VOCABULARY)
    audio, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
    assert rate == 16000 and audio.size == row["n_frames"] * 640 and row["duration"] == audio.size / 16000
    with av.open(io.BytesIO(row["video"]["bytes"])) as container:
        frames = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]
    assert len(frames) == row["n_frames"] and frames[0].shape == (96, 96)
    assert "data/train-*.parquet" in (tmp_path / "one" / "README.md").read_text()


def test_generate_corpus_resumes_an_interrupted_run(tmp_path):
    out = str(tmp_path / "corpus")
    generate_corpus(out, 5, 1, 1, seed=3, workers=1, records_per_shard=2)
    complete = _shard_bytes(out)
    os.remove(shard_paths(out, "train")[-1])  # as if the run had died before the last shard
    summary = generate_corpus(out, 5, 1, 1, seed=3, workers=1, records_per_shard=2)
    assert summary["generated"] == 1
    assert _shard_bytes(out) == complete
    for sizes, seed in (((2, 1, 1), 3), ((5, 1, 1), 4)):
        with pytest.raises(ValueError, match="was generated with"):
            generate_corpus(out, *sizes, seed=seed, workers=1)


def test_export_auto_avsr_layout(tmp_path):
    corpus = str(tmp_path / "corpus")
    generate_corpus(corpus, 3, 1, 2, seed=1, workers=1)
    csv_path = export_auto_avsr(corpus, "test", str(tmp_path / "auto"))
    assert csv_path == str(tmp_path / "auto" / "labels" / "embedded_test.csv")
    with open(csv_path, newline="") as file:
        lines = list(csv.reader(file))
    rows = pq.read_table(shard_paths(corpus, "test")[0]).to_pylist()
    assert len(lines) == 2
    for line, row in zip(lines, rows):
        dataset, rel_path, n_frames, token_ids, text = line
        expected_path = f"embedded_video_seg16s/{row['id']}.mp4"
        assert (dataset, rel_path, int(n_frames), text) == ("embedded", expected_path, row["n_frames"], row["text"])
        assert [VOCABULARY[int(t) - 1] for t in token_ids.split()] == text.split()
        video = tmp_path / "auto" / "embedded" / rel_path
        assert video.read_bytes() == row["video"]["bytes"]
        assert sf.info(str(video.with_suffix(".wav"))).samplerate == 16000
        transcript = tmp_path / "auto" / "embedded" / "embedded_text_seg16s" / f"{row['id']}.txt"
        assert transcript.read_text() == row["text"].upper()


def test_word_token_ids():
    assert word_token_ids("dial one") == [VOCABULARY.index("dial") + 1, VOCABULARY.index("one") + 1]
    with pytest.raises(ValueError, match="'hello' is not in the embedded vocabulary"):
        word_token_ids("hello")


def test_synthesize_utterance_rejects_bad_arguments():
    with pytest.raises(ValueError, match="normalised"):
        synthesize_utterance("Dial one.", SPEAKERS[0], seed=0)
    with pytest.raises(KeyError, match="unknown speaker 'nobody'"):
        synthesize_utterance("dial one", "nobody", seed=0)


def test_cli(tmp_path, capsys):
    main([
        "--out", str(tmp_path / "c"), "--num-train", "2", "--num-validation", "1", "--num-test", "1", "--workers", "1",
        "--export-auto-avsr", str(tmp_path / "auto"),
    ])  # fmt: skip
    output = capsys.readouterr().out
    assert "4 clips (4 generated now)" in output and "hours" in output
    labels = sorted(os.listdir(tmp_path / "auto" / "labels"))
    assert labels == ["embedded_test.csv", "embedded_train.csv", "embedded_validation.csv"]


def test_corpus_tokenizer_covers_the_vocabulary_and_the_prompts(tmp_path):
    from transformers import AutoTokenizer

    from mtsk_data.synthetic.corpus import write_tokenizer
    from mtsk_data.synthetic.grammar import VOCABULARY

    write_tokenizer(str(tmp_path / "tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    for text in (" ".join(VOCABULARY), "Transcribe speech and video to text.", "Transcribe video to text."):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids).replace(" .", ".") == text.lower()
