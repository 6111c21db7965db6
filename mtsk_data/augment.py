"""Training augmentation of Llama-MTSK (the authors' recipe, which their code takes from auto_avsr) and noise for
evaluation.

Train (per utterance, before the processor normalises):
    video: crop the processor's ``crop_size`` at a random position (eval: the centre), then time masking: for every
        second of video (``video_mask_stride`` = 25 frames) one span of 0..``video_mask_window - 1`` frames, placed
        anywhere in the clip, is set to black (pixel 0, i.e. before normalisation);
    audio: time masking the same way (per 16000 samples, one span of 0..6399 samples set to 0), then additive noise at
        an SNR drawn uniformly from {-5, 0, 5, 10, 15, 20 dB, clean}.
Evaluation: no masking, the centre crop, and optional noise at one fixed SNR (for SNR sweeps).

The noise is "babble": several utterances of the corpus talking at once (:meth:`NoiseSource.babble`), or any noise
file the user gives (:meth:`NoiseSource.from_file`). Every random draw comes from a ``numpy.random.Generator`` that the
caller seeds (see :func:`sample_rng`), so a rerun or a resumed run reproduces the same augmentation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llama_mtsk.configuration_llama_mtsk import SAMPLING_RATE, VIDEO_FPS


# The authors' training SNRs; ``None`` is "clean" (their 999999 dB).
TRAIN_SNRS_DB: tuple[float | None, ...] = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, None)


@dataclass(frozen=True)
class AugmentationConfig:
    """Parameters of the training augmentation and of the evaluation noise.

    Args:
        video_mask_window: widths of the video masks are drawn from ``0 .. video_mask_window - 1`` frames.
        video_mask_stride: one video mask per this many frames (25 = one per second).
        audio_mask_window: widths of the audio masks are drawn from ``0 .. audio_mask_window - 1`` samples.
        audio_mask_stride: one audio mask per this many samples (16000 = one per second).
        train_snrs_db: SNRs (dB) drawn uniformly per training utterance; ``None`` means no noise. ``(None,)`` turns
            training noise off.
        eval_snr_db: the fixed SNR of evaluation noise; ``None`` evaluates clean audio.
    """

    video_mask_window: int = 10
    video_mask_stride: int = VIDEO_FPS
    audio_mask_window: int = 6400
    audio_mask_stride: int = SAMPLING_RATE
    train_snrs_db: tuple[float | None, ...] = TRAIN_SNRS_DB
    eval_snr_db: float | None = None

    def __post_init__(self) -> None:
        for name in ("video_mask_window", "video_mask_stride", "audio_mask_window", "audio_mask_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"AugmentationConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if not self.train_snrs_db:
            raise ValueError("AugmentationConfig.train_snrs_db must hold at least one entry (None for clean)")
        object.__setattr__(self, "train_snrs_db", tuple(self.train_snrs_db))

    @property
    def uses_train_noise(self) -> bool:
        """Whether training draws any noisy SNR (and so needs a :class:`NoiseSource`)."""
        return any(snr is not None for snr in self.train_snrs_db)


def sample_rng(seed: int, epoch: int, sample_id: str) -> np.random.Generator:
    """The generator of one utterance's augmentation in one epoch, independent of process, worker and batch order.

    ``sample_id`` is hashed with BLAKE2 (Python's ``hash`` of a string changes from process to process).
    """
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([seed, epoch, int.from_bytes(digest, "little")])


def random_crop(frames: np.ndarray, crop_size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Crop ``crop_size`` (height, width) at one random position (the same for every frame) from ``(T, H, W[, C])``
    frames."""
    (crop_height, crop_width), (height, width) = crop_size, frames.shape[1:3]
    if crop_height > height or crop_width > width:
        raise ValueError(f"random_crop: cannot crop {crop_height}x{crop_width} from frames of {height}x{width}")
    top = int(rng.integers(0, height - crop_height + 1))
    left = int(rng.integers(0, width - crop_width + 1))
    return frames[:, top : top + crop_height, left : left + crop_width]


def time_mask(signal: np.ndarray, window: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """Zero random spans along the first axis of ``signal`` (auto_avsr's adaptive time mask); returns a copy.

    One span per started ``stride`` steps (``ceil(len / stride)`` spans). Each span's width is drawn from
    ``0 .. window - 1`` and its start uniformly among the positions where it fits; spans may overlap.
    """
    masked = signal.copy()
    length = signal.shape[0]
    num_masks = -(-length // stride)
    widths = rng.integers(0, window, size=num_masks)
    for width in widths:
        if width == 0 or width >= length:
            # A zero-width span masks nothing; a span as long as the clip would erase it, so it is skipped.
            continue
        start = int(rng.integers(0, length - width + 1))
        masked[start : start + width] = 0
    return masked


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``noise`` to ``signal`` scaled so that ``10 log10(P_signal / P_noise) == snr_db`` on this segment.

    Powers are mean squares over the whole segment (``noise`` must be as long as ``signal``). A silent ``signal``
    has no defined SNR and is returned unchanged; a silent noise segment cannot reach any SNR and is an error.
    """
    if noise.shape != signal.shape:
        raise ValueError(f"mix_at_snr: noise shape {noise.shape} differs from signal shape {signal.shape}")
    signal64 = signal.astype(np.float64)
    noise64 = noise.astype(np.float64)
    signal_power = np.mean(signal64**2)
    noise_power = np.mean(noise64**2)
    if signal_power == 0.0:
        return signal.copy()
    if noise_power == 0.0:
        raise ValueError("mix_at_snr: the noise segment is silent (zero power), so no SNR can be reached")
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (signal64 + scale * noise64).astype(signal.dtype)


class NoiseSource:
    """A long mono noise track at 16 kHz from which segments of any length are cut.

    Build it from several corpus utterances talking at once (:meth:`babble`), from a file (:meth:`from_file`), or
    from samples. Segments start at a random offset and wrap around the end of the track, so a short track still
    covers a long utterance.
    """

    def __init__(self, samples: np.ndarray, name: str = "noise") -> None:
        samples = np.asarray(samples)
        if samples.ndim != 1 or samples.size == 0:
            raise ValueError(f"NoiseSource {name!r}: expected a non-empty 1-D array, got shape {samples.shape}")
        if not np.issubdtype(samples.dtype, np.floating) or not np.all(np.isfinite(samples)):
            raise ValueError(f"NoiseSource {name!r}: expected finite float samples, got dtype {samples.dtype}")
        if not np.any(samples):
            raise ValueError(f"NoiseSource {name!r}: the track is silent")
        self.samples = samples.astype(np.float32)
        self.name = name

    @classmethod
    def from_file(cls, path: str | os.PathLike, sampling_rate: int = SAMPLING_RATE) -> NoiseSource:
        """Read a noise file (any format soundfile reads: wav, flac, ogg); channels are averaged, other rates
        resampled."""
        import soundfile as sf

        try:
            samples, file_rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
        except Exception as error:  # soundfile raises LibsndfileError / RuntimeError on unreadable files
            raise ValueError(f"NoiseSource.from_file: cannot read {os.fspath(path)!r} as audio ({error})") from error
        samples = samples.mean(axis=1)
        if file_rate != sampling_rate:
            import soxr

            samples = soxr.resample(samples, file_rate, sampling_rate)
        return cls(samples, name=os.fspath(path))

    @classmethod
    def babble(
        cls,
        utterances: Sequence[np.ndarray],
        num_talkers: int = 8,
        seed: int = 0,
    ) -> NoiseSource:
        """Babble: ``num_talkers`` streams of corpus speech played at once.

        The utterances (1-D float arrays at 16 kHz) are dealt round-robin to the talkers in a seeded random order, each
        utterance normalised to unit RMS so no talker dominates. Every talker's stream is looped to the length of the
        longest one and rotated by a random offset, the streams are summed and the track normalised to unit RMS.
        """
        if num_talkers < 2:
            raise ValueError(f"NoiseSource.babble: babble needs num_talkers >= 2, got {num_talkers}")
        if len(utterances) < num_talkers:
            raise ValueError(
                f"NoiseSource.babble: need at least num_talkers={num_talkers} utterances, got {len(utterances)}"
            )
        rng = np.random.default_rng(seed)
        streams: list[list[np.ndarray]] = [[] for _ in range(num_talkers)]
        for position, index in enumerate(rng.permutation(len(utterances))):
            utterance = np.asarray(utterances[index], dtype=np.float64)
            rms = np.sqrt(np.mean(utterance**2)) if utterance.size else 0.0
            if rms == 0.0:
                raise ValueError(f"NoiseSource.babble: utterance {int(index)} is empty or silent")
            streams[position % num_talkers].append(utterance / rms)
        joined = [np.concatenate(parts) for parts in streams]
        length = max(stream.size for stream in joined)
        track = np.zeros(length)
        for stream in joined:
            track += np.roll(np.resize(stream, length), int(rng.integers(0, length)))
        track /= np.sqrt(np.mean(track**2))
        return cls(track.astype(np.float32), name=f"babble({len(utterances)} utterances, {num_talkers} talkers)")

    def save(self, path: str | os.PathLike) -> None:
        """Write the track as a 32-bit float WAV, so that evaluation can reuse the exact noise of training."""
        import soundfile as sf

        sf.write(os.fspath(path), self.samples, SAMPLING_RATE, subtype="FLOAT")

    def segment(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """``num_samples`` consecutive samples from a random offset, wrapping around the end of the track."""
        if num_samples < 1:
            raise ValueError(f"NoiseSource.segment: num_samples must be positive, got {num_samples}")
        start = int(rng.integers(0, self.samples.size))
        indices = (start + np.arange(num_samples)) % self.samples.size
        return self.samples[indices]


def augment_video(
    frames: np.ndarray, crop_size: tuple[int, int], config: AugmentationConfig, rng: np.random.Generator
) -> np.ndarray:
    """Training video augmentation of ``(T, H, W)`` frames already at the ROI size: random crop of ``crop_size``
    (height, width), then time masking."""
    cropped = random_crop(frames, crop_size, rng)
    return time_mask(cropped, config.video_mask_window, config.video_mask_stride, rng)


def augment_audio(
    waveform: np.ndarray,
    config: AugmentationConfig,
    noise: NoiseSource | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Training audio augmentation of a 16 kHz waveform: time masking, then noise at an SNR drawn from the config."""
    masked = time_mask(waveform, config.audio_mask_window, config.audio_mask_stride, rng)
    snr_db = config.train_snrs_db[int(rng.integers(0, len(config.train_snrs_db)))]
    if snr_db is None:
        return masked
    if noise is None:
        raise ValueError("augment_audio: the config draws noisy SNRs but no NoiseSource was given")
    return mix_at_snr(masked, noise.segment(masked.size, rng), snr_db)
