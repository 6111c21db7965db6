"""Augmentation: crops, time masks, noise mixing at an exact SNR, babble and noise files, per-sample seeding."""

import numpy as np
import pytest
import soundfile as sf

from mtsk_data.augment import (
    TRAIN_SNRS_DB,
    AugmentationConfig,
    NoiseSource,
    augment_audio,
    augment_video,
    mix_at_snr,
    random_crop,
    sample_rng,
    time_mask,
)

from audio_checks import measure_snr_db


def _speechlike(num_samples: int, seed: int) -> np.ndarray:
    """Amplitude-modulated harmonics plus a little noise: a non-stationary signal like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    tone = sum(np.sin(2 * np.pi * 140 * k * t + k) / k for k in range(1, 6))
    return (0.2 * envelope * tone + 0.01 * rng.standard_normal(num_samples)).astype(np.float32)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 2.0, -2.0])
def test_mix_at_snr_reaches_the_requested_snr(snr_db):
    signal = _speechlike(16000 * 3 + 123, seed=1)
    noise = NoiseSource(np.random.default_rng(2).standard_normal(16000 * 5).astype(np.float32) * 3.0)
    segment = noise.segment(signal.size, np.random.default_rng(3))
    mixture = mix_at_snr(signal, segment, snr_db)
    assert mixture.dtype == np.float32 and mixture.shape == signal.shape
    assert measure_snr_db(signal, mixture) == pytest.approx(snr_db, abs=0.1)
    # Independent check of the definition: 10 log10 of signal power over added-noise power.
    added = mixture.astype(np.float64) - signal
    assert 10 * np.log10(np.mean(signal.astype(np.float64) ** 2) / np.mean(added**2)) == pytest.approx(snr_db, abs=0.1)


def test_mix_at_snr_edge_cases():
    signal = _speechlike(1600, seed=0)
    with pytest.raises(ValueError, match="shape"):
        mix_at_snr(signal, signal[:-1], 0.0)
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(signal, np.zeros_like(signal), 0.0)
    silent = np.zeros(1600, dtype=np.float32)
    np.testing.assert_array_equal(mix_at_snr(silent, signal, 0.0), silent)


def test_random_crop_reaches_every_position():
    frames = np.arange(3 * 6 * 8, dtype=np.uint8).reshape(3, 6, 8)
    seen = set()
    for seed in range(200):
        crop = random_crop(frames, (4, 5), np.random.default_rng(seed))
        assert crop.shape == (3, 4, 5)
        top, left = np.argwhere(frames[0] == crop[0, 0, 0])[0]
        np.testing.assert_array_equal(crop, frames[:, top : top + 4, left : left + 5])
        seen.add((int(top), int(left)))
    assert seen == {(top, left) for top in range(3) for left in range(4)}  # every position is reachable
    with pytest.raises(ValueError, match="cannot crop 7x4"):
        random_crop(frames, (7, 4), np.random.default_rng(0))


def test_time_mask_zeroes_spans_of_the_recipe_width():
    rng = np.random.default_rng(0)
    signal = np.ones(16000 * 4 + 10, dtype=np.float32)
    masked_total = []
    for _ in range(50):
        masked = time_mask(signal, window=6400, stride=16000, rng=rng)
        assert masked.shape == signal.shape and np.all(signal == 1)  # a copy, the input is untouched
        zeros = masked == 0
        masked_total.append(zeros.sum())
        # ceil(64010 / 16000) = 5 spans of at most 6399 samples each.
        assert zeros.sum() <= 5 * 6399
        edges = np.flatnonzero(np.diff(np.concatenate([[0], zeros.astype(np.int8), [0]])))
        assert len(edges) // 2 <= 5
    # On average 5 spans of ~3200 samples (minus overlaps): clearly some masking, clearly not all.
    assert 8000 < np.mean(masked_total) < 5 * 3200

    frames = np.full((50, 4, 4), 200, dtype=np.uint8)
    for seed in range(30):
        masked = time_mask(frames, window=10, stride=25, rng=np.random.default_rng(seed))
        zero_frames = np.all(masked == 0, axis=(1, 2))
        assert np.all(masked[~zero_frames] == 200)
        assert zero_frames.sum() <= 2 * 9


def test_noise_source_segment_wraps_and_file_roundtrip(tmp_path):
    track = np.arange(1, 11, dtype=np.float32)
    noise = NoiseSource(track)
    segment = noise.segment(25, np.random.default_rng(0))
    start = int(segment[0]) - 1
    np.testing.assert_array_equal(segment, track[(start + np.arange(25)) % 10])

    path = tmp_path / "noise.flac"
    stereo = np.stack([np.sin(np.arange(8000) / 7), np.cos(np.arange(8000) / 5)], axis=1) * 0.3
    sf.write(path, stereo, 8000)
    loaded = NoiseSource.from_file(path)
    assert loaded.samples.shape == (16000,)  # resampled 8 kHz -> 16 kHz, stereo averaged
    assert loaded.name == str(path)
    saved = tmp_path / "babble.wav"
    loaded.save(saved)
    np.testing.assert_array_equal(NoiseSource.from_file(saved).samples, loaded.samples)

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(ValueError, match="bad.wav"):
        NoiseSource.from_file(bad)
    with pytest.raises(ValueError, match="silent"):
        NoiseSource(np.zeros(10, dtype=np.float32))


def test_babble_mixes_talkers_deterministically():
    utterances = [_speechlike(16000 + 800 * index, seed=index) * (index + 1) for index in range(12)]
    babble = NoiseSource.babble(utterances, num_talkers=4, seed=7)
    again = NoiseSource.babble(utterances, num_talkers=4, seed=7)
    other = NoiseSource.babble(utterances, num_talkers=4, seed=8)
    np.testing.assert_array_equal(babble.samples, again.samples)
    assert not np.array_equal(babble.samples, other.samples)
    assert np.sqrt(np.mean(babble.samples.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)
    # Three unit-RMS utterances per talker, so a talker's stream is at least the 3 shortest utterances long.
    assert babble.samples.size >= 3 * 16000
    with pytest.raises(ValueError, match="num_talkers"):
        NoiseSource.babble(utterances[:3], num_talkers=4)
    with pytest.raises(ValueError, match="silent"):
        NoiseSource.babble(utterances[:3] + [np.zeros(100, dtype=np.float32)], num_talkers=2)


def test_sample_rng_depends_on_seed_epoch_and_id_only():
    draw = lambda *key: sample_rng(*key).integers(0, 2**62, size=4).tolist()  # noqa: E731
    assert draw(0, 1, "spk/utt1") == draw(0, 1, "spk/utt1")
    assert len({str(draw(0, 1, "spk/utt1")), str(draw(1, 1, "spk/utt1")), str(draw(0, 2, "spk/utt1")),
                str(draw(0, 1, "spk/utt2"))}) == 4


def test_augment_audio_draws_snrs_from_the_recipe():
    assert TRAIN_SNRS_DB == (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, None)
    config = AugmentationConfig(audio_mask_window=1)  # width 0 only: no masking, so the noise is measurable
    noise = NoiseSource(np.random.default_rng(0).standard_normal(40000).astype(np.float32))
    signal = _speechlike(16000, seed=3)
    measured = []
    for seed in range(70):
        mixture = augment_audio(signal, config, noise, np.random.default_rng(seed))
        measured.append(None if np.array_equal(mixture, signal) else round(measure_snr_db(signal, mixture), 1))
    assert set(measured) == set(TRAIN_SNRS_DB)
    with pytest.raises(ValueError, match="NoiseSource"):
        augment_audio(signal, AugmentationConfig(train_snrs_db=(5.0,)), None, np.random.default_rng(0))
    clean = augment_audio(signal, AugmentationConfig(train_snrs_db=(None,)), None, np.random.default_rng(0))
    assert clean.shape == signal.shape and np.all((clean == signal) | (clean == 0))


def test_augment_video_crops_then_masks():
    frames = np.random.default_rng(0).integers(1, 255, size=(75, 36, 36), dtype=np.uint8)
    out = augment_video(frames, (32, 32), AugmentationConfig(), np.random.default_rng(4))
    assert out.shape == (75, 32, 32)
    zero_frames = np.all(out == 0, axis=(1, 2))
    assert 0 < zero_frames.sum() <= 3 * 9  # three spans (one per second) of at most 9 frames
    kept = out[~zero_frames]
    # The surviving frames are one crop of the input.
    top, left = np.argwhere(frames[np.flatnonzero(~zero_frames)[0]] == kept[0, 0, 0])[0]
    np.testing.assert_array_equal(kept, frames[~zero_frames][:, top : top + 32, left : left + 32])


def test_config_validation():
    with pytest.raises(ValueError, match="video_mask_window"):
        AugmentationConfig(video_mask_window=0)
    with pytest.raises(ValueError, match="train_snrs_db"):
        AugmentationConfig(train_snrs_db=())
    assert not AugmentationConfig(train_snrs_db=(None,)).uses_train_noise
    assert AugmentationConfig().uses_train_noise
