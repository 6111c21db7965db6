"""Small media files and signals for the processor, pipeline and checkpoint tests, built in code."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import soundfile

from mtsk_data.records import encode_mp4, encode_wav


def signal(seconds: float, sampling_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A band-limited (under 7 kHz, so every mel band of 16 kHz audio has energy), amplitude-modulated sum of tones: the same continuous signal at any sampling
    rate, so that versions at different rates can be compared after resampling."""
    rng = np.random.default_rng(seed)
    frequencies = np.geomspace(100.0, 7000.0, 48) * rng.uniform(0.97, 1.03, size=48)
    phases = rng.uniform(0.0, 2 * np.pi, size=48)
    time = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * time)
    # 20 ms fades: a hard start or end is broadband, and would differ between sampling rates.
    envelope *= np.clip(np.minimum(time, time[-1] - time) / 0.02, 0.0, 1.0)
    tones = np.sin(2 * np.pi * frequencies[:, None] * time[None, :] + phases[:, None]).sum(axis=0)
    return (0.02 * envelope * tones).astype(np.float32)


def mouth_frames(n_frames: int, side: int = 96, seed: int = 0, color: bool = False) -> np.ndarray:
    """Random uint8 frames (T, side, side) or (T, side, side, 3)."""
    rng = np.random.default_rng(seed)
    shape = (n_frames, side, side, 3) if color else (n_frames, side, side)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def smooth_frames(n_frames: int, side: int = 96, seed: int = 0) -> np.ndarray:
    """uint8 RGB frames (T, side, side, 3) of a blob moving over a colour gradient: survive lossy video coding."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    centres = rng.uniform(0.3, 0.7, size=(n_frames, 2))
    blobs = np.exp(-((x[None] - centres[:, 0, None, None]) ** 2 + (y[None] - centres[:, 1, None, None]) ** 2) / 0.02)
    channels = [0.2 + 0.6 * x[None] + 0 * blobs, 0.3 + 0.6 * blobs, 0.8 - 0.5 * y[None] + 0 * blobs]
    return np.round(np.stack(channels, axis=-1) * 255).astype(np.uint8)


def wav_bytes(samples: np.ndarray, sampling_rate: int = 16000) -> bytes:
    return encode_wav(samples, sampling_rate)


def flac_bytes(samples: np.ndarray, sampling_rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sampling_rate, format="FLAC")
    return buffer.getvalue()


def mp4_bytes(frames: np.ndarray, audio: np.ndarray | None = None, fps: int = 25) -> bytes:
    """An mp4 (H.264, and AAC when `audio` is given) of uint8 frames."""
    return encode_mp4(frames, fps=fps, audio=audio)


def empty_video_bytes() -> bytes:
    """An AVI file with a video stream that holds no frame."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 96
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # writes the header, then the file is closed without a frame
    return buffer.getvalue()


def faststart_mp4(path: Path, frames: np.ndarray, audio: np.ndarray) -> bytes:
    """An mp4 with its index (moov) before the data, as streamed files are: cutting it short leaves a readable header
    that promises more than the data holds."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height = frames.shape[2], frames.shape[1]
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=16000, layout="mono")
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="gray")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for start in range(0, len(audio), 1024):
            frame = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = start
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
    return Path(path).read_bytes()
