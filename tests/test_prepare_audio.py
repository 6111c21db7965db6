"""Audio-only corpus preparation: the audio_csv importer on generated files of several formats (with a missing file,
an empty transcript, unreadable and too short audio), the Asterisk prompts on a fake tree of the Debian layout (pairing,
non-speech entries, the split by prompt text, fetching), and the ASR training path on the resulting shards."""

import csv
import gzip
import io
import os
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile
import torch

from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor, load_audio
from mtsk_data import asterisk
from mtsk_data.collator import MTSKCollator
from mtsk_data.prepare import SKIPPED_FILE, main, plan_asterisk, plan_audio_csv, prepare
from mtsk_data.records import SPLITS, load_split, shard_paths
from mtsk_data.sampler import frame_counts

from tiny_models import tiny_model, tiny_tokenizer


MAX_TRAIN, MAX_TEST = 16 * 25, 24 * 25


def _tone(seconds: float, rate: int, channels: int = 1, frequency: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * frequency * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return np.stack([mono] * channels, axis=1).astype(np.float32) if channels > 1 else mono.astype(np.float32)


def _write_with_pyav(path: Path, samples: np.ndarray, rate: int, container_format: str, codec: str) -> None:
    pcm = (samples * 32767).astype(np.int16)[np.newaxis, :]
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        frame_size = stream.codec_context.frame_size or pcm.shape[1]
        for start in range(0, pcm.shape[1], frame_size):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[:, start : start + frame_size]), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _records(out_dir, split) -> dict[str, dict]:
    return {row["id"]: row for path in shard_paths(out_dir, split) for row in pq.read_table(path).to_pylist()}


def _files(out_dir) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(Path(out_dir, "data").iterdir())}


# --------------------------------------------------------------------------------------------------------------------
# audio_csv
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio_csv(tmp_path_factory):
    """A CSV of generated audio in five formats plus every kind of bad row; returns (csv path, absolute file)."""
    root = tmp_path_factory.mktemp("my_speech")
    clips = root / "clips"
    clips.mkdir()
    soundfile.write(clips / "a.wav", _tone(1.2, 44100, channels=2), 44100)  # resampled and down-mixed
    soundfile.write(clips / "b.flac", _tone(0.8, 8000), 8000)
    soundfile.write(clips / "c.ogg", _tone(0.6, 16000), 16000, format="OGG", subtype="VORBIS")
    _write_with_pyav(clips / "d.g722", _tone(1.0, 16000), 16000, "g722", "g722")
    _write_with_pyav(clips / "e.mp4", _tone(0.7, 16000), 16000, "mp4", "aac")  # the audio track of an mp4
    soundfile.write(clips / "no_words.wav", _tone(0.5, 16000), 16000)
    (clips / "garbage.wav").write_bytes(os.urandom(2000))
    soundfile.write(clips / "short.wav", _tone(0.05, 16000), 16000)
    soundfile.write(clips / "empty.wav", np.zeros(0, np.float32), 16000)
    outside = tmp_path_factory.mktemp("elsewhere") / "f.flac"
    soundfile.write(outside, _tone(0.9, 16000), 16000)

    rows = [
        ("path", "text", "split", "speaker"),
        ("clips/a.wav", "Hello, World!", "train", "alice"),
        ("clips/b.flac", "It's  TWO o'clock.", "test", "bob"),
        ("clips/c.ogg", "set blue", "validation", ""),
        ("clips/d.g722", "place red", "", "carol"),
        ("clips/e.mp4", "green four", "", ""),
        (str(outside), "Absolute path", "train", "dave"),
        ("clips/missing.wav", "gone", "train", ""),
        ("clips/no_words.wav", "{NS} ...", "train", ""),
        ("clips/garbage.wav", "unreadable", "train", ""),
        ("clips/short.wav", "too short", "train", ""),
        ("clips/empty.wav", "no samples", "train", ""),
        ("clips/a.wav", "a split that does not exist", "dev", ""),
    ]
    csv_path = root / "speech.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return str(csv_path), outside


@pytest.fixture(scope="module")
def audio_csv_prepared(audio_csv, tmp_path_factory):
    csv_path, _ = audio_csv
    out = str(tmp_path_factory.mktemp("my_speech_out"))
    assert main(["audio_csv", "--csv", csv_path, "--out", out, "--workers", "1", "--no-progress"]) == 0
    return out


def test_audio_csv_imports_every_format_as_16_khz_mono_records_without_video(audio_csv, audio_csv_prepared):
    _, outside = audio_csv
    out = audio_csv_prepared
    train, validation, test = (_records(out, split) for split in ("train", "validation", "test"))
    absolute_id = str(outside.with_suffix("")).lstrip("/")
    assert sorted(train) == sorted(["clips/a", "clips/d", "clips/e", absolute_id])
    assert list(validation) == ["clips/c"] and list(test) == ["clips/b"]
    everything = {**train, **validation, **test}
    assert {key: row["text"] for key, row in everything.items()} == {
        "clips/a": "hello world", "clips/b": "it's two o'clock", "clips/c": "set blue", "clips/d": "place red",
        "clips/e": "green four", absolute_id: "absolute path",
    }
    assert {key: row["speaker"] for key, row in everything.items()} == {
        "clips/a": "alice", "clips/b": "bob", "clips/c": "unknown", "clips/d": "carol", "clips/e": "unknown",
        absolute_id: "dave",
    }
    seconds = {"clips/a": 1.2, "clips/b": 0.8, "clips/c": 0.6, "clips/d": 1.0, "clips/e": 0.7, absolute_id: 0.9}
    for key, row in everything.items():
        info = soundfile.info(io.BytesIO(row["audio"]["bytes"]))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16000, 1)
        assert row["duration"] == info.frames / 16000
        # The lossy codecs (Vorbis, AAC) add or drop a few milliseconds at the edges; the others keep every sample.
        assert row["duration"] == pytest.approx(seconds[key], abs=0.02 if key in ("clips/c", "clips/e") else 1e-9)
        assert row["video"] is None and row["n_frames"] == 0
    # The audio is the file's, resampled: the 44.1 kHz stereo tone keeps its 220 Hz pitch.
    waveform = load_audio(train["clips/a"]["audio"]["bytes"])
    spectrum = np.abs(np.fft.rfft(waveform))
    assert np.argmax(spectrum) * 16000 / waveform.size == pytest.approx(220, abs=2)


def test_audio_csv_lists_every_bad_row_with_its_reason(audio_csv, audio_csv_prepared):
    csv_path, _ = audio_csv
    lines = Path(audio_csv_prepared, SKIPPED_FILE).read_text().splitlines()
    assert lines[0] == "path\treason"
    reasons = dict(line.split("\t", 1) for line in lines[1:])
    assert sorted(reasons) == sorted(
        ["clips/missing.wav", "clips/no_words.wav", "clips/garbage.wav", "clips/short.wav", "clips/empty.wav",
         "clips/a.wav"]
    )
    assert "missing.wav not found" in reasons["clips/missing.wav"]
    assert "the transcript is empty" in reasons["clips/no_words.wav"]
    assert "Could not read audio" in reasons["clips/garbage.wav"]
    assert "shorter than 0.1 s" in reasons["clips/short.wav"]
    assert "holds no audio samples" in reasons["clips/empty.wav"]
    # The same file listed twice: the row with a bad split is refused, the good one imported.
    assert "split 'dev': expected one of train, validation, test" in reasons["clips/a.wav"]


def test_audio_csv_rerun_is_a_no_op_and_a_fresh_run_gives_the_same_bytes(audio_csv, audio_csv_prepared, tmp_path):
    csv_path, _ = audio_csv
    before = _files(audio_csv_prepared)
    planned = plan_audio_csv(csv_path, "train", "unknown", MAX_TRAIN, MAX_TEST)
    summary = prepare(planned, audio_csv_prepared, progress=False)
    assert summary.clips_processed == 0 and summary.clips_already_done == 6 and _files(audio_csv_prepared) == before
    prepare(planned, str(tmp_path), workers=2, progress=False)
    assert _files(tmp_path) == before


def test_audio_csv_skips_audio_longer_than_the_limit(audio_csv, tmp_path):
    csv_path, _ = audio_csv
    summary = prepare(plan_audio_csv(csv_path, "train", "unknown", 25, 25), str(tmp_path), progress=False)
    reasons = dict(summary.skipped)
    assert "longer than 1 s" in reasons["clips/a.wav"]  # 1.2 s
    assert sorted(_records(tmp_path, "train")) == ["clips/d", "clips/e", str(audio_csv[1].with_suffix("")).lstrip("/")]


def test_audio_only_shards_train_the_audio_model(audio_csv_prepared):
    records = load_split(audio_csv_prepared, "train")
    assert records[0]["video"] is None
    assert list(frame_counts(records["n_frames"], records["duration"])) == [
        int(np.ceil(duration * 25 - 1e-6)) for duration in records["duration"]
    ]
    model = tiny_model(modality="audio", audio_rates=[4, 8])
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    batch = MTSKCollator(processor, "audio", training=False)(list(records))
    assert "pixel_values_videos" not in batch and batch["input_features"].shape[0] == len(records)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)


# --------------------------------------------------------------------------------------------------------------------
# Asterisk prompts
# --------------------------------------------------------------------------------------------------------------------

TRANSCRIPTS = """; Core Asterisk Sounds in English

hello: Hello.
goodbye: Goodbye!
thanks-a: Thank you.
thanks-b: Thank you!
press-one: Press 1 to accept, or * to cancel.
vm-intro: Please leave your message after the tone. (simple tone sound plays)
agent-pass: Please enter your password followed by the pound key.
conf-full: That conference is full.
conf-locked: This conference is locked!
letters/at: at [@]
digits/2: two
digits/3: three
beep: [this is a simple beep tone]
confbridge-join: <beep ascending>
no-recording: This prompt was never recorded.
demo-instruct: dial 500 now
"""
WITH_AUDIO = [
    "hello", "goodbye", "thanks-a", "thanks-b", "press-one", "vm-intro", "agent-pass", "conf-full", "conf-locked",
    "letters/at", "digits/2", "digits/3", "beep", "confbridge-join", "demo-instruct", "orphan",
]


@pytest.fixture(scope="module")
def asterisk_tree(tmp_path_factory):
    """A fake tree of the two unpacked packages: G.722 prompts and the gzipped transcript file."""
    root = tmp_path_factory.mktemp("asterisk_extracted")
    sounds = root / asterisk.SOUNDS_DIR
    for index, name in enumerate(WITH_AUDIO):
        path = sounds / f"{name}.g722"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_with_pyav(path, _tone(0.4 + 0.05 * index, 16000, frequency=150 + 20 * index), 16000, "g722", "g722")
    transcripts = root / asterisk.TRANSCRIPTS_FILE
    transcripts.parent.mkdir(parents=True)
    with gzip.open(transcripts, "wt", encoding="utf-8") as handle:
        handle.write(TRANSCRIPTS)
    copyright_file = root / asterisk.COPYRIGHT_FILE
    copyright_file.parent.mkdir(parents=True)
    copyright_file.write_text("Files: *\nCopyright: 2003-2010, Allison Smith\nLicense: CC-BY-SA-3.0\n")
    return root


@pytest.fixture(scope="module")
def asterisk_prepared(asterisk_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("asterisk_out")
    command = ["asterisk", "--extracted", str(asterisk_tree), "--out", str(out), "--workers", "1", "--no-progress"]
    assert main(command) == 0
    return out


def test_asterisk_pairs_audio_and_transcripts_and_drops_what_is_not_speech(asterisk_prepared):
    records = {key: row for split in SPLITS for key, row in _records(asterisk_prepared, split).items()}
    assert {key: row["text"] for key, row in records.items()} == {
        "hello": "hello", "goodbye": "goodbye", "thanks-a": "thank you", "thanks-b": "thank you",
        "press-one": "press one to accept or star to cancel", "vm-intro": "please leave your message after the tone",
        "agent-pass": "please enter your password followed by the pound key", "conf-full": "that conference is full",
        "conf-locked": "this conference is locked", "letters/at": "at", "digits/2": "two", "digits/3": "three",
    }
    assert {row["speaker"] for row in records.values()} == {"allison"}
    assert all(row["video"] is None and row["n_frames"] == 0 for row in records.values())
    assert records["hello"]["duration"] == pytest.approx(0.4)

    lines = (asterisk_prepared / SKIPPED_FILE).read_text().splitlines()[1:]
    reasons = dict(line.split("\t", 1) for line in lines)
    assert sorted(reasons) == ["beep", "confbridge-join", "demo-instruct", "no-recording", "orphan"]
    assert reasons["beep"].startswith("not speech") and "[this is a simple beep tone]" in reasons["beep"]
    assert reasons["confbridge-join"].startswith("not speech")
    assert "numbers of several digits" in reasons["demo-instruct"]
    assert reasons["no-recording"].startswith("no audio")
    assert reasons["orphan"].startswith("no transcript")


def test_asterisk_splits_by_prompt_text_so_no_test_sentence_is_heard_in_training(asterisk_prepared):
    texts = {split: {row["text"] for row in _records(asterisk_prepared, split).values()} for split in SPLITS}
    assert all(texts.values())  # 11 distinct texts: 2 test, 2 validation, 7 train
    assert [len(texts[split]) for split in ("train", "validation", "test")] == [7, 2, 2]
    assert not texts["test"] & texts["train"] and not texts["validation"] & texts["train"]
    assert not texts["test"] & texts["validation"]


def test_asterisk_output_carries_its_license(asterisk_prepared):
    license_text = (asterisk_prepared / "LICENSE").read_text()
    assert "CC-BY-SA-3.0" in license_text and "Allison Smith" in license_text
    assert license_text.endswith("License: CC-BY-SA-3.0\n")  # the package's copyright file, appended
    card = (asterisk_prepared / "README.md").read_text()
    assert "license: cc-by-sa-3.0" in card.split("---")[1] and "audio-only" in card


def test_split_by_text_is_deterministic_seeded_and_keeps_the_fractions():
    texts = [f"prompt number {index}" for index in range(200)]
    splits = asterisk.split_by_text(texts + texts[:50], seed=0)  # repeated texts change nothing
    assert splits == asterisk.split_by_text(list(reversed(texts)), seed=0)
    assert splits != asterisk.split_by_text(texts, seed=1)
    counts = {split: list(splits.values()).count(split) for split in SPLITS}
    assert counts == {"train": 160, "validation": 20, "test": 20}
    with pytest.raises(ValueError, match="leave some training data"):
        asterisk.split_by_text(texts, validation_fraction=0.5, test_fraction=0.5)


def test_spoken_text_spells_what_is_read_and_refuses_what_is_not_speech():
    assert asterisk.spoken_text("Press 1, then # or *.") == "press one then pound or star"
    assert asterisk.spoken_text('IAX (note: does not say "2")') == "iax"
    assert asterisk.spoken_text("exclaimation-point [!]") == "exclamation point"
    assert asterisk.spoken_text("3D audio enabled") == "three d audio enabled"
    with pytest.raises(asterisk.NotSpeechError, match="describes a sound"):
        asterisk.spoken_text("(10 seconds of silence)")
    with pytest.raises(ValueError, match="several digits.*'323'"):
        asterisk.spoken_text("H.323")
    with pytest.raises(ValueError, match="the transcript is empty"):
        asterisk.spoken_text(" ... ")


def test_read_transcripts_names_a_malformed_line(tmp_path):
    path = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("; comment\nhello: Hello.\nthis line has no name\n")
    with pytest.raises(ValueError, match="line 3: expected 'name: text'"):
        asterisk.read_transcripts(str(path))


def test_plan_asterisk_names_a_missing_package_tree(tmp_path):
    with pytest.raises(FileNotFoundError, match="asterisk-core-sounds-en-g722"):
        plan_asterisk(str(tmp_path), 0, MAX_TRAIN, MAX_TEST)


# --------------------------------------------------------------------------------------------------------------------
# Fetching the Debian packages
# --------------------------------------------------------------------------------------------------------------------


def _build_debs(extracted: Path, debs: Path) -> None:
    """Build the two packages from the fake tree with dpkg-deb, as Debian ships them."""
    contents = {
        asterisk.PACKAGES[0]: ["usr/share/asterisk", os.path.dirname(asterisk.COPYRIGHT_FILE)],
        asterisk.PACKAGES[1]: [os.path.dirname(asterisk.TRANSCRIPTS_FILE)],
    }
    for package, folders in contents.items():
        staging = debs.parent / f"{package}-staging"
        (staging / "DEBIAN").mkdir(parents=True)
        (staging / "DEBIAN" / "control").write_text(
            f"Package: {package}\nVersion: 1.6.1-1\nArchitecture: all\nMaintainer: test <test@example.org>\n"
            "Description: fake package for a test\n"
        )
        for folder in folders:
            shutil.copytree(extracted / folder, staging / folder)
        debs.mkdir(exist_ok=True)
        subprocess.run(
            ["dpkg-deb", "--build", str(staging), str(debs / f"{package}_1.6.1-1_all.deb")],
            check=True, capture_output=True,
        )


def test_asterisk_from_downloaded_debs_gives_the_same_shards(asterisk_tree, asterisk_prepared, tmp_path):
    _build_debs(asterisk_tree, tmp_path / "debs")
    out = tmp_path / "out"
    command = ["asterisk", "--debs", str(tmp_path / "debs"), "--out", str(out), "--workers", "1", "--no-progress"]
    assert main(command) == 0
    assert (out / "debian" / "extracted" / asterisk.TRANSCRIPTS_FILE).is_file()
    assert _files(out) == _files(asterisk_prepared)


def test_fetch_without_apt_get_or_with_a_failing_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(asterisk.FetchError, match="apt-get not found.*--debs DIR"):
        asterisk.fetch_packages(str(tmp_path / "work"))

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    apt_get = fake_bin / "apt-get"
    apt_get.write_text("#!/bin/sh\necho 'E: Unable to locate package asterisk-core-sounds-en-g722' >&2\nexit 100\n")
    apt_get.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    with pytest.raises(asterisk.FetchError, match="exit 100.*Unable to locate package"):
        asterisk.fetch_packages(str(tmp_path / "work"))
    assert main(["asterisk", "--out", str(tmp_path / "out"), "--no-progress"]) == 2
