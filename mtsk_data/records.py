"""The record schema shared by every corpus this project writes, and the shard writer that stores it.

One row per utterance, stored as Hugging Face parquet shards ``<out_dir>/data/<split>-<index:05d>.parquet``:

========== ================================== ==================================================================
column     type                               meaning
========== ================================== ==================================================================
id         string                             unique, stable utterance id
text       string                             transcript, lower-case, no punctuation (apostrophes inside words kept)
speaker    string                             speaker id
duration   float64                            seconds of audio
n_frames   int64                              video frames at 25 fps (0 in an audio-only corpus)
audio      {"bytes": binary, "path": string}  16 kHz mono 16-bit PCM WAV (``datasets.Audio(decode=False)`` layout)
video      {"bytes": binary, "path": string}  mp4, 96x96 mouth ROI, 25 fps (``datasets.Video(decode=False)`` layout);
                                              null in an audio-only corpus (the audio modality never reads it)
========== ================================== ==================================================================

The ``datasets`` feature types are stored in the parquet schema metadata, so ``datasets.load_dataset("parquet", ...)``
types ``audio`` and ``video`` as undecoded ``Audio`` / ``Video`` columns. Media decoding lives in
``llama_mtsk.media_llama_mtsk`` (``load_audio`` / ``load_video`` / ``load_audiovisual``), not here.
"""

from __future__ import annotations

import glob
import io
import os
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from av.video.reformatter import VideoReformatter

from llama_mtsk.configuration_llama_mtsk import SAMPLING_RATE, VIDEO_FPS
from llama_mtsk.processing_llama_mtsk import normalize_text


SPLITS = ("train", "validation", "test")


def _features():
    """The ``datasets.Features`` of a record (imported lazily: only writers and readers need ``datasets``)."""
    from datasets import Audio, Features, Value, Video

    return Features(
        {
            "id": Value("string"),
            "text": Value("string"),
            "speaker": Value("string"),
            "duration": Value("float64"),
            "n_frames": Value("int64"),
            "audio": Audio(decode=False),
            "video": Video(decode=False),
        }
    )


def _as_mono_float(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"audio samples: expected a 1-D mono array, got shape {samples.shape}")
    if samples.size == 0:
        raise ValueError("audio samples: expected a non-empty array, got 0 samples")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"audio samples: expected float (in [-1, 1]) or int16, got dtype {samples.dtype}")
    if not np.all(np.isfinite(samples)):
        raise ValueError("audio samples: found NaN or infinite values")
    return samples.astype(np.float32, copy=False)


def encode_wav(samples: np.ndarray, sample_rate: int = SAMPLING_RATE) -> bytes:
    """Encode mono samples (float in [-1, 1], clipped, or int16) as a 16-bit PCM WAV file in memory."""
    samples = _as_mono_float(samples)
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _video_codec() -> str:
    # PyAV wheels normally bundle libx264; builds without GPL codecs still have the native MPEG-4 part 2 encoder.
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def encode_mp4(
    frames: np.ndarray,
    fps: int = VIDEO_FPS,
    audio: np.ndarray | None = None,
    sample_rate: int = SAMPLING_RATE,
) -> bytes:
    """Encode uint8 frames ``(T, H, W)`` (grayscale) or ``(T, H, W, 3)`` (RGB) as an mp4 in memory.

    Video is H.264 (or MPEG-4 part 2 when the bundled FFmpeg lacks libx264), yuv420p, constant ``fps``.
    ``audio`` (mono samples as in :func:`encode_wav`) adds an AAC track, so the file is a talking clip *with sound*.
    The output is deterministic: the same inputs give the same bytes.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"video frames: expected dtype uint8, got {frames.dtype}")
    if not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 3)):
        raise ValueError(f"video frames: expected shape (T, H, W) or (T, H, W, 3), got {frames.shape}")
    n_frames, height, width = frames.shape[:3]
    if n_frames == 0:
        raise ValueError("video frames: expected at least one frame, got 0")
    if height % 2 or width % 2:
        raise ValueError(f"video frames: yuv420p needs even height and width, got {height}x{width}")
    pixel_format = "gray" if frames.ndim == 3 else "rgb24"

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        codec = _video_codec()
        # One thread: for 96x96 clips threading only costs, and it keeps the output byte-identical.
        options = {"crf": "18", "preset": "superfast", "threads": "1"} if codec == "libx264" else {}
        video_stream = container.add_stream(codec, rate=fps, options=options)
        video_stream.width, video_stream.height = width, height
        video_stream.pix_fmt = "yuv420p"
        video_stream.codec_context.time_base = Fraction(1, fps)
        if codec != "libx264":
            video_stream.codec_context.thread_count = 1
            video_stream.bit_rate = 1_000_000  # MPEG-4 part 2 defaults to 200 kb/s, visibly blocky

        audio_stream = None
        if audio is not None:
            samples = _as_mono_float(audio)
            audio_stream = container.add_stream("aac", rate=sample_rate, layout="mono")
            audio_stream.codec_context.thread_count = 1

        # One reformatter for the clip: VideoFrame.reformat would build a new scaler context for every frame. One
        # scaler thread: swscale's default of one per core slows small frames down several times.
        reformatter = VideoReformatter()
        for index, array in enumerate(frames):
            source = av.VideoFrame.from_ndarray(array, format=pixel_format)
            frame = reformatter.reformat(source, format="yuv420p", threads=1)
            frame.pts = index
            container.mux(video_stream.encode(frame))
        container.mux(video_stream.encode())

        if audio_stream is not None:
            # The AAC encoder takes fixed-size frames (1024 samples); the last one may be shorter.
            frame_size = audio_stream.codec_context.frame_size or 1024
            clipped = np.clip(samples, -1.0, 1.0)
            for start in range(0, clipped.size, frame_size):
                chunk = clipped[start : start + frame_size]
                frame = av.AudioFrame.from_ndarray(chunk[np.newaxis, :], format="fltp", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = start
                frame.time_base = Fraction(1, sample_rate)
                container.mux(audio_stream.encode(frame))
            container.mux(audio_stream.encode())
    return buffer.getvalue()


def _probe_wav(data: bytes, name: str) -> float:
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as error:  # soundfile raises a generic RuntimeError/LibsndfileError on bad data
        raise ValueError(f"{name}: not a readable WAV file ({error})") from error
    if info.format != "WAV" or info.subtype != "PCM_16":
        raise ValueError(f"{name}: expected 16-bit PCM WAV, got {info.format}/{info.subtype}")
    if info.samplerate != SAMPLING_RATE or info.channels != 1:
        raise ValueError(
            f"{name}: expected {SAMPLING_RATE} Hz mono, got {info.samplerate} Hz, {info.channels} channel(s)"
        )
    if info.frames == 0:
        raise ValueError(f"{name}: the WAV file holds no samples")
    return info.frames / SAMPLING_RATE


def _probe_mp4(data: bytes, name: str) -> int:
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError(f"{name}: the file has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate
            # mp4 indexes its samples, so the frame count is known without decoding.
            n_frames = stream.frames or sum(1 for _ in container.demux(stream) if _.size)
    except av.error.FFmpegError as error:
        raise ValueError(f"{name}: not a readable mp4 file ({error})") from error
    if rate is None or abs(float(rate) - VIDEO_FPS) > 1e-3:
        raise ValueError(f"{name}: expected {VIDEO_FPS} fps, got {rate}")
    if n_frames == 0:
        raise ValueError(f"{name}: the video holds no frames")
    return int(n_frames)


def make_record(
    id: str,
    text: str,
    speaker: str,
    audio: np.ndarray | bytes,
    video: np.ndarray | bytes | None,
    audio_path: str | None = None,
    video_path: str | None = None,
) -> dict[str, Any]:
    """Build one row of the record schema.

    Args:
        id: unique, stable utterance id (may contain ``/``, e.g. ``"trainval/0af00UcTOSc/50001"``).
        text: the transcript, already normalised (see :func:`normalize_text`); anything else is an error, so
            that no corpus silently stores a different transcript than its preparer believes.
        speaker: speaker id.
        audio: 16 kHz mono samples (float in [-1, 1] or int16), or the bytes of a 16 kHz mono 16-bit WAV file.
        video: uint8 frames ``(T, H, W[, 3])`` at 25 fps, the bytes of a 25 fps mp4 file, or None for an audio-only
            record (stored as a null ``video`` with ``n_frames`` 0).
        audio_path, video_path: the names stored beside the bytes; default ``<id>.wav`` and ``<id>.mp4``.

    Returns:
        A dict with the columns of the schema; ``duration`` and ``n_frames`` are read from the media itself.
    """
    if not id:
        raise ValueError("make_record: id must be a non-empty string")
    if not text or normalize_text(text) != text:
        raise ValueError(
            f"make_record({id!r}): text must be non-empty, lower-case, without punctuation and single-spaced "
            f"(use normalize_text); got {text!r}"
        )
    if not speaker:
        raise ValueError(f"make_record({id!r}): speaker must be a non-empty string")

    audio_bytes = audio if isinstance(audio, bytes) else encode_wav(audio, SAMPLING_RATE)
    duration = _probe_wav(audio_bytes, f"make_record({id!r}) audio")
    if video is None:
        n_frames, video_column = 0, None
    else:
        video_bytes = video if isinstance(video, bytes) else encode_mp4(np.asarray(video), VIDEO_FPS)
        n_frames = _probe_mp4(video_bytes, f"make_record({id!r}) video")
        video_column = {"bytes": video_bytes, "path": video_path or f"{id}.mp4"}
    return {
        "id": id,
        "text": text,
        "speaker": speaker,
        "duration": duration,
        "n_frames": n_frames,
        "audio": {"bytes": audio_bytes, "path": audio_path or f"{id}.wav"},
        "video": video_column,
    }


def shard_paths(out_dir: str | os.PathLike, split: str) -> list[str]:
    """The finished shards of ``split`` under ``out_dir``, in index order."""
    return sorted(glob.glob(os.path.join(os.fspath(out_dir), "data", f"{split}-[0-9][0-9][0-9][0-9][0-9].parquet")))


class ShardWriter:
    """Write records of one split as parquet shards ``<out_dir>/data/<split>-<index:05d>.parquet``.

    Records are buffered and written ``records_per_shard`` at a time. Each shard is written to a hidden temporary
    file and renamed when complete, so a killed run never leaves a partial shard under a finished name; stale
    temporary files are removed when a writer opens the split. Reopening a split resumes it: :meth:`done_ids` lists
    the ids already stored and new shards continue the numbering. The same records in the same order give
    byte-identical shards.

    Use as a context manager, or call :meth:`close` to write the last (partial) shard.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        split: str,
        records_per_shard: int = 500,
        row_group_size: int = 100,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"ShardWriter: split must be one of {SPLITS}, got {split!r}")
        if records_per_shard < 1 or row_group_size < 1:
            raise ValueError("ShardWriter: records_per_shard and row_group_size must be positive")
        self.split = split
        self.records_per_shard = records_per_shard
        self.row_group_size = row_group_size
        self.data_dir = os.path.join(os.fspath(out_dir), "data")
        os.makedirs(self.data_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(self.data_dir, f".{split}-*.parquet.tmp")):
            os.remove(stale)

        self._schema = _features().arrow_schema
        self._done: set[str] = set()
        finished = shard_paths(out_dir, split)
        for path in finished:
            self._done.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
        last_index = int(os.path.basename(finished[-1])[len(split) + 1 : -len(".parquet")]) if finished else -1
        self._next_index = last_index + 1
        self._buffer: list[dict[str, Any]] = []
        self._seen = set(self._done)
        self._closed = False

    def done_ids(self) -> set[str]:
        """Ids stored in the finished shards of this split when the writer was opened."""
        return set(self._done)

    def write(self, record: dict[str, Any]) -> None:
        """Add one record (as made by :func:`make_record`); a full buffer is flushed to a new shard."""
        if self._closed:
            raise RuntimeError("ShardWriter.write: the writer is closed")
        missing = set(self._schema.names) - set(record)
        if missing:
            raise ValueError(f"ShardWriter.write: record {record.get('id')!r} lacks columns {sorted(missing)}")
        if record["id"] in self._seen:
            raise ValueError(f"ShardWriter.write: duplicate id {record['id']!r} in split {self.split!r}")
        self._seen.add(record["id"])
        self._buffer.append(record)
        if len(self._buffer) >= self.records_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        name = f"{self.split}-{self._next_index:05d}.parquet"
        final_path = os.path.join(self.data_dir, name)
        temporary_path = os.path.join(self.data_dir, f".{name}.tmp")
        rows = [{column: record[column] for column in self._schema.names} for record in self._buffer]
        table = pa.Table.from_pylist(rows, schema=self._schema)
        # The media bytes are already compressed (mp4) or barely compressible (PCM), so skip parquet compression.
        pq.write_table(table, temporary_path, row_group_size=self.row_group_size, compression="none")
        os.replace(temporary_path, final_path)
        self._next_index += 1
        self._buffer = []

    def close(self) -> None:
        """Write the remaining records as a last shard."""
        if not self._closed:
            self._flush()
            self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        # On an exception the buffered records are dropped, not written: a shard is only ever a completed batch.
        if exc_type is None:
            self.close()
        else:
            self._closed = True


def load_split(out_dir: str | os.PathLike, split: str, streaming: bool = False, cache_dir: str | None = None):
    """Load one split of a corpus written by :class:`ShardWriter` as a ``datasets`` (Iterable)Dataset.

    ``audio`` and ``video`` come back undecoded (``{"bytes", "path"}``); decode them with the processor's
    ``load_audio`` / ``load_video``.
    """
    from datasets import load_dataset

    files = shard_paths(out_dir, split)
    if not files:
        raise FileNotFoundError(f"load_split: no shards {split}-NNNNN.parquet under {os.path.join(out_dir, 'data')}")
    return load_dataset(
        "parquet",
        data_files={split: files},
        split=split,
        streaming=streaming,
        features=_features(),
        cache_dir=cache_dir,
    )
