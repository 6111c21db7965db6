"""Corpus preparation: LRS3 / LRS2 / VoxCeleb2 official layouts and the auto_avsr layout, end to end on fake trees
with a real (photographed) talking face; segmentation, text normalisation, skipping, resuming and path safety."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from llama_mtsk.media_llama_mtsk import load_audio, load_video
from mtsk_data.prepare import (
    SKIPPED_FILE,
    Transcript,
    TranscriptError,
    UnsafePathError,
    Word,
    clean_text,
    main,
    parse_lrs_transcript,
    plan_auto_avsr,
    plan_lrs2,
    plan_lrs3,
    plan_segments,
    plan_voxceleb2,
    prepare,
    safe_join,
    write_auto_avsr_tree,
)
from mtsk_data.records import shard_paths

from fake_corpus import make_fake_lrs2, make_fake_lrs3, make_fake_voxceleb2


REPO = Path(__file__).resolve().parents[1]
MAX_TRAIN, MAX_TEST = 16 * 25, 24 * 25


def _records(out_dir, split) -> dict[str, dict]:
    return {row["id"]: row for path in shard_paths(out_dir, split) for row in pq.read_table(path).to_pylist()}


def _files(out_dir) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(Path(out_dir, "data").iterdir())}


@pytest.fixture(scope="module")
def lrs3(tmp_path_factory):
    root = tmp_path_factory.mktemp("lrs3")
    return str(root), {clip.relative: clip for clip in make_fake_lrs3(str(root))}


@pytest.fixture(scope="module")
def lrs3_prepared(lrs3, tmp_path_factory):
    root, _ = lrs3
    out = str(tmp_path_factory.mktemp("lrs3_out"))
    summary = prepare(plan_lrs3(root, MAX_TRAIN, MAX_TEST), out, workers=1, records_per_shard=2, progress=False)
    return out, summary


# --------------------------------------------------------------------------------------------------------------------
# LRS3 end to end
# --------------------------------------------------------------------------------------------------------------------


def test_lrs3_prepares_every_clip_with_a_face(lrs3, lrs3_prepared):
    _, clips = lrs3
    out, summary = lrs3_prepared
    train, test = _records(out, "train"), _records(out, "test")
    assert sorted(train) == [
        "pretrain/spk00/00001_00", "pretrain/spk00/00001_01", "pretrain/spk00/00002_00", "trainval/spk01/50001"
    ]
    assert sorted(test) == ["test/spk02/00001"]
    assert (summary.records_written, summary.clips_processed) == (5, 6)
    assert summary.records_in_output == {"train": 4, "test": 1}
    total = sum(row["duration"] for row in [*train.values(), *test.values()])
    assert summary.hours_in_output["train"] + summary.hours_in_output["test"] == pytest.approx(total / 3600)

    for row in [*train.values(), *test.values()]:
        audio = load_audio(row["audio"]["bytes"])
        frames, fps = load_video(row["video"]["bytes"])
        assert fps == 25 and frames.shape == (row["n_frames"], 96, 96, 3)
        assert audio.size == row["n_frames"] * 640 and row["duration"] == pytest.approx(row["n_frames"] / 25)
        assert row["speaker"] == row["id"].split("/")[1]
    # Whole clips keep every frame.
    assert train["trainval/spk01/50001"]["n_frames"] == clips["trainval/spk01/50001.mp4"].n_frames
    assert test["test/spk02/00001"]["n_frames"] == clips["test/spk02/00001.mp4"].n_frames


def test_long_pretrain_clip_is_split_at_word_boundaries(lrs3, lrs3_prepared):
    _, clips = lrs3
    out, _ = lrs3_prepared
    long_clip = clips["pretrain/spk00/00001.mp4"]
    assert long_clip.n_frames > MAX_TRAIN  # the fake clip is longer than 16 s
    train = _records(out, "train")
    segments = [train["pretrain/spk00/00001_00"], train["pretrain/spk00/00001_01"]]
    assert all(row["duration"] <= 16.0 for row in segments)
    # No word lost or repeated, and each segment spans exactly its words.
    assert " ".join(row["text"] for row in segments) == long_clip.text
    words = iter(long_clip.words)
    for row in segments:
        mine = [next(words) for _ in row["text"].split()]
        span = math.ceil(mine[-1][2] * 25) - math.floor(mine[0][1] * 25)
        assert row["n_frames"] == span
    # A pretrain clip shorter than 16 s is kept whole (auto_avsr numbers it _00 all the same).
    assert train["pretrain/spk00/00002_00"]["n_frames"] == clips["pretrain/spk00/00002.mp4"].n_frames


def test_transcripts_are_lower_cased_without_punctuation_or_annotations(lrs3, lrs3_prepared):
    root, clips = lrs3
    out, _ = lrs3_prepared
    with open(os.path.join(root, "trainval/spk01/50001.txt")) as handle:
        assert "!" in handle.read()  # the fake Text: line has punctuation and {LG}
    assert _records(out, "train")["trainval/spk01/50001"]["text"] == clips["trainval/spk01/50001.mp4"].text
    assert _records(out, "test")["test/spk02/00001"]["text"] == clips["test/spk02/00001.mp4"].text


def test_corrupt_mp4_and_faceless_clip_are_listed_as_skipped(lrs3_prepared):
    out, summary = lrs3_prepared
    reasons = dict(summary.skipped)
    assert sorted(reasons) == ["test/spk02/00002.mp4", "trainval/spk01/50002.mp4"]
    assert "NoFaceFoundError: no face found in any of the" in reasons["test/spk02/00002.mp4"]
    assert "Could not read" in reasons["trainval/spk01/50002.mp4"]
    listed = Path(out, SKIPPED_FILE).read_text().splitlines()
    assert listed[0] == "path\treason" and [line.split("\t")[0] for line in listed[1:]] == sorted(reasons)
    assert "skipped: 2" in summary.format()


def test_output_streams_with_datasets(lrs3_prepared):
    out, _ = lrs3_prepared
    files = {"train": shard_paths(out, "train")}
    streamed = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    assert [row["id"] for row in streamed] == sorted(_records(out, "train"))
    # The dataset card's configs let load_dataset find the splits in the folder itself.
    by_folder = datasets.load_dataset(out, streaming=True)
    assert set(by_folder) == {"train", "test"}
    first_test = next(iter(by_folder["test"]))
    assert first_test["video"]["bytes"] == _records(out, "test")["test/spk02/00001"]["video"]["bytes"]


def test_rerun_of_a_finished_output_does_nothing(lrs3, lrs3_prepared):
    root, _ = lrs3
    out, _ = lrs3_prepared
    before = _files(out)
    summary = prepare(plan_lrs3(root, MAX_TRAIN, MAX_TEST), out, workers=1, records_per_shard=2, progress=False)
    assert summary.clips_processed == 0 and summary.records_written == 0
    assert (summary.clips_already_done, summary.skipped_before) == (4, 2)
    assert "nothing to do" in summary.format()
    assert _files(out) == before


def test_retry_skipped_tries_the_skipped_clips_again(lrs3, lrs3_prepared, tmp_path):
    root, _ = lrs3
    out = tmp_path / "out"
    shutil.copytree(lrs3_prepared[0], out)
    planned = plan_lrs3(root, MAX_TRAIN, MAX_TEST)
    summary = prepare(planned, str(out), records_per_shard=2, retry_skipped=True, progress=False)
    assert summary.clips_processed == 2 and len(summary.skipped) == 2


def test_killed_run_resumes_to_the_same_dataset_as_one_clean_run(lrs3, lrs3_prepared, tmp_path):
    root, _ = lrs3
    clean_out, _ = lrs3_prepared
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "mtsk_data.prepare", "lrs3", "--root", root, "--out", str(out),
        "--records-per-shard", "2", "--no-progress",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Killed (SIGKILL) as soon as the first shard is finished, with clips still to do.
    process = subprocess.Popen(
        command + ["--workers", "1"], cwd=REPO, env=environment, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    first_shard = out / "data" / "train-00000.parquet"
    deadline = time.monotonic() + 240
    while not first_shard.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the first shard never appeared"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    # Killed midway: the test split is only written when the run ends.
    assert not (out / "data" / "test-00000.parquet").exists()

    # Resumed with parallel workers: the order of the records, and so every shard, is the same.
    resumed = subprocess.run(command + ["--workers", "2"], cwd=REPO, env=environment, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 clip(s) already prepared" in resumed.stdout
    assert _files(out) == _files(clean_out)
    assert (out / SKIPPED_FILE).read_text() == Path(clean_out, SKIPPED_FILE).read_text()


# --------------------------------------------------------------------------------------------------------------------
# auto_avsr layout
# --------------------------------------------------------------------------------------------------------------------


def _word_lengths(text: str) -> list[int]:
    """Stand-in token ids (the importer ignores them)."""
    return [len(word) for word in text.split()]


@pytest.mark.parametrize("text_column", [True, False])
def test_auto_avsr_import_gives_the_same_records(lrs3_prepared, tmp_path, text_column):
    out, _ = lrs3_prepared
    originals = _records(out, "train")
    labels = write_auto_avsr_tree(
        list(originals.values()), str(tmp_path / "auto"), "train", token_ids=_word_lengths, text_column=text_column
    )
    imported_out = str(tmp_path / "imported")
    summary = prepare(plan_auto_avsr(str(tmp_path / "auto"), labels, "train"), imported_out, progress=False)
    assert summary.skipped == []
    assert _records(imported_out, "train") == originals


def test_auto_avsr_import_refuses_paths_outside_the_root_and_reports_missing_audio(lrs3_prepared, tmp_path):
    out, _ = lrs3_prepared
    record = _records(out, "test")["test/spk02/00001"]
    labels = write_auto_avsr_tree([record], str(tmp_path / "auto"), "test", token_ids=_word_lengths)
    os.remove(tmp_path / "auto" / "lrs3" / "lrs3_video_seg16s" / "test" / "spk02" / "00001.wav")
    (tmp_path / "outside.mp4").write_bytes(record["video"]["bytes"])
    with open(labels, "a") as handle:
        handle.write("lrs3,../../outside.mp4,42,1 2,escaping\n")
        handle.write(f"lrs3,{tmp_path / 'outside.mp4'},42,1 2,absolute\n")
    summary = prepare(plan_auto_avsr(str(tmp_path / "auto"), labels, "test"), str(tmp_path / "out"), progress=False)
    reasons = dict(summary.skipped)
    assert summary.records_written == 0 and len(reasons) == 3
    assert "no audio" in reasons["lrs3/lrs3_video_seg16s/test/spk02/00001.mp4"]
    assert "leads outside the corpus root" in reasons[f"{labels}:2"]
    assert "expected a path relative to the corpus root" in reasons[f"{labels}:3"]


# --------------------------------------------------------------------------------------------------------------------
# LRS2 and VoxCeleb2
# --------------------------------------------------------------------------------------------------------------------


def test_lrs2_prepares_from_its_list_files(tmp_path):
    root = str(tmp_path / "lrs2")
    clips = {clip.relative: clip for clip in make_fake_lrs2(root)}
    summary = prepare(plan_lrs2(root, MAX_TRAIN, MAX_TEST), str(tmp_path / "out"), progress=False)
    train, test = _records(tmp_path / "out", "train"), _records(tmp_path / "out", "test")
    assert sorted(train) == ["main/6001/00001", "pretrain/6003/00001_00"]
    assert sorted(test) == ["main/6002/00001"]
    assert train["main/6001/00001"]["text"] == clips["main/6001/00001.mp4"].text
    assert train["pretrain/6003/00001_00"]["speaker"] == "6003"
    assert summary.records_in_output == {"train": 2, "test": 1}
    # val.txt names a path outside the corpus: refused, not read.
    assert [(name, "refused" in reason) for name, reason in summary.skipped] == [("main/../../outside/00001.mp4", True)]


def test_voxceleb2_prepares_with_a_transcript_csv(tmp_path):
    root = str(tmp_path / "vox")
    clips, transcripts = make_fake_voxceleb2(root)
    planned = plan_voxceleb2(root, transcripts, "train", MAX_TRAIN, MAX_TEST)
    summary = prepare(planned, str(tmp_path / "out"), progress=False)
    train, test = _records(tmp_path / "out", "train"), _records(tmp_path / "out", "test")
    assert list(train) == ["dev/mp4/id00001/vidAAAAAAA/00001"] and list(test) == ["test/mp4/id00002/vidBBBBBBB/00001"]
    record = train["dev/mp4/id00001/vidAAAAAAA/00001"]
    assert record["speaker"] == "id00001" and record["text"] == clips[0].text  # the CSV's "Capitalised." text
    assert [name for name, _ in summary.skipped] == ["../outside/00001.mp4"]

    # Without word timings a clip longer than the limit cannot be cut: it is skipped with the reason.
    short_limit = prepare(plan_voxceleb2(root, transcripts, "train", 25, 25), str(tmp_path / "out_1s"), progress=False)
    assert short_limit.records_written == 0
    reasons = [reason for name, reason in short_limit.skipped if "outside" not in name]
    assert len(reasons) == 2 and all("no word timings to split it at" in reason for reason in reasons)


# --------------------------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------------------------


def test_parse_lrs_transcript_reads_text_and_word_timings_and_ignores_the_face_track():
    content = (
        "Text:  SO IT'S {LG} DONE\nConf:  4\nRef:   abc\n\nFRAME X Y W H\n0 0.1 0.2 0.3 0.4\n\n"
        "WORD START END ASDSCORE\nSO 0.10 0.20 5.0\nIT'S 0.20 0.40 4.0\nDONE 0.50 0.90 3.1\n"
    )
    transcript = parse_lrs_transcript(content)
    assert clean_text(transcript.text) == "so it's done"
    assert transcript.words == (Word("SO", 0.1, 0.2), Word("IT'S", 0.2, 0.4), Word("DONE", 0.5, 0.9))
    with pytest.raises(TranscriptError, match="no 'Text:' line"):
        parse_lrs_transcript("Conf: 3\n")
    with pytest.raises(TranscriptError, match="line 3"):
        parse_lrs_transcript("Text: A\nWORD START END ASDSCORE\nA zero 0.3 1\n")


def test_plan_segments_groups_words_greedily_within_the_limit():
    words = tuple(Word(f"w{i}", 2.0 * i, 2.0 * i + 1.5) for i in range(10))  # 10 words over 19.5 s
    transcript = Transcript(" ".join(word.word for word in words), words)
    segments = plan_segments("spk/clip", transcript, max_frames=8 * 25, always_number=False)
    assert [segment.text for segment in segments] == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    assert [(segment.start, segment.end) for segment in segments] == [(0, 188), (200, 388), (400, 488)]
    assert all(segment.end - segment.start <= 200 for segment in segments)
    assert [segment.id for segment in segments] == ["spk/clip_00", "spk/clip_01", "spk/clip_02"]
    whole = plan_segments("spk/clip", transcript, max_frames=20 * 25, always_number=False)
    assert [(segment.id, segment.start) for segment in whole] == [("spk/clip", None)]
    with pytest.raises(TranscriptError, match="longer than"):
        plan_segments("spk/clip", Transcript("long", (Word("long", 0.0, 30.0),)), max_frames=400, always_number=True)
    with pytest.raises(TranscriptError, match="empty"):
        plan_segments("spk/clip", Transcript("{NS}"), max_frames=400, always_number=True)


def test_safe_join_refuses_paths_that_leave_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "spk").mkdir(parents=True)
    (tmp_path / "secret.mp4").write_bytes(b"x")
    (root / "spk" / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    assert safe_join(str(root), "spk/00001.mp4") == str(root / "spk" / "00001.mp4")
    for bad, message in (
        ("../secret.mp4", "outside the corpus root"),
        ("spk/../../secret.mp4", "outside the corpus root"),
        (str(tmp_path / "secret.mp4"), "relative to the corpus root"),
        ("spk/link.mp4", "through a symlink"),
    ):
        with pytest.raises(UnsafePathError, match=message):
            safe_join(str(root), bad)


def test_lrs3_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "lrs3"
    (root / "test" / "spk").mkdir(parents=True)
    (tmp_path / "elsewhere.mp4").write_bytes(b"x")
    (root / "test" / "spk" / "00001.mp4").symlink_to(tmp_path / "elsewhere.mp4")
    (root / "test" / "spk" / "00001.txt").write_text("Text:  HELLO\n")
    clips, skipped = plan_lrs3(str(root), MAX_TRAIN, MAX_TEST)
    assert clips == [] and len(skipped) == 1 and "symlink" in skipped[0][1]


def test_lrs3_transcript_symlinked_out_of_the_root_is_refused_not_read(tmp_path):
    root = tmp_path / "lrs3"
    (root / "test" / "spk").mkdir(parents=True)
    (root / "test" / "spk" / "00001.mp4").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("Text:  THE SECRET\n")
    (root / "test" / "spk" / "00001.txt").symlink_to(tmp_path / "secret.txt")
    clips, skipped = plan_lrs3(str(root), MAX_TRAIN, MAX_TEST)
    assert clips == [] and [name for name, _ in skipped] == ["test/spk/00001.mp4"]
    assert "refused 'test/spk/00001.txt': it resolves (through a symlink) outside" in skipped[0][1]


@pytest.mark.parametrize("linked", ["transcript beside the video", "transcript in the text tree", "audio"])
def test_auto_avsr_file_symlinked_out_of_the_root_is_refused_not_read(tmp_path, linked):
    root = tmp_path / "auto"
    video = root / "lrs3" / "lrs3_video_seg16s" / "test" / "spk" / "00001.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"x")
    (tmp_path / "secret").write_text("THE SECRET")
    labels = tmp_path / "labels.csv"
    if linked == "audio":
        video.with_suffix(".wav").symlink_to(tmp_path / "secret")
        labels.write_text("lrs3,lrs3_video_seg16s/test/spk/00001.mp4,42,1 2,hello there\n")
        refused = "lrs3_video_seg16s/test/spk/00001.wav"
    elif linked == "transcript beside the video":
        video.with_suffix(".txt").symlink_to(tmp_path / "secret")
        labels.write_text("lrs3,lrs3_video_seg16s/test/spk/00001.mp4,42,1 2\n")
        refused = "lrs3_video_seg16s/test/spk/00001.txt"
    else:
        text = root / "lrs3" / "lrs3_text_seg16s" / "test" / "spk" / "00001.txt"
        text.parent.mkdir(parents=True)
        text.symlink_to(tmp_path / "secret")
        labels.write_text("lrs3,lrs3_video_seg16s/test/spk/00001.mp4,42,1 2\n")
        refused = "lrs3_text_seg16s/test/spk/00001.txt"
    clips, skipped = plan_auto_avsr(str(root), str(labels), "test")
    assert clips == [] and len(skipped) == 1
    assert f"refused 'lrs3/{refused}': it resolves (through a symlink) outside" in skipped[0][1]


def test_every_command_has_help(capsys):
    for corpus in ("lrs3", "lrs2", "voxceleb2", "auto_avsr", "audio_csv", "asterisk"):
        with pytest.raises(SystemExit) as exit_info:
            main([corpus, "--help"])
        assert exit_info.value.code == 0
        assert "--workers" in capsys.readouterr().out
    assert main(["lrs3", "--root", "/nonexistent/lrs3", "--out", "/tmp/unused"]) == 2
