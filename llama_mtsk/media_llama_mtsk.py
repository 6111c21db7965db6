# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Media for Llama-MTSK: decoding of audio files and video containers, resampling of waveforms and frame rates,
alignment of audio to video frames, and the checks every raw waveform and clip goes through, at the rates the
configuration module defines.

This file is remote code: it travels with every checkpoint (the processor, the pipeline and the mouth-ROI extractor
import it) and imports only numpy, torch and the configuration module, plus soxr, soundfile and av where a waveform is
resampled or a file is decoded.
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO

import numpy as np
import torch
from transformers.utils import logging

from .configuration_llama_mtsk import SAMPLES_PER_FRAME, SAMPLING_RATE, VIDEO_FPS


logger = logging.get_logger(__name__)

# Read by soundfile (libsndfile); everything else goes through PyAV's FFmpeg.
SOUNDFILE_EXTENSIONS = (".wav", ".flac")
AUDIO_CONTAINER_EXTENSIONS = (".mp3", ".m4a", ".aac", ".ogg", ".opus")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov")
SUPPORTED_EXTENSIONS = SOUNDFILE_EXTENSIONS + AUDIO_CONTAINER_EXTENSIONS + VIDEO_EXTENSIONS
# A 2-D waveform is one multi-channel clip; its channel axis is the short one.
MAX_AUDIO_CHANNELS = 8
# ITU-R BT.601 luma, as OpenCV converts RGB to gray (torchvision's Grayscale, which the authors' data loading
# uses, rounds red's weight to 0.2989).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# The audio and video of one recording end a little apart: encoders pad the last audio frame and drop or repeat a
# video frame (0.1 s is 2.5 video frames), and a long recording gets proportionally more room (1 %: 0.6 s a minute).
# A larger mismatch is not one recording's two streams: aligning them would throw away or invent much of one.
MAX_STREAM_MISMATCH_SECONDS = 0.1
MAX_STREAM_MISMATCH_FRACTION = 0.01

MediaSource = str | os.PathLike | bytes | bytearray | BinaryIO


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


def is_media_source(value: Any) -> bool:
    """Whether `value` is a file to decode (a path, its bytes or a binary file-like object) rather than samples."""
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
    # One swscale thread: by default it starts one per core, which made 96x96 mouth clips decode 4x slower on 2 cores
    # (23 ms a clip against 6) and did not speed up 720p frames.
    converted = frame.reformat(
        width=width, height=height, format="gray" if gray else "rgb24", interpolation="AREA", threads=1
    )
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
                        f"{description}: the audio sample rate changes mid-stream ({sample_rate} -> "
                        f"{frame.sample_rate} Hz)"
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
    # Lossy audio codecs pad their last frame (1024 samples for AAC): that much extra audio is expected, not a
    # mismatch.
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


def to_numpy(value: Any, name: str) -> np.ndarray:
    """A numpy array of a tensor (half precision made float32), an array or nested lists; errors name it `name`."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name} could not be read as a numeric array: {error}") from None


def check_finite(array: np.ndarray, name: str) -> None:
    """Raises a `ValueError` naming `name` and the first bad index when a float array holds NaN or infinite values."""
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            first = int(np.flatnonzero(bad.reshape(-1))[0])
            raise ValueError(f"{name} holds {int(bad.sum())} NaN or infinite values (first at flat index {first})")


def clip_channels(array: np.ndarray, name: str) -> int:
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


def rgb_to_gray(frames: np.ndarray) -> np.ndarray:
    """RGB (..., 3) -> float32 luma (...) on the same scale (see `LUMA_WEIGHTS`): the one RGB-to-gray conversion of
    Llama-MTSK, for the video processor and for face detection alike."""
    return np.asarray(frames, dtype=np.float32) @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)


def prepare_audio(
    audio: Any, sampling_rate: int, target_rate: int = SAMPLING_RATE, name: str = "audio"
) -> np.ndarray:
    """
    Turns raw PCM into a float32 mono waveform at `target_rate`.

    Args:
        audio: numpy array, torch tensor or list; float (any scale) or integer PCM (int16, int32, int8, uint8 are
            scaled to [-1, 1]). Shape (samples,), or (samples, channels) / (channels, samples) for one multi-channel
            clip (the channel axis is the short one, at most 8 channels); channels are averaged.
        sampling_rate: The rate of `audio`; resampled with soxr (high quality) if it differs from `target_rate`.
        name: How errors name this input.
    """
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"{name}: sampling_rate must be a positive integer (Hz), got {sampling_rate!r}")
    array = to_numpy(audio, name)
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
        raise ValueError(
            f"{name}: expected a waveform of shape (samples,) or (samples, channels), got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise ValueError(f"{name} holds no audio samples")
    check_finite(array, name)

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


__all__ = [
    "SUPPORTED_EXTENSIONS",
    "align_audio_to_frames",
    "check_finite",
    "clip_channels",
    "is_media_source",
    "load_audio",
    "load_audiovisual",
    "load_video",
    "prepare_audio",
    "probe_streams",
    "resample_frames",
    "rgb_to_gray",
    "to_numpy",
]
