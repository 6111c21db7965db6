"""Fake talking-face corpora in the official LRS3 layout, for testing the preparation commands end to end.

The face is a real photograph that ships offline in a PyPI wheel: scikit-image's ``astronaut`` (Eileen Collins,
NASA, public domain). Its mouth is animated per frame from a lip track
(:func:`mtsk_data.synthetic.visemes.lip_track`): a dark mouth opening is drawn between the lips, as tall and as wide
as the track says, and the head moves a few pixels, so that a mouth-ROI extractor has to find and follow a real face.
The speech is synthesized by the embedded corpus generator (:mod:`mtsk_data.synthetic.corpus`), so audio, words and
lips agree.

Trees: :func:`make_fake_lrs3`, :func:`make_fake_lrs2`, :func:`make_fake_voxceleb2` (official layouts); the layout
auto_avsr's preprocessing writes comes from :func:`mtsk_data.prepare.write_auto_avsr_tree`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llama_mtsk.configuration_llama_mtsk import SAMPLES_PER_FRAME
from mtsk_data.records import encode_mp4
from mtsk_data.synthetic.grammar import sample_sentence


FRAME_SIZE = 224  # LRS2/LRS3 face videos are 224x224
# Hand-annotated on the photograph (not from a landmark detector, so tests of the detector can use them):
# the corners of the mouth and the point between the lips, in pixels of the 512x512 image.
ASTRONAUT_MOUTH_CORNERS = ((202.0, 140.0), (245.0, 141.0))
ASTRONAUT_MOUTH_CENTRE = (223.5, 145.5)
# Top-left corner of the 224x224 window that frames the face (face in the middle, as in LRS3).
_WINDOW = (30, 112)


def astronaut() -> np.ndarray:
    """The astronaut photograph, uint8 ``(512, 512, 3)`` RGB (bundled with scikit-image, no download)."""
    try:
        from skimage import data
    except ImportError as error:
        raise ImportError("the fake corpus uses scikit-image's bundled photograph: pip install scikit-image") from error
    return data.astronaut()


def _smooth_walk(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    steps = np.cumsum(rng.standard_normal(n + 8))
    smooth = np.convolve(steps, np.ones(9) / 9, mode="valid")[:n]
    smooth = smooth - smooth.mean()
    scale = np.abs(smooth).max()
    return amplitude * smooth / scale if scale > 0 else smooth


def talking_face(
    opening: np.ndarray, width: np.ndarray, rng: np.random.Generator, motion: float = 3.0
) -> np.ndarray:
    """Frames of the astronaut saying something: uint8 ``(T, 224, 224, 3)``.

    Args:
        opening: ``(T,)`` inner lip opening in pixels of a 96x96 mouth ROI (the ``open`` column of a lip track).
        width: ``(T,)`` mouth width relative to rest (the ``width`` column).
        rng: drives the head motion and sensor noise.
        motion: largest head displacement in pixels.
    """
    photo = astronaut().astype(np.float32)
    n_frames = len(opening)
    (left_x, _), (right_x, _) = ASTRONAUT_MOUTH_CORNERS
    centre_x, centre_y = ASTRONAUT_MOUTH_CENTRE
    half_width = (right_x - left_x) / 2
    # The photo's mouth is about 44 px wide, a 96x96 ROI's about 50: scale the track's pixels to the photo.
    to_photo = half_width / 25.0
    # The mouth is drawn only inside a box around it.
    box = (slice(int(centre_y) - 30, int(centre_y) + 31), slice(int(centre_x) - 40, int(centre_x) + 41))
    y, x = np.mgrid[box].astype(np.float32)
    shift_x, shift_y = _smooth_walk(rng, n_frames, motion), _smooth_walk(rng, n_frames, motion)
    frames = np.empty((n_frames, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    cavity = np.array([70.0, 25.0, 30.0], dtype=np.float32)
    for index in range(n_frames):
        a = 0.8 * half_width * float(width[index])
        b = 0.5 * float(opening[index]) * to_photo
        top = _WINDOW[0] + int(round(shift_y[index]))
        left = _WINDOW[1] + int(round(shift_x[index]))
        window = photo[top : top + FRAME_SIZE, left : left + FRAME_SIZE].copy()
        if b > 0.2:
            rho = np.sqrt(((x - centre_x) / a) ** 2 + ((y - centre_y) / b) ** 2)
            alpha = np.clip(0.5 - (rho - 1.0) * min(a, b), 0.0, 1.0)[..., None]
            mouth = window[box[0].start - top : box[0].stop - top, box[1].start - left : box[1].stop - left]
            mouth += alpha * (cavity - mouth)
        noisy = window + 2.0 * rng.standard_normal(window.shape, dtype=np.float32)
        frames[index] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return frames


def faceless_frames(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """A plain background without a face (a grey gradient with noise): uint8 ``(T, 224, 224, 3)``."""
    gradient = np.linspace(90.0, 150.0, FRAME_SIZE, dtype=np.float32)[None, :, None, None]
    frames = gradient + 3.0 * rng.standard_normal((n_frames, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.float32)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------------
# Corpus trees
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeClip:
    """One clip of a fake corpus, with what a preparation run should make of it.

    Attributes:
        relative: the mp4's path relative to the corpus root.
        text: the normalised transcript of the whole clip.
        words: ``(word, start, end)`` timings in seconds (empty for clips written without a timing table).
        n_frames: video frames at 25 fps.
        kind: "face" (a talking face), "faceless" (no face in any frame) or "corrupt" (a truncated mp4).
    """

    relative: str
    text: str
    words: tuple[tuple[str, float, float], ...]
    n_frames: int
    kind: str = "face"


def speak(
    sentences: Sequence[str], speaker: str, seed: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, float, float]]]:
    """The astronaut saying ``sentences`` one after the other with a synthetic voice.

    Returns:
        ``(audio, frames, words)``: 16 kHz float32 audio of 640 samples per frame, uint8 ``(T, 224, 224, 3)``
        frames at 25 fps, and word timings. eSpeak reports phonemes, not words, so each sentence's words share its
        span from the first to the last phoneme in proportion to their length: word boundaries are approximate.
    """
    from mtsk_data.synthetic.corpus import get_speaker, synthesize_utterance
    from mtsk_data.synthetic.visemes import Phoneme, lip_track

    audio_parts, phonemes, words = [], [], []
    offset = 0.0
    for index, sentence in enumerate(sentences):
        utterance = synthesize_utterance(sentence, speaker, seed * 1000 + index)
        audio_parts.append(utterance.audio)
        phonemes += [Phoneme(p.name, p.start + offset, p.end + offset) for p in utterance.phonemes]
        first, last = utterance.phonemes[0].start, utterance.phonemes[-1].end
        weights = np.cumsum([0] + [len(word) + 1 for word in sentence.split()], dtype=np.float64)
        bounds = first + (last - first) * weights / weights[-1]
        words += [(word, offset + bounds[k], offset + bounds[k + 1]) for k, word in enumerate(sentence.split())]
        offset += utterance.duration
    audio = np.concatenate(audio_parts)
    n_frames = audio.size // SAMPLES_PER_FRAME
    track = lip_track(phonemes, n_frames, articulation=get_speaker(speaker).mouth.articulation)
    frames = talking_face(track[:, 0], track[:, 1], np.random.default_rng(seed))
    return audio, frames, words


def _write_lrs_clip(
    root: str, relative: str, audio: np.ndarray, frames: np.ndarray, text_line: str, words: Sequence | None
) -> None:
    """Write ``relative`` (.mp4, a talking face with its sound) and the LRS2/LRS3 ``.txt`` beside it."""
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(encode_mp4(frames, audio=audio))
    lines = [f"Text:  {text_line}", "Conf:  4"]
    if words:
        lines += ["", "WORD START END ASDSCORE"] + [f"{w.upper()} {s:.2f} {e:.2f} 5.0" for w, s, e in words]
    with open(path[: -len(".mp4")] + ".txt", "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def _spoken_lrs_clip(
    root: str,
    relative: str,
    sentences: Sequence[str],
    speaker: str,
    seed: int,
    timed: bool,
    text_line: str | None = None,
) -> FakeClip:
    audio, frames, words = speak(sentences, speaker, seed)
    text = " ".join(sentences)
    _write_lrs_clip(root, relative, audio, frames, text_line or text.upper(), words if timed else None)
    return FakeClip(relative, text, tuple(words) if timed else (), len(frames))


def make_fake_lrs3(root: str, seed: int = 0) -> list[FakeClip]:
    """A small LRS3 in the official layout: ``pretrain/``, ``trainval/`` and ``test/``, ``<speaker>/<clip>.mp4`` +
    ``.txt``. Holds a pretrain clip longer than 16 s (several sentences, with its word-timing table), a short
    pretrain clip, a trainval clip whose ``Text:`` line carries punctuation and a ``{LG}`` annotation, a test clip,
    a truncated (corrupt) mp4 and a clip without a face."""
    rng = np.random.default_rng(seed)
    clips = []
    long_sentences: list[str] = []
    while sum(len(s.split()) for s in long_sentences) < 48:  # about 20 s of speech
        long_sentences.append(sample_sentence(rng))
    clips.append(_spoken_lrs_clip(root, "pretrain/spk00/00001.mp4", long_sentences, "spk00", seed + 1, True))
    clips.append(_spoken_lrs_clip(root, "pretrain/spk00/00002.mp4", [sample_sentence(rng)], "spk00", seed + 2, True))
    sentence = sample_sentence(rng)
    words = sentence.upper().split()
    noisy = " ".join(words[:-1]) + ", " + words[-1] + "! {LG}"
    clips.append(_spoken_lrs_clip(root, "trainval/spk01/50001.mp4", [sentence], "spk01", seed + 3, False, noisy))
    clips.append(_spoken_lrs_clip(root, "test/spk02/00001.mp4", [sample_sentence(rng)], "spk02", seed + 4, False))

    # A truncated mp4: the index (moov box) that a reader needs is written at the end, so nothing can be decoded.
    corrupt = _spoken_lrs_clip(root, "trainval/spk01/50002.mp4", [sample_sentence(rng)], "spk01", seed + 5, False)
    path = os.path.join(root, corrupt.relative)
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 3])
    clips.append(FakeClip(corrupt.relative, corrupt.text, (), corrupt.n_frames, kind="corrupt"))

    sentence = sample_sentence(rng)
    audio, frames, _ = speak([sentence], "spk02", seed + 6)
    _write_lrs_clip(root, "test/spk02/00002.mp4", audio, faceless_frames(len(frames), rng), sentence.upper(), None)
    clips.append(FakeClip("test/spk02/00002.mp4", sentence, (), len(frames), kind="faceless"))
    return clips


def make_fake_lrs2(root: str, seed: int = 0) -> list[FakeClip]:
    """A small LRS2 in the official layout: ``mvlrs_v1/main`` and ``mvlrs_v1/pretrain`` with ``<speaker>/<clip>.mp4``
    + ``.txt``, and the list files ``train.txt``, ``val.txt``, ``test.txt`` (with a second column, as the official
    one) and ``pretrain.txt`` in ``root``. ``val.txt`` also lists a path that leads outside the root."""
    rng = np.random.default_rng(seed)
    media = os.path.join(root, "mvlrs_v1")
    clips = [
        _spoken_lrs_clip(media, "main/6001/00001.mp4", [sample_sentence(rng)], "spk03", seed + 1, timed=False),
        _spoken_lrs_clip(media, "main/6002/00001.mp4", [sample_sentence(rng)], "spk04", seed + 2, timed=False),
        _spoken_lrs_clip(media, "pretrain/6003/00001.mp4", [sample_sentence(rng)], "spk05", seed + 3, timed=True),
    ]
    lists = {
        "train.txt": "6001/00001\n",
        "val.txt": "../../outside/00001\n",
        "test.txt": "6002/00001 NF\n",
        "pretrain.txt": "6003/00001\n",
    }
    for name, content in lists.items():
        with open(os.path.join(root, name), "w", encoding="utf-8") as handle:
            handle.write(content)
    return clips


def make_fake_voxceleb2(root: str, seed: int = 0) -> tuple[list[FakeClip], str]:
    """A small VoxCeleb2 (``dev/mp4/<speaker>/<video>/<clip>.mp4``, ``test/mp4/...``) and its transcript CSV
    (``path,text,split``; the corpus has no transcripts of its own). The CSV also lists a path outside the root.

    Returns:
        ``(clips, csv_path)``; the CSV is written beside ``root``, not inside it.
    """
    rng = np.random.default_rng(seed)
    clips, rows = [], []
    for relative, speaker, split in (
        ("dev/mp4/id00001/vidAAAAAAA/00001.mp4", "spk06", "train"),
        ("test/mp4/id00002/vidBBBBBBB/00001.mp4", "spk07", "test"),
    ):
        sentence = sample_sentence(rng)
        audio, frames, _ = speak([sentence], speaker, seed + len(clips))
        path = os.path.join(root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(encode_mp4(frames, audio=audio))
        clips.append(FakeClip(relative, sentence, (), len(frames)))
        rows.append((relative, sentence.capitalize() + ".", split))
    rows.append(("../outside/00001.mp4", "escaping", "train"))
    csv_path = os.path.abspath(root) + "_transcripts.csv"
    with open(csv_path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("path", "text", "split"))
        writer.writerows(rows)
    return clips, csv_path
