"""The shared record schema: media encoders, make_record, ShardWriter, load_split (decoded with soundfile / PyAV)."""

import io
import os

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from mtsk_data.records import (
    ShardWriter,
    encode_mp4,
    encode_wav,
    load_split,
    make_record,
    normalize_text,
    shard_paths,
)


def _frames(n_frames: int = 20, size: int = 96) -> np.ndarray:
    """A moving gradient: every frame differs, smooth enough to survive compression."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([((x + y + 4 * t) % 200 + 20).astype(np.uint8) for t in range(n_frames)])


def _tone(n_samples: int, start: float = 0.0, end: float | None = None) -> np.ndarray:
    t = np.arange(n_samples) / 16000
    gate = (t >= start) & (t < (end if end is not None else t[-1] + 1))
    return (0.3 * np.sin(2 * np.pi * 440 * t) * gate).astype(np.float32)


def _decode_video(data: bytes, pixel_format: str = "gray") -> tuple[np.ndarray, float, str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format=pixel_format) for frame in container.decode(stream)])
        return frames, float(stream.average_rate), stream.codec_context.name


def _record(index: int, n_frames: int = 5) -> dict:
    return make_record(f"utt{index:03d}", "one two", "spk", _tone(n_frames * 640), _frames(n_frames))


# ------------------------------------------------------------------ encoders


def test_encode_wav_round_trip_is_16_bit_pcm_at_16_khz():
    samples = _tone(8000)
    data = encode_wav(samples)
    info = sf.info(io.BytesIO(data))
    assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == ("WAV", "PCM_16", 16000, 1, 8000)
    decoded, _ = sf.read(io.BytesIO(data), dtype="float32")
    np.testing.assert_allclose(decoded, samples, atol=1 / 32768 + 1e-6)

    ints = (samples * 32767).astype(np.int16)
    decoded_ints, _ = sf.read(io.BytesIO(encode_wav(ints)), dtype="int16")
    np.testing.assert_array_equal(decoded_ints, ints)


def test_encode_wav_clips_instead_of_wrapping():
    decoded, _ = sf.read(io.BytesIO(encode_wav(np.array([2.0, -2.0, 0.5], dtype=np.float32))), dtype="float32")
    np.testing.assert_allclose(decoded, [32767 / 32768, -1.0, 0.5], atol=1e-4)


@pytest.mark.parametrize(
    "samples, message",
    [
        (np.zeros((2, 100), np.float32), "1-D mono"),
        (np.zeros(0, np.float32), "non-empty"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.zeros(10, np.int32), "dtype"),
    ],
)
def test_encode_wav_rejects_bad_samples(samples, message):
    with pytest.raises(ValueError, match=message):
        encode_wav(samples)


def test_encode_mp4_grayscale_decodes_to_the_same_frames():
    frames = _frames(30)
    data = encode_mp4(frames)
    decoded, fps, codec = _decode_video(data)
    assert decoded.shape == frames.shape
    assert fps == 25.0
    assert codec == ("h264" if "libx264" in av.codecs_available else "mpeg4")
    assert np.abs(decoded.astype(int) - frames).mean() < 1.5
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert not container.streams.audio


def test_encode_mp4_falls_back_to_mpeg4_without_libx264(monkeypatch):
    from mtsk_data import records

    monkeypatch.setattr(records, "_video_codec", lambda: "mpeg4")
    frames = _frames(20)
    data = encode_mp4(frames)
    decoded, fps, codec = _decode_video(data)
    assert (decoded.shape, fps, codec) == (frames.shape, 25.0, "mpeg4")
    assert np.abs(decoded.astype(int) - frames).mean() < 1.5
    assert data == encode_mp4(frames)


def test_encode_mp4_rgb():
    gray = _frames(10)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1)
    decoded, _, _ = _decode_video(encode_mp4(rgb), "rgb24")
    assert decoded.shape == rgb.shape
    # yuv420p halves the chroma resolution, so compare on average
    assert np.abs(decoded.astype(int) - rgb).mean() < 6


def test_encode_mp4_is_deterministic():
    frames, audio = _frames(12), _tone(12 * 640)
    assert encode_mp4(frames) == encode_mp4(frames.copy())
    assert encode_mp4(frames, audio=audio) == encode_mp4(frames, audio=audio.copy())


def test_encode_mp4_with_sound_has_an_aligned_aac_track():
    n_frames = 60
    audio = _tone(n_frames * 640, start=0.5, end=1.0)
    data = encode_mp4(_frames(n_frames), audio=audio)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.codec_context.layout.name) == ("aac", 16000, "mono")
        decoded = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(stream)])
    assert audio.size <= decoded.size <= audio.size + 1024  # the last AAC frame is padded
    loud = np.flatnonzero(np.abs(decoded) > 0.05) / 16000
    assert loud[0] == pytest.approx(0.5, abs=0.005) and loud[-1] == pytest.approx(1.0, abs=0.005)
    decoded_video, _, _ = _decode_video(data)
    assert decoded_video.shape[0] == n_frames


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((3, 96, 96), np.float32), "uint8"),
        (np.zeros((3, 96, 96, 4), np.uint8), "shape"),
        (np.zeros((0, 96, 96), np.uint8), "at least one frame"),
        (np.zeros((3, 95, 96), np.uint8), "even"),
    ],
)
def test_encode_mp4_rejects_bad_frames(frames, message):
    with pytest.raises(ValueError, match=message):
        encode_mp4(frames)


# ------------------------------------------------------------------ records


def test_normalize_text():
    assert normalize_text("Place BLUE at F-2, now!") == "place blue at f 2 now"
    assert normalize_text("  'Don't'   STOP  ") == "don't stop"
    assert normalize_text("It’s fine.") == "it's fine"


def test_make_record_from_arrays():
    record = make_record("trainval/spk1/00001", "place blue at f two now", "spk1", _tone(48000), _frames(75))
    assert set(record) == {"id", "text", "speaker", "duration", "n_frames", "audio", "video"}
    assert record["duration"] == pytest.approx(3.0)
    assert record["n_frames"] == 75
    assert record["audio"]["path"] == "trainval/spk1/00001.wav"
    assert record["video"]["path"] == "trainval/spk1/00001.mp4"
    assert sf.info(io.BytesIO(record["audio"]["bytes"])).frames == 48000
    assert _decode_video(record["video"]["bytes"])[0].shape == (75, 96, 96)


def test_make_record_from_bytes_keeps_them():
    wav, mp4 = encode_wav(_tone(3200)), encode_mp4(_frames(5))
    record = make_record("a", "hello", "s", wav, mp4, audio_path="x/a.wav", video_path="x/a.mp4")
    assert record["audio"] == {"bytes": wav, "path": "x/a.wav"}
    assert record["video"] == {"bytes": mp4, "path": "x/a.mp4"}
    assert (record["duration"], record["n_frames"]) == (0.2, 5)


def _wav_bytes(samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _mp4_at(fps: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = 96
        stream.pix_fmt = "yuv420p"
        for index in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((96, 96), np.uint8), format="gray").reformat(format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text": "Hello"}, "lower-case"),
        ({"text": "hello, world"}, "punctuation"),
        ({"text": "hello  world"}, "single-spaced"),
        ({"text": ""}, "non-empty"),
        ({"id": ""}, "id must be"),
        ({"speaker": ""}, "speaker must be"),
        ({"audio": _wav_bytes(np.zeros(800), 8000)}, "16000 Hz mono"),
        ({"audio": _wav_bytes(np.zeros((1600, 2)), 16000)}, "16000 Hz mono"),
        ({"audio": _wav_bytes(np.zeros(1600), 16000, "FLOAT")}, "16-bit PCM"),
        ({"audio": b"RIFF not really a wav"}, "not a readable WAV"),
        ({"video": _mp4_at(30)}, "25 fps"),
        ({"video": b"\x00\x00\x00\x18ftypmp42 broken"}, "not a readable mp4"),
    ],
)
def test_make_record_rejects_bad_input(kwargs, message):
    arguments = {"id": "u", "text": "hello", "speaker": "s", "audio": _tone(3200), "video": _frames(5)} | kwargs
    with pytest.raises(ValueError, match=message):
        make_record(**arguments)


# ------------------------------------------------------------------ shards


def test_shard_writer_splits_records_into_numbered_shards(tmp_path):
    records = [_record(i) for i in range(7)]
    with ShardWriter(tmp_path, "train", records_per_shard=3) as writer:
        for record in records:
            writer.write(record)
    paths = shard_paths(tmp_path, "train")
    assert [os.path.basename(p) for p in paths] == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in paths] == [3, 3, 1]
    assert sorted(os.listdir(tmp_path / "data")) == [os.path.basename(p) for p in paths]  # no temporary left
    rows = [row for path in paths for row in pq.read_table(path).to_pylist()]
    assert [row["id"] for row in rows] == [record["id"] for record in records]
    assert rows[4]["audio"] == records[4]["audio"] and rows[4]["video"] == records[4]["video"]


def test_shard_writer_resumes_and_continues_numbering(tmp_path):
    with ShardWriter(tmp_path, "test", records_per_shard=2) as writer:
        for index in range(3):
            writer.write(_record(index))
    # a crashed run leaves only a hidden temporary file, which is removed on reopening
    stale = tmp_path / "data" / ".test-00002.parquet.tmp"
    stale.write_bytes(b"partial")

    writer = ShardWriter(tmp_path, "test", records_per_shard=2)
    assert writer.done_ids() == {"utt000", "utt001", "utt002"}
    assert not stale.exists()
    with pytest.raises(ValueError, match="duplicate id 'utt001'"):
        writer.write(_record(1))
    writer.write(_record(3))
    writer.close()
    assert [os.path.basename(p) for p in shard_paths(tmp_path, "test")][-1] == "test-00002.parquet"
    assert ShardWriter(tmp_path, "test").done_ids() == {"utt000", "utt001", "utt002", "utt003"}


def test_shard_writer_exception_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, "train", records_per_shard=10) as writer:
            writer.write(_record(0))
            raise RuntimeError("boom")
    assert shard_paths(tmp_path, "train") == []
    assert os.listdir(tmp_path / "data") == []


def test_shard_writer_output_is_deterministic(tmp_path):
    records = [_record(i) for i in range(4)]
    for name in ("a", "b"):
        with ShardWriter(tmp_path / name, "validation", records_per_shard=3) as writer:
            for record in records:
                writer.write(record)
    for first, second in zip(shard_paths(tmp_path / "a", "validation"), shard_paths(tmp_path / "b", "validation")):
        with open(first, "rb") as one, open(second, "rb") as two:
            assert one.read() == two.read()


def test_shard_writer_rejects_bad_use(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        ShardWriter(tmp_path, "dev")
    writer = ShardWriter(tmp_path, "train")
    with pytest.raises(ValueError, match="lacks columns"):
        writer.write({"id": "x", "text": "a"})
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(_record(0))


@pytest.mark.parametrize("streaming", [False, True])
def test_load_split_gives_undecoded_media(tmp_path, streaming):
    from datasets import Audio, Video

    records = [_record(i, n_frames=4 + i) for i in range(5)]
    with ShardWriter(tmp_path, "train", records_per_shard=2) as writer:
        for record in records:
            writer.write(record)
    dataset = load_split(tmp_path, "train", streaming=streaming, cache_dir=str(tmp_path / "cache"))
    assert dataset.features["audio"] == Audio(decode=False)
    assert dataset.features["video"] == Video(decode=False)
    rows = list(dataset)
    assert [row["id"] for row in rows] == [record["id"] for record in records]
    assert [row["n_frames"] for row in rows] == [4, 5, 6, 7, 8]
    assert rows[2]["audio"] == records[2]["audio"]
    assert _decode_video(rows[3]["video"]["bytes"])[0].shape == (7, 96, 96)


def test_load_split_without_shards(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards test-NNNNN.parquet"):
        load_split(tmp_path, "test")
