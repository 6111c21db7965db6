"""Prepare LRS3, LRS2, VoxCeleb2, an auto_avsr-preprocessed corpus or audio-only speech as sharded HF datasets.

One command per corpus, each reading the corpus's official layout::

    python -m mtsk_data.prepare lrs3 --root LRS3 --out data/lrs3
    python -m mtsk_data.prepare lrs2 --root LRS2 --out data/lrs2
    python -m mtsk_data.prepare voxceleb2 --root VoxCeleb2 --transcripts vox2_text.csv --out data/vox2
    python -m mtsk_data.prepare auto_avsr --root preprocessed --labels labels/lrs3_test.csv --split test --out data/lrs3
    python -m mtsk_data.prepare audio_csv --csv my_speech.csv --out data/my_speech
    python -m mtsk_data.prepare asterisk --out data/asterisk

Every clip becomes one or more records of the shared schema (:mod:`mtsk_data.records`): 16 kHz mono audio, a 96x96
mouth ROI at 25 fps cropped by :class:`llama_mtsk.mouth_roi.MouthROIExtractor`, and the transcript lower-cased without
punctuation. Clips longer than ``--max-train-seconds`` (16) or, in the test split, ``--max-test-seconds`` (24) are cut
into segments at word boundaries when the transcript has word timings (LRS2/LRS3 ``WORD START END ASDSCORE`` tables);
without timings such a clip is skipped, with its reason.

The two audio-only commands write records without video (a null ``video`` column, ``n_frames`` 0), which is what the
audio (ASR) modality trains on. ``audio_csv`` imports any audio files that soundfile or PyAV decode (WAV, FLAC, MP3,
Ogg, G.722, the audio track of an mp4, ...), listed in a CSV with the header ``path,text[,split,speaker]``; the paths
are relative to the CSV's folder or absolute, since the CSV is the user's own. ``asterisk`` fetches and prepares the
Asterisk prompts read by one speaker (:mod:`mtsk_data.asterisk`; CC-BY-SA-3.0, a ``LICENSE`` file is written beside
the shards), split by prompt text so that no test sentence is heard in training. Audio shorter than 0.1 s is skipped.

The output is ``<out>/data/<split>-NNNNN.parquet`` (streamable with ``datasets.load_dataset("parquet", ...,
streaming=True)``, see :func:`mtsk_data.records.load_split`) plus ``<out>/skipped.tsv``. A run is resumable and
idempotent: records already in finished shards are not recomputed, a half-written shard is discarded and rewritten,
and clips listed as skipped by an earlier run are not retried unless ``--retry-skipped`` is given. Clips are written
in a fixed order, so an interrupted and resumed run gives the same shards, byte for byte, as one clean run. Corrupt
or unreadable files never stop a run; they are listed with the reason. Paths from list or label files that lead
outside the corpus root are refused, and so are transcript and audio files beside a clip that are symlinks pointing
out of it.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import multiprocessing
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import av
import numpy as np
import pyarrow.parquet as pq
import soundfile
from tqdm.auto import tqdm

from llama_mtsk.configuration_llama_mtsk import SAMPLES_PER_FRAME, SAMPLING_RATE, VIDEO_FPS
from llama_mtsk.media_llama_mtsk import (
    SUPPORTED_EXTENSIONS,
    load_audio,
    load_audiovisual,
    prepare_audio,
)
from llama_mtsk.mouth_roi import MouthROIExtractor
from mtsk_data import asterisk
from mtsk_data.records import (
    SPLITS,
    ShardWriter,
    encode_mp4,
    encode_wav,
    make_record,
    normalize_text,
    shard_paths,
)


SKIPPED_FILE = "skipped.tsv"
# Shorter than any spoken word: such a file is empty or cut, not an utterance.
MIN_AUDIO_SECONDS = 0.1
WORD_TABLE_HEADER = ("WORD", "START", "END", "ASDSCORE")
# Non-speech annotations in LRS2/LRS3 transcripts, e.g. "{LG}" (laughter) or "{NS}" (noise).
_ANNOTATION = re.compile(r"\{[^}]*\}")


class UnsafePathError(ValueError):
    """A path from a list or label file that points outside the corpus root."""


class TranscriptError(ValueError):
    """A transcript file that does not follow the expected format."""


# --------------------------------------------------------------------------------------------------------------------
# Transcripts and segmentation
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """One row of an LRS2/LRS3 word-timing table (seconds from the start of the clip)."""

    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Transcript:
    """An LRS2/LRS3 transcript file: the ``Text:`` line and, when present, the word-timing table."""

    text: str
    words: tuple[Word, ...] = ()


def clean_text(text: str) -> str:
    """The transcript as records store it: annotations such as ``{LG}`` removed, lower-cased, no punctuation."""
    return normalize_text(_ANNOTATION.sub(" ", text))


def parse_lrs_transcript(content: str, name: str = "transcript") -> Transcript:
    """Parse an LRS2/LRS3 ``.txt`` file.

    The format is ``Key: value`` header lines (``Text:``, ``Conf:``, ``Ref:``, ...), then optional tables, each
    introduced by a header line: ``WORD START END ASDSCORE`` (word timings, read) and ``FRAME X Y W H`` (the face
    track, ignored)::

        Text:  SO THIS IS A STORY
        Conf:  4

        WORD START END ASDSCORE
        SO 0.10 0.25 5.1
        ...

    Raises:
        TranscriptError: no ``Text:`` line, or a malformed word row.
    """
    text = None
    words: list[Word] = []
    table = None
    for number, line in enumerate(content.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if table is None and line.startswith("Text:"):
            text = line[len("Text:") :].strip()
            continue
        if fields[0] in ("WORD", "FRAME") and all(f.isupper() for f in fields):
            table = tuple(fields)
            continue
        if table == WORD_TABLE_HEADER:
            try:
                word, start, end = fields[0], float(fields[1]), float(fields[2])
            except (IndexError, ValueError):
                raise TranscriptError(
                    f"{name}, line {number}: expected 'WORD START END ASDSCORE', got {line!r}"
                ) from None
            if not (0 <= start <= end and math.isfinite(end)):
                raise TranscriptError(f"{name}, line {number}: expected 0 <= START <= END, got {line!r}")
            words.append(Word(word, start, end))
    if text is None:
        raise TranscriptError(f"{name}: no 'Text:' line")
    return Transcript(text, tuple(words))


@dataclass(frozen=True)
class Segment:
    """One record to cut from a clip: frames ``[start, end)`` at 25 fps, or the whole clip when ``start`` is None."""

    id: str
    text: str
    start: int | None = None
    end: int | None = None


def plan_segments(clip_id: str, transcript: Transcript, max_frames: int, always_number: bool) -> list[Segment]:
    """Split a clip into segments of at most ``max_frames`` frames at word boundaries.

    A clip whose words all end within ``max_frames`` is kept whole (one segment); otherwise words are grouped
    greedily, each segment running from its first word's start to its last word's end. Segment ids are the clip id
    with ``_00``, ``_01``, ... (always for ``always_number``, the auto_avsr convention for ``pretrain`` clips).

    Raises:
        TranscriptError: a single word longer than ``max_frames``, or an empty transcript.
    """
    spoken = [word for word in transcript.words if clean_text(word.word)]
    last_frame = math.ceil(spoken[-1].end * VIDEO_FPS) if spoken else 0
    if last_frame <= max_frames:
        text = clean_text(transcript.text) or clean_text(" ".join(word.word for word in spoken))
        if not text:
            raise TranscriptError(f"{clip_id}: the transcript is empty")
        return [Segment(f"{clip_id}_00" if always_number else clip_id, text)]

    groups: list[list[Word]] = []
    for word in spoken:
        start, end = math.floor(word.start * VIDEO_FPS), math.ceil(word.end * VIDEO_FPS)
        if end - start > max_frames:
            raise TranscriptError(f"{clip_id}: the word {word.word!r} lasts longer than {max_frames / VIDEO_FPS:g} s")
        if groups and end - math.floor(groups[-1][0].start * VIDEO_FPS) <= max_frames:
            groups[-1].append(word)
        else:
            groups.append([word])
    return [
        Segment(
            f"{clip_id}_{index:02d}",
            clean_text(" ".join(word.word for word in group)),
            math.floor(group[0].start * VIDEO_FPS),
            math.ceil(group[-1].end * VIDEO_FPS),
        )
        for index, group in enumerate(groups)
    ]


# --------------------------------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One source file to prepare and the records to cut from it.

    Attributes:
        name: the file's path relative to the corpus root (how skipped clips are listed).
        path: the media file, of the kind ``media`` names.
        split: train / validation / test.
        speaker: speaker id stored in every record.
        segments: the records to write.
        max_frames: the longest record allowed; a whole-clip segment longer than this is trimmed when
            ``trim_to_max`` (the words end before it), else the clip is skipped. Not used for ROI videos.
        trim_to_max: see ``max_frames``.
        media: ``"face"`` (a talking-face video, cropped here), ``"roi"`` (an already cropped mouth ROI video, the
            auto_avsr layout) or ``"audio"`` (an audio file: an audio-only record, one segment).
        audio_path: for ROI videos, the WAV beside the video ("" = take the mp4's audio track).
    """

    name: str
    path: str
    split: str
    speaker: str
    segments: tuple[Segment, ...]
    max_frames: int
    trim_to_max: bool = False
    media: Literal["face", "roi", "audio"] = "face"
    audio_path: str = ""


def safe_join(root: str, relative: str) -> str:
    """``root/relative``, refusing a path that leaves ``root`` (absolute, ``..``, or a symlink pointing out).

    Raises:
        UnsafePathError: the path escapes the root.
    """
    if not relative or os.path.isabs(relative) or re.match(r"^[A-Za-z]:", relative):
        raise UnsafePathError(f"refused {relative!r}: expected a path relative to the corpus root {root}")
    normal = os.path.normpath(relative)
    if normal == ".." or normal.startswith(".." + os.sep):
        raise UnsafePathError(f"refused {relative!r}: it leads outside the corpus root {root}")
    path = os.path.join(root, normal)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise UnsafePathError(f"refused {relative!r}: it resolves (through a symlink) outside the corpus root {root}")
    return path


def _read_transcript(path: str) -> Transcript:
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_lrs_transcript(handle.read(), path)
    except FileNotFoundError:
        raise TranscriptError(f"no transcript: {path} not found") from None
    except UnicodeDecodeError as error:
        raise TranscriptError(f"{path}: not UTF-8 text ({error})") from None


def _lrs_clip(root: str, relative: str, split: str, max_frames: int, always_number: bool) -> Clip:
    """An LRS2/LRS3 clip ``<subset>/<speaker>/<clip>.mp4`` with its ``.txt`` beside it."""
    path = safe_join(root, relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    transcript = _read_transcript(safe_join(root, relative[: -len(".mp4")] + ".txt"))
    clip_id = relative[: -len(".mp4")].replace(os.sep, "/")
    segments = plan_segments(clip_id, transcript, max_frames, always_number)
    speaker = clip_id.split("/")[-2]
    return Clip(relative, path, split, speaker, tuple(segments), max_frames, trim_to_max=bool(transcript.words))


Planned = tuple[list[Clip], list[tuple[str, str]]]


def _plan(entries: Iterable[tuple[str, Callable[[], Clip]]]) -> Planned:
    """Build clips from ``(name, make_clip)`` pairs, turning a failure into a skipped entry with its reason."""
    clips, skipped = [], []
    for name, make_clip in entries:
        try:
            clips.append(make_clip())
        except (OSError, ValueError) as error:
            skipped.append((name, str(error)))
    return clips, skipped


def plan_lrs3(root: str, max_train_frames: int, max_test_frames: int) -> Planned:
    """LRS3: ``pretrain`` and ``trainval`` -> train, ``test`` -> test; ``<subset>/<speaker>/<clip>.mp4`` + ``.txt``."""
    subsets = [("pretrain", "train"), ("trainval", "train"), ("test", "test")]
    present = [(subset, split) for subset, split in subsets if os.path.isdir(os.path.join(root, subset))]
    if not present:
        raise FileNotFoundError(f"lrs3: no pretrain/, trainval/ or test/ folder under {root}")
    entries = []
    for subset, split in present:
        max_frames = max_test_frames if split == "test" else max_train_frames
        for speaker in sorted(os.listdir(os.path.join(root, subset))):
            folder = os.path.join(root, subset, speaker)
            if not os.path.isdir(folder):
                continue
            for file in sorted(name for name in os.listdir(folder) if name.endswith(".mp4")):
                relative = os.path.join(subset, speaker, file)
                entries.append(
                    (relative, functools.partial(_lrs_clip, root, relative, split, max_frames, subset == "pretrain"))
                )
    return _plan(entries)


# List file, media folder, split.
LRS2_LISTS = (
    ("train.txt", "main", "train"),
    ("val.txt", "main", "validation"),
    ("test.txt", "main", "test"),
    ("pretrain.txt", "pretrain", "train"),
)


def plan_lrs2(root: str, max_train_frames: int, max_test_frames: int) -> Planned:
    """LRS2: the list files ``train.txt``, ``val.txt``, ``test.txt``, ``pretrain.txt`` in ``root``, each line
    ``<speaker>/<clip>`` (test lines may carry a second column); media under ``root/mvlrs_v1/{main,pretrain}`` (or
    ``root/{main,pretrain}``)."""
    media_root = os.path.join(root, "mvlrs_v1") if os.path.isdir(os.path.join(root, "mvlrs_v1")) else root
    present = [entry for entry in LRS2_LISTS if os.path.isfile(os.path.join(root, entry[0]))]
    if not present:
        raise FileNotFoundError(f"lrs2: none of the list files {', '.join(e[0] for e in LRS2_LISTS)} found in {root}")
    entries = []
    for list_file, subset, split in present:
        max_frames = max_test_frames if split == "test" else max_train_frames
        with open(os.path.join(root, list_file), encoding="utf-8") as handle:
            names = [line.split()[0] for line in handle if line.strip()]
        for name in names:
            relative = os.path.join(subset, name + ".mp4")
            entries.append(
                (relative, functools.partial(_lrs_clip, media_root, relative, split, max_frames, subset == "pretrain"))
            )
    return _plan(entries)


def _read_csv(path: str, required: Sequence[str]) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: expected a header with the columns {', '.join(required)}; missing {missing}")
        return list(reader)


def plan_voxceleb2(root: str, transcripts: str, split: str, max_train_frames: int, max_test_frames: int) -> Planned:
    """VoxCeleb2 (no transcripts of its own): a CSV with header ``path,text[,split]``, ``path`` relative to ``root``
    (``dev/mp4/<speaker>/<video>/<clip>.mp4``); rows without a ``split`` go to ``split``. The speaker is the folder two
    levels above the file."""
    rows = _read_csv(transcripts, ("path", "text"))

    def make(row: dict[str, str]) -> Clip:
        relative = row["path"].strip()
        path = safe_join(root, relative)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found")
        row_split = (row.get("split") or split).strip()
        text = clean_text(row["text"])
        if not text:
            raise TranscriptError(f"{relative}: the transcript is empty")
        parts = os.path.normpath(relative).split(os.sep)
        clip_id = os.path.splitext("/".join(parts))[0]
        speaker = parts[-3] if len(parts) >= 3 else parts[0]
        max_frames = max_test_frames if row_split == "test" else max_train_frames
        return Clip(relative, path, row_split, speaker, (Segment(clip_id, text),), max_frames)

    return _plan((row["path"], functools.partial(make, row)) for row in rows)


def plan_auto_avsr(root: str, labels: str, split: str) -> Planned:
    """An auto_avsr-preprocessed corpus: label CSV rows ``dataset,rel_path,n_frames,token_ids[,text]`` (no header);
    the video is ``root/dataset/rel_path`` (a 96x96 mouth ROI at 25 fps) with its audio in the ``.wav`` beside it (or
    in the mp4's own audio track). The token ids are ignored; the text is the 5th column, or else the ``.txt`` in the
    parallel ``<dataset>_text_seg<N>s`` tree (or beside the video). The record id is ``rel_path`` without the
    ``<dataset>_video_seg<N>s/`` folder and the extension, as the LRS2/LRS3 commands name the same segments."""
    with open(labels, encoding="utf-8") as handle:
        rows = [line.rstrip("\n") for line in handle if line.strip()]

    def make(line_number: int, line: str) -> Clip:
        fields = line.split(",", 4)
        if len(fields) < 4:
            raise ValueError(f"{labels}, line {line_number}: expected 'dataset,rel_path,n_frames,token_ids[,text]'")
        dataset, relative = fields[0].strip(), fields[1].strip()
        path = safe_join(root, os.path.join(dataset, relative))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found")
        if len(fields) == 5:
            text = clean_text(fields[4])
        else:
            parts = relative.split("/")
            candidates = [safe_join(root, os.path.join(dataset, os.path.splitext(relative)[0] + ".txt"))]
            if re.fullmatch(r".+_video_seg\d+s", parts[0]):
                parallel = "/".join([parts[0].replace("_video_seg", "_text_seg")] + parts[1:])
                candidates.insert(0, safe_join(root, os.path.join(dataset, os.path.splitext(parallel)[0] + ".txt")))
            found = [candidate for candidate in candidates if os.path.isfile(candidate)]
            if not found:
                raise TranscriptError(f"no transcript for {relative}: no 5th column and none of {candidates} exists")
            with open(found[0], encoding="utf-8") as handle:
                content = handle.read()
            text = clean_text(parse_lrs_transcript(content, found[0]).text if content.startswith("Text:") else content)
        if not text:
            raise TranscriptError(f"{relative}: the transcript is empty")
        parts = os.path.splitext(relative)[0].split("/")
        if re.fullmatch(r".+_video_seg\d+s", parts[0]) and len(parts) > 1:
            parts = parts[1:]
        speaker = parts[-2] if len(parts) >= 2 else dataset
        audio_path = safe_join(root, os.path.join(dataset, os.path.splitext(relative)[0] + ".wav"))
        return Clip(
            os.path.join(dataset, relative), path, split, speaker, (Segment("/".join(parts), text),), 0,
            media="roi", audio_path=audio_path if os.path.isfile(audio_path) else "",
        )

    numbered = enumerate(rows, start=1)
    return _plan((f"{labels}:{number}", functools.partial(make, number, line)) for number, line in numbered)


def _check_relative_path(part: str, what: str) -> None:
    if not part or part.startswith("/") or ".." in part.split("/"):
        raise ValueError(f"write_auto_avsr_tree: {what} {part!r} cannot be used as a relative path")


def write_auto_avsr_tree(
    records: Iterable[Mapping[str, Any]],
    out_dir: str,
    split: str,
    token_ids: Callable[[str], list[int]],
    dataset: str = "lrs3",
    seg_seconds: int = 16,
    text_column: bool = True,
) -> str:
    """Writes records of the shared schema (:mod:`mtsk_data.records`) in the layout auto_avsr's preparation produces:
    the one :func:`plan_auto_avsr` reads and the authors' Llama-AVSR data loader takes. Returns the label CSV path.

    ``<out_dir>/<dataset>/<dataset>_video_seg<N>s/<id>.mp4`` with the ``.wav`` beside it, the transcript in upper case
    (as LRS writes it) in ``<out_dir>/<dataset>/<dataset>_text_seg<N>s/<id>.txt``, and the label file
    ``<out_dir>/labels/<dataset>_<split>.csv`` without a header, one line per record:
    ``dataset,rel_path,n_frames,token_ids[,text]``, where ``<out_dir>/<dataset>/<rel_path>`` is the video and
    ``token_ids`` are ``token_ids(text)`` space-separated (:func:`plan_auto_avsr` ignores them; the authors' code reads
    them). The record id is a relative path (``speaker/clip``), which :func:`plan_auto_avsr` gives back as the id.
    """
    _check_relative_path(dataset, "dataset")
    video_dir = f"{dataset}_video_seg{seg_seconds}s"
    text_dir = os.path.join(out_dir, dataset, f"{dataset}_text_seg{seg_seconds}s")
    labels = os.path.join(out_dir, "labels", f"{dataset}_{split}.csv")
    os.makedirs(os.path.dirname(labels), exist_ok=True)
    with open(labels, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for record in records:
            _check_relative_path(record["id"], "record id")
            rel_path = f"{video_dir}/{record['id']}.mp4"
            video_path = os.path.join(out_dir, dataset, rel_path)
            os.makedirs(os.path.dirname(video_path), exist_ok=True)
            with open(video_path, "wb") as media:
                media.write(record["video"]["bytes"])
            with open(video_path[: -len(".mp4")] + ".wav", "wb") as media:
                media.write(record["audio"]["bytes"])
            text_path = os.path.join(text_dir, record["id"] + ".txt")
            os.makedirs(os.path.dirname(text_path), exist_ok=True)
            with open(text_path, "w", encoding="utf-8") as text_file:
                text_file.write(record["text"].upper())
            row = [dataset, rel_path, record["n_frames"], " ".join(str(token) for token in token_ids(record["text"]))]
            writer.writerow(row + [record["text"]] if text_column else row)
    return labels


def plan_audio_csv(csv_path: str, split: str, speaker: str, max_train_frames: int, max_test_frames: int) -> Planned:
    """Audio files listed in a CSV with the header ``path,text[,split,speaker]``: ``path`` relative to the CSV's
    folder or absolute; rows without a ``split`` go to ``split``, without a ``speaker`` to ``speaker``. The record id
    is the path as written, without its extension."""
    rows = _read_csv(csv_path, ("path", "text"))
    folder = os.path.dirname(os.path.abspath(csv_path))

    def make(row: dict[str, str]) -> Clip:
        written = (row["path"] or "").strip()
        if not written:
            raise ValueError("the path is empty")
        path = os.path.join(folder, written)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found")
        row_split = (row.get("split") or split).strip()
        if row_split not in SPLITS:
            raise ValueError(f"split {row_split!r}: expected one of {', '.join(SPLITS)}")
        text = clean_text(row["text"] or "")
        if not text:
            raise TranscriptError(f"{written}: the transcript is empty")
        clip_id = os.path.splitext(os.path.normpath(written))[0].replace(os.sep, "/").lstrip("/")
        max_frames = max_test_frames if row_split == "test" else max_train_frames
        row_speaker = (row.get("speaker") or speaker).strip()
        return Clip(written, path, row_split, row_speaker, (Segment(clip_id, text),), max_frames, media="audio")

    # Line 1 is the header.
    names = [(row["path"] or "").strip() or f"{csv_path}:{line}" for line, row in enumerate(rows, start=2)]
    return _plan((name, functools.partial(make, row)) for name, row in zip(names, rows))


def plan_asterisk(root: str, seed: int, max_train_frames: int, max_test_frames: int) -> Planned:
    """The Asterisk prompts (:mod:`mtsk_data.asterisk`) in ``root``, the folder the two Debian packages were unpacked
    into (``/`` where they are installed): each ``<name>.g722`` under ``asterisk.SOUNDS_DIR`` paired with the line
    ``<name>: text`` of ``asterisk.TRANSCRIPTS_FILE``, split by text with :func:`asterisk.split_by_text`. Audio without
    a transcript, transcripts without audio and transcripts that only describe a sound are skipped, with the reason.
    The record id is the prompt's name (``digits/7``)."""
    sounds = safe_join(root, asterisk.SOUNDS_DIR)
    if not os.path.isdir(sounds):
        raise FileNotFoundError(f"asterisk: no {asterisk.SOUNDS_DIR} under {root} (from {asterisk.PACKAGES[0]})")
    transcripts_path = safe_join(root, asterisk.TRANSCRIPTS_FILE)
    if not os.path.isfile(transcripts_path):
        raise FileNotFoundError(f"asterisk: no {asterisk.TRANSCRIPTS_FILE} under {root} (from {asterisk.PACKAGES[1]})")
    transcripts = asterisk.read_transcripts(transcripts_path)
    audio_names = set()
    for folder, _, files in os.walk(sounds):
        for file in files:
            if file.endswith(asterisk.AUDIO_EXTENSION):
                relative = os.path.relpath(os.path.join(folder, file), sounds)
                audio_names.add(relative[: -len(asterisk.AUDIO_EXTENSION)].replace(os.sep, "/"))

    paired, skipped = [], []
    for name in sorted(audio_names | set(transcripts)):
        if name not in transcripts:
            skipped.append((name, f"no transcript: {name!r} is not listed in {asterisk.TRANSCRIPTS_FILE}"))
        elif name not in audio_names:
            skipped.append((name, f"no audio: {os.path.join(sounds, name + asterisk.AUDIO_EXTENSION)} not found"))
        else:
            try:
                path = safe_join(sounds, name + asterisk.AUDIO_EXTENSION)
                paired.append((name, path, asterisk.spoken_text(transcripts[name])))
            except ValueError as error:
                skipped.append((name, str(error)))
    splits = asterisk.split_by_text([text for _, _, text in paired], seed)
    clips = []
    for name, path, text in paired:
        max_frames = max_test_frames if splits[text] == "test" else max_train_frames
        segments = (Segment(name, text),)
        clips.append(Clip(name, path, splits[text], asterisk.SPEAKER, segments, max_frames, media="audio"))
    return clips, skipped


# --------------------------------------------------------------------------------------------------------------------
# Processing one clip (runs in the worker processes)
# --------------------------------------------------------------------------------------------------------------------

_EXTRACTOR: MouthROIExtractor | None = None


def read_audio_file(path: str) -> np.ndarray:
    """Any audio file soundfile or PyAV decodes, as 16 kHz mono float32: the processor's :func:`load_audio` for the
    types it knows, PyAV's own detection for the others (G.722, AIFF, AMR, ...)."""
    if os.path.splitext(path)[1].lower() in SUPPORTED_EXTENSIONS:
        return load_audio(path)
    to_float = av.AudioResampler(format="fltp")  # keeps the rate and channels: soxr resamples, as load_audio does
    pieces = []
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise ValueError(f"{path} has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.rate
            for frame in container.decode(stream):
                pieces.extend(converted.to_ndarray().T for converted in to_float.resample(frame))
    except av.FFmpegError as error:
        raise ValueError(f"could not read {path} as audio ({error})") from None
    if not pieces:
        raise ValueError(f"{path} holds no audio samples")
    return prepare_audio(np.concatenate(pieces), rate, name=path)


def _audio_records(clip: Clip, todo: Sequence[Segment]) -> list[dict]:
    """The audio-only record of an audio file."""
    samples = read_audio_file(clip.path)
    seconds = samples.size / SAMPLING_RATE
    if seconds < MIN_AUDIO_SECONDS:
        raise ValueError(f"the audio lasts {seconds:.3f} s, shorter than {MIN_AUDIO_SECONDS} s")
    if samples.size > clip.max_frames * SAMPLES_PER_FRAME:
        raise ValueError(f"the audio lasts {seconds:.2f} s, longer than {clip.max_frames / VIDEO_FPS:g} s")
    segment = todo[0]
    return [make_record(segment.id, segment.text, clip.speaker, samples, None)]


def _roi_records(clip: Clip, todo: Sequence[Segment]) -> list[dict]:
    """Records of an already cropped mouth ROI video (auto_avsr layout): the mp4 and WAV are stored as they are
    when they already have the record format."""
    with open(clip.path, "rb") as handle:
        video = handle.read()
    try:
        with av.open(clip.path) as container:
            stream = container.streams.video[0]
            size, has_audio = (stream.height, stream.width), bool(container.streams.audio)
    except (av.FFmpegError, IndexError) as error:
        raise ValueError(f"not a readable video ({error})") from None
    if size != (96, 96):
        raise ValueError(f"expected a 96x96 mouth ROI video, got {size[0]}x{size[1]}")
    if clip.audio_path:
        info = soundfile.info(clip.audio_path)
        if (info.samplerate, info.channels, info.subtype) == (SAMPLING_RATE, 1, "PCM_16"):
            with open(clip.audio_path, "rb") as handle:
                audio = handle.read()
        else:
            audio = encode_wav(load_audio(clip.audio_path))
    elif has_audio:
        # Audio and video muxed in one file: store the audio as WAV and the video without its audio track.
        samples, frames = load_audiovisual(clip.path)
        audio, video = encode_wav(samples), encode_mp4(frames)
    else:
        raise FileNotFoundError(f"no audio: no {os.path.splitext(clip.path)[0]}.wav and no audio track in the video")
    segment = todo[0]
    return [make_record(segment.id, segment.text, clip.speaker, audio, video)]


def _face_records(clip: Clip, todo: Sequence[Segment]) -> list[dict]:
    """Records of a talking-face video: decode, crop the mouth ROI of the whole clip, cut the segments."""
    global _EXTRACTOR
    if _EXTRACTOR is None:
        _EXTRACTOR = MouthROIExtractor()
    samples, frames = load_audiovisual(clip.path)
    n_frames = len(frames)
    if any(segment.start is None for segment in todo) and n_frames > clip.max_frames and not clip.trim_to_max:
        raise ValueError(
            f"the clip lasts {n_frames / VIDEO_FPS:.2f} s, longer than {clip.max_frames / VIDEO_FPS:g} s, and has no "
            "word timings to split it at"
        )
    # The ROI of the whole clip at once: landmark smoothing then runs across segment boundaries, as in one video.
    rois = _EXTRACTOR.extract(frames, float(VIDEO_FPS))
    records = []
    for segment in todo:
        start = segment.start or 0
        end = min(n_frames, clip.max_frames) if segment.start is None else min(segment.end, n_frames)
        if end <= start:
            raise ValueError(f"segment {segment.id} starts at {start / VIDEO_FPS:.2f} s, after the clip's end")
        audio = samples[start * SAMPLES_PER_FRAME : end * SAMPLES_PER_FRAME]
        records.append(make_record(segment.id, segment.text, clip.speaker, audio, encode_mp4(rois[start:end])))
    return records


def process_clip(task: tuple[Clip, tuple[Segment, ...]]) -> tuple[list[dict], str | None]:
    """Records of the given segments of one clip, or ``([], reason)`` when the clip cannot be prepared."""
    clip, todo = task
    make_records = {"face": _face_records, "roi": _roi_records, "audio": _audio_records}[clip.media]
    try:
        return make_records(clip, todo), None
    except Exception as error:  # a corrupt or unusual file must not stop the run: report it instead
        return [], f"{type(error).__name__}: {error}".replace("\t", " ").replace("\n", " ")


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a preparation run did."""

    out_dir: str
    clips_total: int = 0
    clips_already_done: int = 0
    clips_processed: int = 0
    records_written: int = 0
    hours_written: float = 0.0
    records_in_output: dict[str, int] = field(default_factory=dict)
    hours_in_output: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_before: int = 0

    def format(self) -> str:
        lines = [f"Prepared corpus in {self.out_dir}"]
        if self.clips_processed == 0 and self.clips_total > 0:
            lines.append(
                f"  nothing to do: {self.clips_already_done} clip(s) already prepared, {self.skipped_before} skipped "
                "by an earlier run (--retry-skipped retries those)"
            )
        else:
            lines.append(
                f"  this run: {self.clips_processed} clip(s) -> {self.records_written} record(s), "
                f"{self.hours_written:.3f} h; {self.clips_already_done} clip(s) already prepared"
            )
        for split in sorted(self.records_in_output):
            records, hours = self.records_in_output[split], self.hours_in_output[split]
            lines.append(f"  {split}: {records} record(s), {hours:.3f} h in total")
        lines.append(f"  skipped: {len(self.skipped)} (listed in {os.path.join(self.out_dir, SKIPPED_FILE)})")
        lines.extend(f"    {name}: {reason}" for name, reason in self.skipped[:20])
        if len(self.skipped) > 20:
            lines.append(f"    ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def _read_skipped(out_dir: str) -> dict[str, str]:
    path = os.path.join(out_dir, SKIPPED_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t", 1) for line in handle][1:]
    return {row[0]: row[1] for row in rows if len(row) == 2}


def _write_skipped(out_dir: str, skipped: dict[str, str]) -> None:
    path = os.path.join(out_dir, SKIPPED_FILE)
    temporary = os.path.join(out_dir, f".{SKIPPED_FILE}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write("path\treason\n")
        handle.writelines(f"{name}\t{reason}\n" for name, reason in sorted(skipped.items()))
    os.replace(temporary, path)


def prepare(
    planned: Planned,
    out_dir: str,
    workers: int = 1,
    records_per_shard: int = 500,
    retry_skipped: bool = False,
    progress: bool = True,
    license: str | None = None,
) -> Summary:
    """Prepare planned clips into ``out_dir`` (see the module docstring for resuming and skipping).

    Args:
        planned: ``(clips, skipped)`` from one of the ``plan_*`` functions.
        out_dir: the output folder; shards go to ``out_dir/data``.
        workers: processes decoding and cropping clips in parallel (1: in this process).
        records_per_shard: records per parquet shard.
        retry_skipped: retry clips that an earlier run listed in ``skipped.tsv``.
        progress: show a progress bar.
        license: the corpus's license id (e.g. ``"cc-by-sa-3.0"``), named in the dataset card, which points to the
            ``LICENSE`` file the caller writes into ``out_dir``.
    """
    clips, plan_skipped = planned
    os.makedirs(out_dir, exist_ok=True)
    clips = sorted(clips, key=lambda clip: (clip.split, clip.name))
    summary = Summary(out_dir, clips_total=len(clips) + len(plan_skipped))
    previous = {} if retry_skipped else _read_skipped(out_dir)
    skipped = dict(plan_skipped)

    # Duplicate ids would collide in the shards: keep the first clip, skip the others.
    seen: set[tuple[str, str]] = set()
    unique = []
    for clip in clips:
        keys = {(clip.split, segment.id) for segment in clip.segments}
        if keys & seen:
            skipped[clip.name] = "duplicate record id " + ", ".join(sorted(key[1] for key in keys & seen))
            continue
        seen |= keys
        unique.append(clip)

    writers = {split: ShardWriter(out_dir, split, records_per_shard) for split in sorted({c.split for c in unique})}
    done = {split: writer.done_ids() for split, writer in writers.items()}
    tasks = []
    for clip in unique:
        todo = tuple(segment for segment in clip.segments if segment.id not in done[clip.split])
        if not todo:
            summary.clips_already_done += 1
        elif clip.name in previous:
            skipped[clip.name] = previous[clip.name]
            summary.skipped_before += 1
        else:
            tasks.append((clip, todo))

    pool = None
    if workers > 1 and len(tasks) > 1:
        # Forked workers inherit the imported modules (torch, transformers) instead of importing them again, as
        # torch's DataLoader workers do on Linux; the parent has decoded nothing yet, so no codec threads are forked.
        methods = multiprocessing.get_all_start_methods()
        pool = multiprocessing.get_context("fork" if "fork" in methods else None).Pool(workers)
    try:
        results = pool.imap(process_clip, tasks) if pool else map(process_clip, tasks)
        bar = tqdm(results, total=len(tasks), unit="clip", desc="preparing", disable=not progress or None)
        for (clip, _), (records, reason) in zip(tasks, bar):
            summary.clips_processed += 1
            if reason is not None:
                skipped[clip.name] = reason
                continue
            for record in records:
                writers[clip.split].write(record)
                summary.records_written += 1
                summary.hours_written += record["duration"] / 3600
        for writer in writers.values():
            writer.close()
    finally:
        if pool is not None:
            pool.terminate()

    _write_skipped(out_dir, skipped)
    summary.skipped = sorted(skipped.items())
    for split in SPLITS:
        paths = shard_paths(out_dir, split)
        durations = [pq.read_table(path, columns=["duration"])["duration"].to_numpy() for path in paths]
        if durations:
            summary.records_in_output[split] = int(sum(len(d) for d in durations))
            summary.hours_in_output[split] = float(np.concatenate(durations).sum()) / 3600
    audio_only = bool(clips) and all(clip.media == "audio" for clip in clips)
    _write_dataset_card(out_dir, summary, audio_only, license)
    return summary


def _write_dataset_card(out_dir: str, summary: Summary, audio_only: bool, license: str | None) -> None:
    """A README.md whose ``configs`` block names the shards, so ``datasets.load_dataset(out_dir)`` finds the splits
    (and does not mistake ``skipped.tsv`` for data)."""
    lines = ["---"] + ([f"license: {license}"] if license else []) + ["configs:", "- config_name: default"]
    lines.append("  data_files:")
    for split in summary.records_in_output:
        lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    kind = "audio-only" if audio_only else "audio-visual"
    lines += ["---", f"# Prepared {kind} speech corpus", "", "Made by `python -m mtsk_data.prepare`.", ""]
    for split, records in summary.records_in_output.items():
        lines.append(f"- {split}: {records} records, {summary.hours_in_output[split]:.2f} h")
    video = "null (audio only), n_frames 0" if audio_only else "mp4 bytes, 96x96 mouth ROI, 25 fps"
    lines += [
        "",
        "Columns: id, text (lower-case, no punctuation), speaker, duration (s), n_frames (25 fps), audio (16 kHz mono",
        f"16-bit WAV bytes), video ({video}). Skipped clips and why: `{SKIPPED_FILE}`.",
        "",
    ]
    if license:
        lines += [f"License: {license} (attribution and terms in `LICENSE`).", ""]
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mtsk_data.prepare",
        description="Prepare a speech corpus as sharded Hugging Face parquet datasets (16 kHz mono audio, 96x96 mouth "
        "ROI at 25 fps unless audio-only, lower-cased transcripts). Resumable: rerun the same command to continue.",
    )
    commands = parser.add_subparsers(dest="corpus", required=True, metavar="CORPUS")

    def add(name: str, help: str, root: bool = True, length_limits: bool = True) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, description=help)
        if root:
            command.add_argument("--root", required=True, help="the corpus folder")
        command.add_argument("--out", required=True, help="the output folder (shards in OUT/data)")
        command.add_argument(
            "--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all cores)"
        )
        command.add_argument("--records-per-shard", type=int, default=500, help="records per parquet shard (500)")
        command.add_argument("--retry-skipped", action="store_true", help="retry clips an earlier run skipped")
        command.add_argument("--no-progress", action="store_true", help="no progress bar")
        if length_limits:
            command.add_argument(
                "--max-train-seconds", type=float, default=16.0, help="longest train/validation record (16)"
            )
            command.add_argument("--max-test-seconds", type=float, default=24.0, help="longest test record (24)")
        return command

    add("lrs3", "LRS3: ROOT holds pretrain/, trainval/ and test/ with <speaker>/<clip>.mp4 + .txt")
    add("lrs2", "LRS2: ROOT holds train.txt, val.txt, test.txt, pretrain.txt and mvlrs_v1/{main,pretrain}")
    command = add("voxceleb2", "VoxCeleb2: ROOT holds dev/mp4/... and test/mp4/...; transcripts from a CSV")
    command.add_argument(
        "--transcripts", required=True, help="CSV with the header path,text[,split]; paths relative to ROOT"
    )
    command.add_argument("--split", default="train", choices=SPLITS, help="split of the rows without one")
    command = add(
        "auto_avsr", "auto_avsr-preprocessed mouth ROIs: ROOT/<dataset>/<rel_path>.mp4 + .wav, a label CSV",
        length_limits=False,
    )
    command.add_argument(
        "--labels", required=True, help="label CSV: dataset,rel_path,n_frames,token_ids[,text] (no header)"
    )
    command.add_argument("--split", required=True, choices=SPLITS, help="the split these labels are")
    command = add("audio_csv", "Audio-only: any audio files listed in a CSV path,text[,split,speaker]", root=False)
    command.add_argument(
        "--csv", required=True, help="CSV with the header path,text[,split,speaker]; paths relative to its folder"
    )
    command.add_argument("--split", default="train", choices=SPLITS, help="split of the rows without one")
    command.add_argument("--speaker", default="unknown", help="speaker of the rows without one (unknown)")
    command = add(
        "asterisk", "Audio-only: the Asterisk English prompts (one speaker, CC-BY-SA-3.0) from Debian packages, split "
        "by prompt text", root=False,
    )
    source = command.add_mutually_exclusive_group()
    source.add_argument(
        "--debs", help=f"a folder holding the .deb files of {' and '.join(asterisk.PACKAGES)} (default: apt-get "
        "download them into OUT/debian/debs)"
    )
    source.add_argument(
        "--extracted", help="the folder the two packages are already unpacked into (/ where they are installed)"
    )
    command.add_argument("--seed", type=int, default=0, help="seed of the split by prompt text (0)")
    return parser


def _write_asterisk_license(root: str, out_dir: str) -> None:
    copyright_path = safe_join(root, asterisk.COPYRIGHT_FILE)
    copyright_text = None
    if os.path.isfile(copyright_path):
        with open(copyright_path, encoding="utf-8") as handle:
            copyright_text = handle.read()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "LICENSE"), "w", encoding="utf-8") as handle:
        handle.write(asterisk.license_notice(copyright_text))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The longest train/validation and test records, in 25 fps frames (auto_avsr clips come already cut).
    limits = ()
    if args.corpus != "auto_avsr":
        limits = (round(args.max_train_seconds * VIDEO_FPS), round(args.max_test_seconds * VIDEO_FPS))
    license = None
    try:
        if args.corpus == "audio_csv":
            planned = plan_audio_csv(args.csv, args.split, args.speaker, *limits)
        elif args.corpus == "asterisk":
            root = args.extracted or asterisk.fetch_packages(os.path.join(args.out, "debian"), args.debs)
            root = os.path.abspath(root)
            planned = plan_asterisk(root, args.seed, *limits)
            _write_asterisk_license(root, args.out)
            license = asterisk.LICENSE_ID
        else:
            root = os.path.abspath(args.root)
            if not os.path.isdir(root):
                print(f"error: --root {args.root} is not a folder", file=sys.stderr)
                return 2
            if args.corpus == "auto_avsr":
                planned = plan_auto_avsr(root, args.labels, args.split)
            elif args.corpus == "lrs3":
                planned = plan_lrs3(root, *limits)
            elif args.corpus == "lrs2":
                planned = plan_lrs2(root, *limits)
            else:
                planned = plan_voxceleb2(root, args.transcripts, args.split, *limits)
    except (OSError, ValueError, asterisk.FetchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = prepare(
        planned, args.out, workers=max(1, args.workers), records_per_shard=args.records_per_shard,
        retry_skipped=args.retry_skipped, progress=not args.no_progress, license=license,
    )
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
