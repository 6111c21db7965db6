# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Processor of Llama-MTSK: media decoding (audio files, video containers), the Whisper feature extractor for audio,
a video processor for mouth-ROI clips, and the LLM tokenizer for transcripts.

This file is remote code: it travels with every checkpoint and imports only torch, transformers, numpy, soxr,
soundfile and av (the last two only when a file is decoded).
"""

from __future__ import annotations

import io
import os
import re
import unicodedata
from collections.abc import Sequence
from typing import Any, BinaryIO, Union

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging
from transformers.video_processing_utils import VideoProcessorMixin


logger = logging.get_logger(__name__)

SAMPLING_RATE = 16000
VIDEO_FPS = 25
SAMPLES_PER_FRAME = SAMPLING_RATE // VIDEO_FPS  # 640: one video frame of audio
# Read by soundfile (libsndfile); everything else goes through PyAV's FFmpeg.
SOUNDFILE_EXTENSIONS = (".wav", ".flac")
AUDIO_CONTAINER_EXTENSIONS = (".mp3", ".m4a", ".aac", ".ogg", ".opus")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov")
SUPPORTED_EXTENSIONS = SOUNDFILE_EXTENSIONS + AUDIO_CONTAINER_EXTENSIONS + VIDEO_EXTENSIONS
# A 2-D waveform is one multi-channel clip; its channel axis is the short one.
MAX_AUDIO_CHANNELS = 8
# ITU-R BT.601 luma, what OpenCV's and torchvision's RGB -> gray conversions use.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
STANDARDIZE_EPS = 1e-8
# The audio and video of one recording end a little apart: encoders pad the last audio frame and drop or repeat a
# video frame (0.1 s is 2.5 video frames), and a long recording gets proportionally more room (1 %: 0.6 s a minute).
# A larger mismatch is not one recording's two streams: aligning them would throw away or invent much of one.
MAX_STREAM_MISMATCH_SECONDS = 0.1
MAX_STREAM_MISMATCH_FRACTION = 0.01
# Whisper encoder frames per second: one per two mel frames of 10 ms.
WHISPER_FRAMES_PER_SECOND = 50
# Video frames converted to float at a time: a large clip never exists as float32 at full size.
FRAMES_PER_CONVERSION = 32

MediaSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO]


# --------------------------------------------------------------------------------------------------------------------
# Transcripts
# --------------------------------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """
    The one transcript normalisation of Llama-MTSK, for corpus transcripts, training labels, decoded hypotheses and
    WER references alike: lower case; accents of Latin letters folded (`é` -> `e`, `ß` -> `ss`, compatibility forms
    such as full-width letters and ligatures decomposed); letters and digits of every script kept, with the marks
    that belong to them (Devanagari vowel signs, Arabic vowels); punctuation dropped, apostrophes inside a word kept
    (`don't`); single spaces.

    >>> normalize_text("¿Qué tal? CAFÉ NAÏVE, über straße!")
    'que tal cafe naive uber strasse'
    """
    decomposed = unicodedata.normalize("NFKD", text.lower().replace("ß", "ss").replace("’", "'"))
    characters = []
    marks_belong_to_letter = False  # whether the combining marks that follow belong to the last letter
    for character in decomposed:
        if unicodedata.category(character).startswith("M"):
            # An accent on a Latin letter is folded away; a mark of another script is part of its letter.
            characters.append(character if marks_belong_to_letter else "")
        elif character.isalnum() or character == "'":
            characters.append(character)
            marks_belong_to_letter = character.isalpha() and not unicodedata.name(character, "").startswith("LATIN")
        else:
            characters.append(" ")
            marks_belong_to_letter = False
    # Apostrophes inside a word stay; quotes around words go.
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", "".join(characters))
    return " ".join(unicodedata.normalize("NFC", text).split())


# --------------------------------------------------------------------------------------------------------------------
# Media decoding
# --------------------------------------------------------------------------------------------------------------------


def _describe(source: Any) -> str:
    """A short name of a media source for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return f"file {os.fspath(source)!r}"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    name = getattr(source, "name", None)
    return f"file-like object {name!r}" if isinstance(name, str) else f"<{type(source).__name__} object>"


def _is_media_source(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike, bytes, bytearray)) or hasattr(value, "read")


def _read_source(source: MediaSource) -> tuple[str, bytes | str]:
    """Checks a media source and tells how to decode it: returns `(kind, data)` with `kind` "soundfile" (WAV/FLAC) or
    "container" (anything FFmpeg demuxes), and `data` a path or the bytes."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No such media file: {path!r}")
        if os.path.isdir(path):
            raise ValueError(f"Expected a media file, got the directory {path!r}")
        extension = os.path.splitext(path)[1].lower()
        if extension in SOUNDFILE_EXTENSIONS:
            return "soundfile", path
        if extension in AUDIO_CONTAINER_EXTENSIONS + VIDEO_EXTENSIONS:
            return "container", path
        raise ValueError(
            f"Unsupported media type {extension or '(no extension)'!r} for {path!r}; expected one of "
            f"{', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if hasattr(source, "read"):
        source = source.read()
    if not isinstance(source, (bytes, bytearray)):
        raise TypeError(f"Expected a path, bytes or a file-like object, got {type(source).__name__}")
    data = bytes(source)
    if not data:
        raise ValueError("Expected media bytes, got an empty byte string")
    if (data[:4] == b"RIFF" and data[8:12] == b"WAVE") or data[:4] == b"fLaC":
        return "soundfile", data
    return "container", data


def _open_container(data: bytes | str, description: str):
    import av

    try:
        return av.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except av.FFmpegError as error:
        raise ValueError(
            f"Could not read {description} as an audio or video file ({error}); expected a WAV/FLAC file or a "
            f"video container ({', '.join(VIDEO_EXTENSIONS)})"
        ) from None


def _downmix(waveform: np.ndarray) -> np.ndarray:
    """(samples, channels) -> (samples,) by averaging the channels."""
    return waveform.mean(axis=1) if waveform.shape[1] > 1 else waveform[:, 0]


def _frame_to_array(frame, gray: bool, max_short_side: int | None) -> np.ndarray:
    """One decoded video frame -> uint8 (H, W) luma or (H, W, 3) RGB, converted by FFmpeg and, when its shorter side
    exceeds `max_short_side`, downscaled to it (area averaging, aspect ratio kept): a large frame never exists here
    at full size."""
    width, height = frame.width, frame.height
    if max_short_side is not None and min(width, height) > max_short_side:
        factor = max_short_side / min(width, height)
        width, height = max(1, round(width * factor)), max(1, round(height * factor))
    converted = frame.reformat(width=width, height=height, format="gray" if gray else "rgb24", interpolation="AREA")
    return converted.to_ndarray()


def _decode_streams(
    container,
    description: str,
    audio: bool,
    video: bool,
    gray: bool = False,
    max_short_side: int | None = None,
) -> tuple[tuple[np.ndarray, int] | None, tuple[np.ndarray, np.ndarray, float] | None]:
    """
    Decodes the first audio and/or video stream of an open PyAV container in one demuxing pass.

    Returns:
        `(audio, video)`: `audio` is `(float32 mono waveform, sample rate)` at the file's own rate; `video` is
        `(uint8 frames (T, H, W, 3) or (T, H, W), start time of each frame in seconds, nominal fps)`, each frame
        converted as [`_frame_to_array`] says; `None` for a stream that was not asked for.
    """
    import av

    if audio and not container.streams.audio:
        raise ValueError(f"{description} has no audio stream")
    if video and not container.streams.video:
        raise ValueError(f"{description} has no video stream")
    audio_stream = container.streams.audio[0] if audio else None
    video_stream = container.streams.video[0] if video else None
    if video_stream is not None:
        video_stream.thread_type = "AUTO"
        rate = video_stream.average_rate or video_stream.guessed_rate or video_stream.base_rate
        nominal_fps = float(rate) if rate else float(VIDEO_FPS)
    # Converts decoded audio to planar float32, keeping the channel layout and rate (resampling is soxr's job).
    to_float = av.AudioResampler(format="fltp")
    audio_pieces, sample_rate, frames, times = [], None, [], []
    streams = [stream for stream in (audio_stream, video_stream) if stream is not None]
    packets_read = {stream.index: 0 for stream in streams}
    try:
        for packet in container.demux(streams):
            if packet.size:
                packets_read[packet.stream.index] += 1
            for frame in packet.decode():
                if packet.stream is video_stream:
                    frames.append(_frame_to_array(frame, gray, max_short_side))
                    times.append(frame.time if frame.time is not None else len(times) / nominal_fps)
                    continue
                if sample_rate is None:
                    sample_rate = frame.sample_rate
                elif frame.sample_rate != sample_rate:
                    raise ValueError(
                        f"{description}: the audio sample rate changes mid-stream ({sample_rate} -> {frame.sample_rate} Hz)"
                    )
                for converted in to_float.resample(frame):
                    audio_pieces.append(converted.to_ndarray().T)  # (samples, channels)
    except av.FFmpegError as error:
        raise ValueError(f"Could not decode {description}: the file is corrupt or truncated ({error})") from None

    # A container whose index promises more packets than its data holds was cut short (e.g. an interrupted download
    # of an mp4 with its index in front): refuse it rather than transcribe part of it.
    for stream in streams:
        if stream.frames and packets_read[stream.index] < stream.frames:
            raise ValueError(
                f"{description} is truncated: its {stream.type} stream declares {stream.frames} packets but only "
                f"{packets_read[stream.index]} could be read"
            )
    audio_result = video_result = None
    if audio_stream is not None:
        if not audio_pieces:
            raise ValueError(f"{description} has an audio stream with no samples")
        audio_result = (_downmix(np.concatenate(audio_pieces, axis=0)), sample_rate)
    if video_stream is not None:
        if not frames:
            raise ValueError(f"{description} has a video stream with zero frames")
        video_result = (np.stack(frames), np.asarray(times, dtype=np.float64), nominal_fps)
    return audio_result, video_result


def _wav_declared_samples(data: bytes | str) -> int | None:
    """The samples per channel the data chunk of a RIFF WAV header declares, or `None` when the header does not say
    (not a RIFF WAV file, or one written to a stream, whose sizes are left at 0 or 0xFFFFFFFF)."""
    with open(data, "rb") if isinstance(data, str) else io.BytesIO(data) as file:
        header = file.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        block_align = 0  # bytes per sample of all channels, from the fmt chunk
        while len(chunk := file.read(8)) == 8:
            chunk_id, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                return size // block_align if block_align and size not in (0, 0xFFFFFFFF) else None
            # Chunks are padded to an even size.
            if chunk_id == b"fmt ":
                block_align = int.from_bytes(file.read(size)[12:14], "little")
                file.seek(size % 2, os.SEEK_CUR)
            else:
                file.seek(size + size % 2, os.SEEK_CUR)
    return None


def load_audio(source: MediaSource, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """
    Decodes an audio file, or the audio track of a video container, to a float32 mono waveform.

    Args:
        source: A path, the file's bytes, or a binary file-like object. WAV and FLAC are read with soundfile; other
            audio files (`.mp3`, `.m4a`, `.ogg`, ...) and video containers (`.mp4`, `.mkv`, `.avi`, `.webm`, `.mov`)
            with PyAV. Several channels are averaged.
        sampling_rate: The rate of the returned waveform; the file is resampled with soxr if it differs.

    Returns:
        `np.ndarray` of shape (samples,), float32.

    Raises:
        FileNotFoundError: the path does not exist. ValueError: unsupported type, unreadable, corrupt or truncated
        file (a WAV file holding fewer samples than its header declares), no audio stream, no samples, or NaN/inf
        samples.
    """
    description = _describe(source)
    kind, data = _read_source(source)
    if kind == "soundfile":
        import soundfile

        try:
            waveform, file_rate = soundfile.read(
                io.BytesIO(data) if isinstance(data, bytes) else data, dtype="float32", always_2d=True
            )
        except (soundfile.LibsndfileError, RuntimeError) as error:
            raise ValueError(f"Could not read audio from {description}: {error}") from None
        if waveform.shape[0] == 0:
            raise ValueError(f"{description} holds no audio samples")
        # libsndfile reads what a cut-short WAV file holds without a word: compare with what its header promises.
        declared = _wav_declared_samples(data)
        if declared is not None and waveform.shape[0] < declared:
            raise ValueError(
                f"{description} is truncated: its header declares {declared} samples ({declared / file_rate:.2f} s) "
                f"but it holds only {waveform.shape[0]} ({waveform.shape[0] / file_rate:.2f} s)"
            )
        waveform = _downmix(waveform)
    else:
        with _open_container(data, description) as container:
            (waveform, file_rate), _ = _decode_streams(container, description, audio=True, video=False)
    return prepare_audio(waveform, file_rate, target_rate=sampling_rate, name=description)


def resample_frames(frames: np.ndarray, times: np.ndarray, fps: float = VIDEO_FPS) -> np.ndarray:
    """
    Resamples a clip in time to a constant frame rate: the output frame at time `t` is the input frame on screen at
    `t` (the last one that started at or before it), as a player shows it. Handles variable frame rates.

    Args:
        frames: (T, ...) frames.
        times: (T,) start time of each frame in seconds, increasing.
        fps: The output frame rate.

    Returns:
        (T', ...) frames with T' = round(duration * fps), at least 1, where duration runs from the first frame's start
        to the last frame's end (its start plus the median frame interval).
    """
    if len(frames) != len(times):
        raise ValueError(f"Got {len(frames)} frames but {len(times)} timestamps")
    if len(frames) == 0:
        raise ValueError("Cannot resample a clip with zero frames")
    times = np.asarray(times, dtype=np.float64) - float(times[0])
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
    duration = times[-1] + step
    n_out = max(1, int(round(duration * fps)))
    targets = np.arange(n_out) / fps
    # A small tolerance keeps a frame whose timestamp is rounded a hair after its slot.
    indices = np.searchsorted(times, targets + 1e-3 / fps, side="right") - 1
    return frames[np.clip(indices, 0, len(frames) - 1)]


def load_video(
    source: MediaSource, fps: float | None = None, gray: bool = False, max_short_side: int | None = None
) -> tuple[np.ndarray, float]:
    """
    Decodes the first video stream of a container with PyAV.

    Args:
        source: A path (`.mp4`, `.mkv`, `.avi`, `.webm`, `.mov`), the file's bytes, or a binary file-like object.
        fps: If given, the clip is resampled in time to this constant rate using the frame timestamps (variable frame
            rate videos included); otherwise every decoded frame is returned with the stream's average rate.
        gray: Return (T, H, W) luma frames instead of (T, H, W, 3) RGB.
        max_short_side: Frames whose shorter side is longer are downscaled to it while decoding (area averaging,
            aspect ratio kept), so a high-resolution video never exists at full size; `None` keeps the file's size.

    Returns:
        `(frames, fps)`: uint8 frames (T, H, W, 3) or (T, H, W), and their frame rate.
    """
    description = _describe(source)
    kind, data = _read_source(source)
    if kind == "soundfile":
        raise ValueError(f"{description} is an audio file; expected a video container ({', '.join(VIDEO_EXTENSIONS)})")
    with _open_container(data, description) as container:
        _, (frames, times, nominal_fps) = _decode_streams(
            container, description, audio=False, video=True, gray=gray, max_short_side=max_short_side
        )
    if fps is None:
        return frames, nominal_fps
    return resample_frames(frames, times, fps), float(fps)


def align_audio_to_frames(
    audio: np.ndarray, n_frames: int, name: str = "audio", tolerance: int = SAMPLES_PER_FRAME
) -> np.ndarray:
    """
    Pads (with zeros) or trims a 16 kHz waveform to exactly `n_frames * 640` samples, as the authors align audio to
    25 fps video. A mismatch of up to `tolerance` samples (default: one video frame) is fixed silently; a larger one
    up to the larger of 0.1 s and 1 % of the video's duration is fixed with a warning; beyond that the two streams
    are not one recording, and a `ValueError` gives both durations.
    """
    expected = n_frames * SAMPLES_PER_FRAME
    mismatch = len(audio) - expected
    max_mismatch = max(
        tolerance, MAX_STREAM_MISMATCH_SECONDS * SAMPLING_RATE, MAX_STREAM_MISMATCH_FRACTION * expected
    )
    if abs(mismatch) > max_mismatch:
        raise ValueError(
            f"{name}: the audio lasts {len(audio) / SAMPLING_RATE:.3f} s ({len(audio)} samples) but the video "
            f"{n_frames / VIDEO_FPS:.3f} s ({n_frames} frames at {VIDEO_FPS} fps); streams this far apart are not one "
            f"recording (at most {max_mismatch / SAMPLING_RATE:.3f} s of difference is aligned)"
        )
    if abs(mismatch) > tolerance:
        logger.warning(
            f"{name}: the audio has {len(audio)} samples ({len(audio) / SAMPLING_RATE:.3f} s) but the video has "
            f"{n_frames} frames ({n_frames / VIDEO_FPS:.3f} s = {expected} samples); the audio is "
            f"{'trimmed' if mismatch > 0 else 'zero-padded'} by {abs(mismatch)} samples to match the video."
        )
    if mismatch >= 0:
        return audio[:expected]
    return np.concatenate([audio, np.zeros(-mismatch, dtype=audio.dtype)])


def load_audiovisual(
    source: MediaSource, gray: bool = False, max_short_side: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """
    Decodes both streams of one video container: the audio as 16 kHz mono float32, the video resampled in time to
    25 fps (its frames converted as [`load_video`] says for `gray` and `max_short_side`), and the audio padded or
    trimmed to 640 samples per video frame (see [`align_audio_to_frames`]). The mismatch fixed without a warning is
    one video frame plus one frame of the audio codec (the padding an encoder adds to its last frame, 1024 samples for
    AAC); a larger one is fixed with a warning naming both lengths, and one beyond the larger of 0.1 s and 1 % of the
    video is refused.

    Returns:
        `(audio, frames)`: float32 (T * 640,) and uint8 (T, H, W, 3) (or (T, H, W) with `gray=True`).
    """
    description = _describe(source)
    kind, data = _read_source(source)
    if kind == "soundfile":
        raise ValueError(f"{description} is an audio file; expected a video container with audio and video streams")
    with _open_container(data, description) as container:
        (audio, audio_rate), (frames, times, _) = _decode_streams(
            container, description, audio=True, video=True, gray=gray, max_short_side=max_short_side
        )
        codec_frame_size = container.streams.audio[0].codec_context.frame_size or 0
    audio = prepare_audio(audio, audio_rate, name=description)
    frames = resample_frames(frames, times, VIDEO_FPS)
    # Lossy audio codecs pad their last frame (1024 samples for AAC): that much extra audio is expected, not a mismatch.
    tolerance = SAMPLES_PER_FRAME + int(np.ceil(codec_frame_size * SAMPLING_RATE / audio_rate))
    return align_audio_to_frames(audio, len(frames), name=description, tolerance=tolerance), frames


def probe_streams(source: MediaSource) -> tuple[bool, bool]:
    """Tells which streams a media source holds: `(has_audio, has_video)`. WAV/FLAC files hold audio only."""
    description = _describe(source)
    kind, data = _read_source(source)
    if kind == "soundfile":
        return True, False
    with _open_container(data, description) as container:
        return bool(container.streams.audio), bool(container.streams.video)


# --------------------------------------------------------------------------------------------------------------------
# Raw arrays
# --------------------------------------------------------------------------------------------------------------------


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name} could not be read as a numeric array: {error}") from None


def _check_finite(array: np.ndarray, name: str) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            first = int(np.flatnonzero(bad.reshape(-1))[0])
            raise ValueError(f"{name} holds {int(bad.sum())} NaN or infinite values (first at flat index {first})")


def prepare_audio(
    audio: Any, sampling_rate: int, target_rate: int = SAMPLING_RATE, name: str = "audio"
) -> np.ndarray:
    """
    Turns raw PCM into a float32 mono waveform at `target_rate`.

    Args:
        audio: numpy array, torch tensor or list; float (any scale) or integer PCM (int16, int32, int8, uint8 are scaled
            to [-1, 1]). Shape (samples,), or (samples, channels) / (channels, samples) for one multi-channel clip (the
            channel axis is the short one, at most 8 channels); channels are averaged.
        sampling_rate: The rate of `audio`; resampled with soxr (high quality) if it differs from `target_rate`.
        name: How errors name this input.
    """
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"{name}: sampling_rate must be a positive integer (Hz), got {sampling_rate!r}")
    array = _to_numpy(audio, name)
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"{name}: expected float or integer PCM samples, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected real PCM samples, got complex dtype {array.dtype}")
    if array.ndim == 2:
        if min(array.shape) > MAX_AUDIO_CHANNELS:
            raise ValueError(
                f"{name}: a 2-D waveform must be (samples, channels) or (channels, samples) with at most "
                f"{MAX_AUDIO_CHANNELS} channels, got shape {array.shape}; pass a batch as a list of clips"
            )
        channels_first = array.shape[0] < array.shape[1]
        array = array.T if channels_first else array
    elif array.ndim != 1:
        raise ValueError(f"{name}: expected a waveform of shape (samples,) or (samples, channels), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} holds no audio samples")
    _check_finite(array, name)

    # Down-mix first (cheaper to resample one channel), in float32: ample precision for 24-bit PCM.
    waveform = array.astype(np.float32, copy=False)
    waveform = waveform.mean(axis=1, dtype=np.float32) if waveform.ndim == 2 else waveform
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        half_range = np.float32((int(info.max) + 1) / 2 if info.min == 0 else -int(info.min))
        # Unsigned PCM (8-bit WAV) is offset binary: its zero is the middle of the range.
        waveform = (waveform - half_range) / half_range if info.min == 0 else waveform / half_range
    if int(sampling_rate) != target_rate:
        import soxr

        waveform = soxr.resample(waveform, int(sampling_rate), target_rate, quality="HQ")
        if waveform.shape[0] == 0:
            raise ValueError(f"{name} is too short to resample from {sampling_rate} Hz to {target_rate} Hz")
    return np.ascontiguousarray(waveform, dtype=np.float32)


def standardize_waveform(waveform: np.ndarray) -> np.ndarray:
    """Per-utterance standardisation (layer norm over the whole waveform, eps 1e-8), as the authors do before Whisper."""
    waveform = waveform.astype(np.float64)
    standardized = (waveform - waveform.mean()) / np.sqrt(waveform.var() + STANDARDIZE_EPS)
    return standardized.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Video processor
# --------------------------------------------------------------------------------------------------------------------


class LlamaMTSKVideoProcessor(VideoProcessorMixin):
    r"""
    Turns mouth-ROI clips into AV-HuBERT inputs: grayscale, resized to `roi_size` x `roi_size` when the clip has
    another size, centre-cropped to `image_size` x `image_size`, scaled to [0, 1] and normalised with `image_mean` /
    `image_std`, resampled in time to `fps`. A clip that is already `image_size` x `image_size` is used as is (the
    training collator random-crops before calling the processor). Clips are zero-padded in time to the longest.

    The layout of a clip is read from its number of axes alone: a 3-D array is (T, H, W) gray whatever its sizes, a
    4-D array is channels-last (T, H, W, C) with C = 1 (gray) or 3 (RGB).

    Args:
        image_size (`int`, defaults to 88): Side of the crop the video encoder reads (`video_config.image_size`).
        roi_size (`int`, defaults to 96): Side a mouth ROI is resized to before the centre crop (`video_config.roi_size`).
        image_mean (`float`, defaults to 0.421): Mean of the [0, 1] grayscale pixels.
        image_std (`float`, defaults to 0.165): Standard deviation of the [0, 1] grayscale pixels.
        fps (`float`, defaults to 25): The frame rate the encoder expects.
    """

    model_input_names = ["pixel_values_videos", "pixel_values_videos_mask"]

    def __init__(
        self,
        image_size: int = 88,
        roi_size: int = 96,
        image_mean: float = 0.421,
        image_std: float = 0.165,
        fps: float = VIDEO_FPS,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < image_size <= roi_size:
            raise ValueError(f"image_size ({image_size}) must be positive and at most roi_size ({roi_size})")
        if image_std <= 0:
            raise ValueError(f"image_std must be positive, got {image_std}")
        self.image_size = int(image_size)
        self.roi_size = int(roi_size)
        self.image_mean = float(image_mean)
        self.image_std = float(image_std)
        self.fps = fps

    def preprocess_clip(self, video: Any, fps: float | None = None, name: str = "video") -> torch.Tensor:
        """
        One clip -> normalised float32 (T, image_size, image_size).

        Args:
            video: (T, H, W) or (T, H, W, C) with C in {1, 3} (RGB), numpy / torch / nested lists; uint8 in [0, 255]
                or float in [0, 1].
            fps: The clip's frame rate; `None` means it is already at `self.fps`.
            name: How errors name this input.
        """
        array = _to_numpy(video, name)
        channels = _clip_channels(array, name)
        if array.shape[0] == 0:
            raise ValueError(f"{name} has zero frames")
        if np.issubdtype(array.dtype, np.floating):
            _check_finite(array, name)
            low, high = float(array.min()), float(array.max())
            if low < 0.0 or high > 1.0:
                raise ValueError(
                    f"{name}: float frames must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; pass uint8 frames "
                    "in [0, 255] or divide by 255"
                )
        elif array.dtype != np.uint8:
            raise ValueError(f"{name}: expected uint8 or float frames, got dtype {array.dtype}")
        height, width = array.shape[1:3]
        if min(height, width) < self.image_size and (height, width) != (self.image_size, self.image_size):
            logger.warning_once(
                f"{name}: frames of {height}x{width} are upscaled to {self.roi_size}x{self.roi_size}; mouth ROIs are "
                "expected at that size"
            )
        pixels = torch.cat(
            [
                self._gray_crop(array[start : start + FRAMES_PER_CONVERSION], channels)
                for start in range(0, array.shape[0], FRAMES_PER_CONVERSION)
            ]
        )
        if fps is not None and float(fps) != float(self.fps):
            if fps <= 0:
                raise ValueError(f"{name}: fps must be positive, got {fps}")
            pixels = resample_frames(pixels, np.arange(pixels.shape[0]) / float(fps), self.fps)
        return ((pixels - self.image_mean) / self.image_std).contiguous()

    def _gray_crop(self, frames: np.ndarray, channels: int) -> torch.Tensor:
        """A few checked frames -> float32 (t, image_size, image_size) gray in [0, 1], resized and cropped."""
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).float()
        if frames.dtype == np.uint8:
            pixels /= 255.0
        if channels == 3:
            pixels = pixels @ torch.tensor(LUMA_WEIGHTS, dtype=torch.float32)
        elif channels == 1:
            pixels = pixels[..., 0]
        height, width = pixels.shape[1:]
        if (height, width) == (self.image_size, self.image_size):
            return pixels
        if (height, width) != (self.roi_size, self.roi_size):
            size = (self.roi_size, self.roi_size)
            pixels = F.interpolate(pixels[:, None], size=size, mode="bilinear", antialias=True, align_corners=False)
            pixels = pixels[:, 0].clamp_(0.0, 1.0)
        top = int(round((self.roi_size - self.image_size) / 2.0))
        return pixels[:, top : top + self.image_size, top : top + self.image_size]

    def __call__(
        self,
        videos: Any,
        fps: float | Sequence[float | None] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Processes one clip or a list of clips (see [`preprocess_clip`]).

        Returns:
            [`BatchFeature`] with `pixel_values_videos` (B, T, 1, image_size, image_size) float32, zero-padded in time,
            and `pixel_values_videos_mask` (B, T) long, 1 on real frames.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments for {type(self).__name__}: {sorted(kwargs)}")
        clips = _as_batch(videos, name="videos")
        rates = list(fps) if isinstance(fps, (list, tuple)) else [fps] * len(clips)
        if len(rates) != len(clips):
            raise ValueError(f"Got {len(rates)} frame rates for {len(clips)} videos")
        processed = [
            self.preprocess_clip(clip, rate, name=f"videos[{index}]")
            for index, (clip, rate) in enumerate(zip(clips, rates))
        ]
        length = max(clip.shape[0] for clip in processed)
        pixel_values = torch.zeros(len(processed), length, 1, self.image_size, self.image_size)
        mask = torch.zeros(len(processed), length, dtype=torch.long)
        for index, clip in enumerate(processed):
            pixel_values[index, : clip.shape[0], 0] = clip
            mask[index, : clip.shape[0]] = 1
        return BatchFeature(
            {"pixel_values_videos": pixel_values, "pixel_values_videos_mask": mask}, tensor_type=return_tensors
        )

    def preprocess(self, videos: Any, **kwargs) -> BatchFeature:
        return self(videos, **kwargs)


def _clip_channels(array: np.ndarray, name: str) -> int:
    """The layout rule of every clip, from its number of axes alone: a 3-D array is (T, H, W) gray whatever its sizes
    (returns 0); a 4-D array is channels-last (T, H, W, C) with C = 1 (gray) or 3 (RGB) (returns C)."""
    if array.ndim == 3:
        return 0
    if array.ndim == 4 and array.shape[-1] in (1, 3):
        return array.shape[-1]
    raise ValueError(
        f"{name}: expected frames of shape (T, H, W) (gray) or (T, H, W, C) with C = 1 (gray) or 3 (RGB), got shape "
        f"{array.shape}; pass a batch as a list of clips"
    )


def _as_batch(value: Any, name: str) -> list:
    """One item or a list/tuple of items -> list of items. An item is an array, a tensor, a media source (path,
    bytes, file-like) or a list; a list whose first element is a number is one waveform, not a batch."""
    if _is_media_source(value) or isinstance(value, (np.ndarray, torch.Tensor)):
        return [value]
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} is an empty list")
        if isinstance(value[0], (int, float, np.number)):
            return [value]
        return list(value)
    raise TypeError(f"{name}: expected an array, a tensor, a list, a path or bytes, got {type(value).__name__}")


# --------------------------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------------------------


class LlamaMTSKProcessor(ProcessorMixin):
    r"""
    Prepares Llama-MTSK inputs: 16 kHz audio -> per-utterance standardisation -> Whisper log-mel (`input_features`,
    `input_features_mask`); mouth-ROI clips -> `pixel_values_videos`, `pixel_values_videos_mask`; transcripts ->
    `labels`. Inputs can be raw arrays or media files (decoded with [`load_audio`] / [`load_video`]).

    Args:
        feature_extractor ([`WhisperFeatureExtractor`]): Its `chunk_length` is the Whisper window; audio longer than
            the window raises (the automatic-speech-recognition pipeline splits long inputs).
        tokenizer ([`PreTrainedTokenizerBase`]): The LLM tokenizer with the added special tokens.
        video_processor ([`LlamaMTSKVideoProcessor`]): Mouth-ROI clip processing.
        standardize_audio (`bool`, defaults to `True`): Standardise each waveform (zero mean, unit variance) before
            the Whisper features, as the authors do. Off for a Whisper encoder trained from scratch: measured here,
            such an encoder recognised a spoken digit 99 % of the time after 200 steps without it, 38 % with it.
        round_features_to_bfloat16 (`bool`, defaults to `False`): Round the log-mel features to bfloat16 precision
            (returned as float32), as the authors' code does before its Whisper encoder whatever the encoder's dtype:
            on for checkpoints converted from their training, so the encoder sees the inputs it was trained on.
    """

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        video_processor,
        standardize_audio: bool = True,
        round_features_to_bfloat16: bool = False,
    ):
        self.standardize_audio = standardize_audio
        self.round_features_to_bfloat16 = round_features_to_bfloat16
        super().__init__(feature_extractor, tokenizer, video_processor)

    @classmethod
    def from_model_config(
        cls, config, tokenizer, standardize_audio: bool = True, round_features_to_bfloat16: bool = False
    ) -> "LlamaMTSKProcessor":
        """
        Builds the processor that matches a [`LlamaMTSKConfig`]: the Whisper window and mel bins from
        `config.audio_config` (`max_source_positions * 2` mel frames), the crop sizes and normalisation from
        `config.video_config`. A modality the config does not use gets the defaults. The other arguments are the
        processor's own.
        """
        feature_extractor_kwargs = {}
        audio_config = getattr(config, "audio_config", None)
        if audio_config is not None:
            window_frames = audio_config.max_source_positions * 2
            hop_length = 160
            chunk_length = window_frames * hop_length / SAMPLING_RATE
            feature_extractor_kwargs = {
                "feature_size": audio_config.num_mel_bins,
                "chunk_length": int(chunk_length) if chunk_length.is_integer() else chunk_length,
            }
        feature_extractor = WhisperFeatureExtractor(**feature_extractor_kwargs, return_attention_mask=True)
        video_config = getattr(config, "video_config", None)
        video_kwargs = {}
        if video_config is not None:
            video_kwargs = {
                "image_size": video_config.image_size,
                "roi_size": video_config.roi_size,
                "image_mean": video_config.image_mean,
                "image_std": video_config.image_std,
            }
        return cls(
            feature_extractor,
            tokenizer,
            LlamaMTSKVideoProcessor(**video_kwargs),
            standardize_audio=standardize_audio,
            round_features_to_bfloat16=round_features_to_bfloat16,
        )

    @property
    def window_samples(self) -> int:
        """Samples in the Whisper window: the longest audio one call accepts."""
        return int(round(self.feature_extractor.chunk_length * self.feature_extractor.sampling_rate))

    @property
    def model_input_names(self) -> list[str]:
        return ["input_features", "input_features_mask", "pixel_values_videos", "pixel_values_videos_mask"]

    def __call__(
        self,
        audio: Any = None,
        videos: Any = None,
        text: str | list[str] | None = None,
        sampling_rate: int | None = None,
        fps: float | Sequence[float | None] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Prepares one example or a batch (lists). Any of `audio`, `videos`, `text` may be omitted, but not all.

        Args:
            audio: A waveform (numpy / torch / list; float or integer PCM; mono, or one multi-channel clip as
                (samples, channels) or (channels, samples)), a media file (path, bytes, file-like), or a list of these.
            videos: A mouth-ROI clip (T, H, W) or (T, H, W, C), uint8 or float in [0, 1], a video file, or a list.
            text: Transcript(s) -> `labels`: the tokens of the [`normalize_text`] transcript without special tokens,
                then EOS, right-padded with -100.
            sampling_rate: The rate of raw waveforms (required for them; files carry their own).
            fps: Frame rate of raw clips (a number or one per clip); `None` means 25 fps. Video files are resampled to
                25 fps from their timestamps.
            return_tensors: "pt" (default) or "np".

        Returns:
            [`BatchFeature`] with `input_features` (B, n_mels, window frames) and `input_features_mask` (B, window
            frames) when audio is given, `pixel_values_videos` (B, T, 1, S, S) and `pixel_values_videos_mask` (B, T)
            when videos are given, `labels` (B, L) when text is given.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments for {type(self).__name__}: {sorted(kwargs)}")
        if audio is None and videos is None and text is None:
            raise ValueError("Pass at least one of audio=, videos= or text=")
        outputs: dict[str, Any] = {}
        batch_sizes = {}
        if audio is not None:
            audio_features = self._process_audio_batch(audio, sampling_rate)
            batch_sizes["audio"] = audio_features["input_features"].shape[0]
            outputs.update(audio_features)
        if videos is not None:
            clips = _as_batch(videos, name="videos")
            rates = list(fps) if isinstance(fps, (list, tuple)) else [fps] * len(clips)
            if len(rates) != len(clips):
                raise ValueError(f"Got {len(rates)} frame rates for {len(clips)} videos")
            for index, clip in enumerate(clips):
                if _is_media_source(clip):
                    # Decoded at the encoder's frame rate, large frames downscaled in the decoder to the ROI size the
                    # video processor resizes them to anyway. RGB, not FFmpeg's gray: the video processor takes the
                    # luma in float, as the authors' torchvision Grayscale does (FFmpeg's integer gray differs from it
                    # by up to one level).
                    clips[index], rates[index] = load_video(
                        clip, fps=self.video_processor.fps, max_short_side=self.video_processor.roi_size
                    )
            video_features = self.video_processor(clips, fps=rates, return_tensors="pt")
            batch_sizes["videos"] = video_features["pixel_values_videos"].shape[0]
            outputs.update(video_features)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            batch_sizes["text"] = len(texts)
            outputs["labels"] = self._encode_labels(texts)
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"The inputs have different batch sizes: {batch_sizes}")
        return BatchFeature(outputs, tensor_type=return_tensors)

    def _process_audio_batch(self, audio: Any, sampling_rate: int | None) -> dict[str, torch.Tensor]:
        waveforms = []
        for index, clip in enumerate(_as_batch(audio, name="audio")):
            name = f"audio[{index}]"
            if _is_media_source(clip):
                waveform = load_audio(clip, sampling_rate=self.feature_extractor.sampling_rate)
            else:
                if sampling_rate is None:
                    raise ValueError(
                        f"{name} is a raw waveform: pass its sampling_rate= (Hz); it is resampled to "
                        f"{self.feature_extractor.sampling_rate} Hz if needed"
                    )
                waveform = prepare_audio(clip, sampling_rate, self.feature_extractor.sampling_rate, name=name)
            if len(waveform) > self.window_samples:
                raise ValueError(
                    f"{name} is {len(waveform) / SAMPLING_RATE:.2f} s long ({len(waveform)} samples at 16 kHz), longer "
                    f"than the model's Whisper window of {self.window_samples / SAMPLING_RATE:g} s ({self.window_samples} "
                    "samples); split it, or use the automatic-speech-recognition pipeline, which transcribes long "
                    "inputs in chunks"
                )
            waveforms.append(standardize_waveform(waveform) if self.standardize_audio else waveform)
        input_features = self.feature_extractor(
            waveforms,
            sampling_rate=self.feature_extractor.sampling_rate,
            max_length=self.window_samples,
            padding="max_length",
            truncation=False,
            return_tensors="pt",
        )["input_features"].float()
        if self.round_features_to_bfloat16:
            input_features = input_features.to(torch.bfloat16).float()
        # The mask marks two mel frames per Whisper frame the model keeps (it halves the mask's sum). That count is
        # the authors' own float expression, int(samples / 16000 * 50): it is floor(samples / 320), except for a few
        # lengths where the float product falls just under an integer (9,280 samples: 28 frames). The feature
        # extractor's mask would cover ceil(samples / 160) mel frames: one Whisper frame more for a remainder above
        # 160 samples.
        sampling_rate = self.feature_extractor.sampling_rate
        input_features_mask = torch.zeros(input_features.shape[0], input_features.shape[-1], dtype=torch.long)
        for index, waveform in enumerate(waveforms):
            input_features_mask[index, : 2 * int(len(waveform) / sampling_rate * WHISPER_FRAMES_PER_SECOND)] = 1
        return {"input_features": input_features, "input_features_mask": input_features_mask}

    def _encode_labels(self, texts: list[str]) -> torch.Tensor:
        eos_token_id = self.tokenizer.eos_token_id
        if eos_token_id is None:
            raise ValueError("The tokenizer has no eos_token_id; labels end with EOS")
        sequences = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text[{index}]: expected a string, got {type(text).__name__}")
            token_ids = self.tokenizer(normalize_text(text), add_special_tokens=False)["input_ids"]
            sequences.append(list(token_ids) + [eos_token_id])
        labels = torch.full((len(sequences), max(len(sequence) for sequence in sequences)), -100, dtype=torch.long)
        for index, sequence in enumerate(sequences):
            labels[index, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        return labels

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Decodes generated token ids to transcripts normalised as the labels are (special tokens dropped, see
        [`normalize_text`])."""
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.tolist()
        sequences = [[token for token in sequence if token >= 0] for sequence in sequences]  # -100 label padding
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [normalize_text(text) for text in texts]

    def decode(self, token_ids, skip_special_tokens: bool = True, **kwargs) -> str:
        """Decodes one sequence of token ids to a normalised transcript (see [`batch_decode`])."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        return self.batch_decode([token_ids], skip_special_tokens=skip_special_tokens, **kwargs)[0]


LlamaMTSKVideoProcessor.register_for_auto_class("AutoVideoProcessor")
LlamaMTSKProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "LlamaMTSKProcessor",
    "LlamaMTSKVideoProcessor",
    "align_audio_to_frames",
    "load_audio",
    "load_audiovisual",
    "load_video",
    "normalize_text",
    "prepare_audio",
    "probe_streams",
    "resample_frames",
    "standardize_waveform",
]
