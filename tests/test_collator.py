"""The collator: records -> model inputs per modality, training augmentation seeded by (seed, epoch, id), evaluation
noise at a fixed SNR, and frame-capped batches end to end with the batch sampler."""

import numpy as np
import pytest
import torch

from llama_mtsk.media_llama_mtsk import load_audio
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_data.augment import AugmentationConfig
from mtsk_data.collator import MTSKCollator, babble_from_records, decode_video
from mtsk_data.records import ShardWriter, load_split, make_record, shard_paths
from mtsk_data.sampler import EpochDataset, FrameBatchSampler, frame_counts
from mtsk_data.streaming import StreamingFrameBatches

from audio_checks import measure_snr_db
from tiny_models import tiny_config, tiny_tokenizer


def _mouth(x: np.ndarray, y: np.ndarray, frame: int) -> np.ndarray:
    """A disc that opens and closes with the frame index."""
    return (x - 48) ** 2 + (y - 60) ** 2 < 150 + 40 * np.sin(frame)


WORDS = "one two three four five six seven eight nine zero set place red green blue".split()


def _record(index: int, n_frames: int, rng: np.random.Generator) -> dict:
    t = np.arange(n_frames * 640) / 16000
    audio = 0.2 * np.sin(2 * np.pi * (150 + 10 * index) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    audio = (audio + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    y, x = np.mgrid[0:96, 0:96]
    frames = np.stack(
        [
            (100 + 50 * np.sin(x / 7 + frame / 4) * np.cos(y / 9) + 60 * (_mouth(x, y, frame)))
            .clip(0, 255)
            .astype(np.uint8)
            for frame in range(n_frames)
        ]
    )
    text = " ".join(rng.choice(WORDS, size=3))
    return make_record(f"speaker{index % 3}/utt{index:03d}", text, f"speaker{index % 3}", audio, frames)


@pytest.fixture(scope="module")
def records():
    rng = np.random.default_rng(0)
    return [_record(index, int(rng.integers(12, 48)), rng) for index in range(12)]


@pytest.fixture(scope="module")
def processor():
    return LlamaMTSKProcessor.from_model_config(tiny_config(), tiny_tokenizer())


@pytest.fixture(scope="module")
def noise(records):
    return babble_from_records(records, num_utterances=8, num_talkers=4, seed=1)


@pytest.mark.parametrize(
    "modality, keys",
    [
        ("audio", {"input_features", "input_features_mask", "labels"}),
        ("video", {"pixel_values_videos", "pixel_values_videos_mask", "labels"}),
        (
            "audiovisual",
            {"input_features", "input_features_mask", "pixel_values_videos", "pixel_values_videos_mask", "labels"},
        ),
    ],
)
def test_eval_collator_gives_the_processor_outputs_of_the_modality(records, processor, modality, keys):
    batch = records[:3]
    out = MTSKCollator(processor, modality, training=False)(batch)
    assert set(out) == keys
    uses_video = modality != "audio"
    # The processor decodes the files itself: the collator reads every pixel as inference does.
    videos = [record["video"]["bytes"] for record in batch] if uses_video else None
    audio = [load_audio(record["audio"]["bytes"]) for record in batch] if modality != "video" else None
    expected = processor(audio=audio, videos=videos, text=[r["text"] for r in batch], sampling_rate=16000)
    for key in keys:
        torch.testing.assert_close(out[key], expected[key], rtol=0, atol=0)
    if uses_video:
        assert out["pixel_values_videos"].shape[-2:] == (16, 16)
        assert out["pixel_values_videos_mask"].sum(1).tolist() == [record["n_frames"] for record in batch]
    assert out["labels"].dtype == torch.long


def test_audio_only_collator_does_not_decode_video(records, processor):
    record = dict(records[0], video={"bytes": b"corrupt", "path": "x.mp4"})
    out = MTSKCollator(processor, "audio")([record])
    assert "pixel_values_videos" not in out
    with pytest.raises(ValueError, match="Could not"):
        MTSKCollator(processor, "video")([record])


def test_training_augmentation_is_seeded_by_seed_epoch_and_id(records, processor, noise):
    collator = MTSKCollator(processor, "audiovisual", training=True, noise=noise, seed=3)
    first = collator(records[:4])
    again = collator(records[:4])
    for key in first:
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
    # A record's augmentation does not depend on its batch neighbours or position.
    alone = collator([records[2]])
    length = records[2]["n_frames"]
    torch.testing.assert_close(alone["pixel_values_videos"][0], first["pixel_values_videos"][2, :length])
    torch.testing.assert_close(alone["input_features"][0], first["input_features"][2])
    collator.set_epoch(1)
    next_epoch = collator(records[:4])
    assert not torch.equal(next_epoch["pixel_values_videos"], first["pixel_values_videos"])
    assert not torch.equal(next_epoch["input_features"], first["input_features"])
    other_seed = MTSKCollator(processor, "audiovisual", training=True, noise=noise, seed=4)(records[:4])
    assert not torch.equal(other_seed["pixel_values_videos"], first["pixel_values_videos"])
    # Training differs from evaluation, labels do not.
    evaluation = MTSKCollator(processor, "audiovisual")(records[:4])
    assert not torch.equal(evaluation["pixel_values_videos"], first["pixel_values_videos"])
    torch.testing.assert_close(evaluation["labels"], first["labels"])


def test_training_video_is_a_crop_of_the_resized_roi_with_black_masks(records, processor):
    config = AugmentationConfig(train_snrs_db=(None,))
    collator = MTSKCollator(processor, "video", training=True, augmentation=config)
    record = records[5]
    waveform, frames = collator.decode_and_augment(record)
    assert waveform is None and frames.shape == (record["n_frames"], 16, 16) and frames.dtype == np.float32
    video_processor = processor.video_processor
    roi = video_processor.resize_clip(decode_video(record, video_processor)).numpy()
    assert roi.shape == (record["n_frames"], 18, 18)
    masked = np.all(frames == 0, axis=(1, 2))
    kept = np.flatnonzero(~masked)
    # Find the crop offset from the first kept frame and check every kept frame against that crop of the ROI.
    offsets = [(top, left) for top in range(3) for left in range(3)
               if np.array_equal(roi[kept[0], top : top + 16, left : left + 16], frames[kept[0]])]
    assert len(offsets) == 1
    top, left = offsets[0]
    np.testing.assert_array_equal(frames[kept], roi[kept, top : top + 16, left : left + 16])
    assert masked.sum() <= 2 * 9  # under 2 s of video: two masks of at most 9 frames


def test_eval_noise_is_at_the_fixed_snr_and_deterministic(records, processor, noise):
    config = AugmentationConfig(eval_snr_db=5.0)
    collator = MTSKCollator(processor, "audio", augmentation=config, noise=noise)
    clean = load_audio(records[0]["audio"]["bytes"])
    noisy, _ = collator.decode_and_augment(records[0])
    assert measure_snr_db(clean, noisy) == pytest.approx(5.0, abs=0.1)
    collator.set_epoch(3)
    np.testing.assert_array_equal(collator.decode_and_augment(records[0])[0], noisy)
    with pytest.raises(ValueError, match="eval_snr_db=5.0 needs a NoiseSource"):
        MTSKCollator(processor, "audio", augmentation=config)


def test_training_noise_requires_a_source(processor):
    with pytest.raises(ValueError, match="noise=None"):
        MTSKCollator(processor, "audio", training=True)
    # Video-only training has no audio to make noisy.
    MTSKCollator(processor, "video", training=True)


def test_decoded_samples_and_paths_work_like_bytes(records, processor, tmp_path):
    record = records[4]
    (tmp_path / "clip.mp4").write_bytes(record["video"]["bytes"])
    (tmp_path / "clip.wav").write_bytes(record["audio"]["bytes"])
    by_path = dict(record, audio={"bytes": None, "path": "clip.wav"}, video={"bytes": None, "path": "clip.mp4"})
    decoded = dict(
        record,
        audio={"array": load_audio(record["audio"]["bytes"]), "sampling_rate": 16000},
        video=processor.video_processor.decode(record["video"]["bytes"]),  # RGB frames
    )
    reference = MTSKCollator(processor, "audiovisual")([record])
    from_paths = MTSKCollator(processor, "audiovisual", media_root=str(tmp_path))([by_path])
    from_arrays = MTSKCollator(processor, "audiovisual")([decoded])
    for key in reference:
        torch.testing.assert_close(from_paths[key], reference[key], rtol=0, atol=0)
        torch.testing.assert_close(from_arrays[key], reference[key], rtol=0, atol=0)


def test_bad_records_are_named(records, processor):
    collator = MTSKCollator(processor, "audiovisual")
    with pytest.raises(ValueError, match="needs an 'id'"):
        collator([{k: v for k, v in records[0].items() if k != "id"}])
    with pytest.raises(ValueError, match="'text' must be a string"):
        collator([dict(records[0], text=None)])
    with pytest.raises(ValueError, match="neither bytes nor a path"):
        collator([dict(records[0], audio={"bytes": None, "path": None})])
    with pytest.raises(ValueError, match="at 16000 Hz"):
        collator([dict(records[0], audio={"array": np.zeros(100, np.float32), "sampling_rate": 8000})])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    with pytest.raises(ValueError, match="modality"):
        MTSKCollator(processor, "lips")


def test_babble_from_records_is_deterministic(records):
    babble = lambda seed: babble_from_records(records, num_utterances=6, num_talkers=3, seed=seed).samples  # noqa: E731
    np.testing.assert_array_equal(babble(2), babble(2))
    assert not np.array_equal(babble(2), babble(5))
    with pytest.raises(ValueError, match="num_talkers=20"):
        babble_from_records(records, num_talkers=20)


def test_loader_batches_respect_the_cap_cover_each_record_once_and_use_the_epoch_in_workers(records, processor, noise):
    lengths = frame_counts([r["n_frames"] for r in records], [r["duration"] for r in records])
    max_frames = 120
    collator = MTSKCollator(processor, "audiovisual", training=True, noise=noise, seed=1)
    frames_seen = []
    for rank in range(2):
        sampler = FrameBatchSampler(lengths, max_frames, seed=2, num_replicas=2, rank=rank)
        loader = torch.utils.data.DataLoader(
            records, batch_sampler=sampler, collate_fn=collator, num_workers=1, persistent_workers=True
        )
        for epoch in range(2):
            sampler.set_epoch(epoch)
            collator.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(sampler)
            for indices, batch in zip(list(sampler), batches, strict=True):
                batch_size, padded_frames = batch["pixel_values_videos_mask"].shape
                assert batch_size * padded_frames <= max_frames
                if epoch == 1 and rank == 0:
                    # The persistent worker drew the augmentation of epoch 1, as the main process does.
                    in_process = collator([records[index] for index in indices])
                    for key in batch:
                        torch.testing.assert_close(batch[key], in_process[key], rtol=0, atol=0)
            if epoch == 0:
                frames_seen.extend(batch["pixel_values_videos_mask"].sum(1).tolist() for batch in batches)
    assert sorted(sum(frames_seen, [])) == sorted(record["n_frames"] for record in records)


def test_corpus_shards_to_model_inputs_map_style_and_streaming(records, processor, tmp_path):
    with ShardWriter(tmp_path, "train", records_per_shard=5, row_group_size=2) as writer:
        for record in records:
            writer.write(record)
    clean = AugmentationConfig(train_snrs_db=(None,))
    collator = MTSKCollator(processor, "audiovisual", training=True, augmentation=clean)
    total_frames = sum(record["n_frames"] for record in records)

    dataset = load_split(tmp_path, "train")
    lengths = frame_counts(dataset["n_frames"], dataset["duration"])
    sampler = FrameBatchSampler(lengths, 100, num_replicas=1)
    loader = torch.utils.data.DataLoader(
        EpochDataset(dataset, sampler, collator), batch_sampler=sampler, collate_fn=collator
    )
    loader.dataset.set_epoch(2)
    assert sampler.epoch == collator.epoch == 2
    map_style = list(loader)

    stream = StreamingFrameBatches(shard_paths(tmp_path, "train"), 100, buffer_rows=4, num_replicas=1, rank=0)
    streamed = list(torch.utils.data.DataLoader(stream, batch_size=None, collate_fn=collator))
    for batches in (map_style, streamed):
        for batch in batches:
            assert batch["pixel_values_videos_mask"].numel() <= 100
            assert batch["input_features"].shape[0] == batch["labels"].shape[0] == batch["pixel_values_videos"].shape[0]
        assert sum(int(batch["pixel_values_videos_mask"].sum()) for batch in batches) == total_frames
