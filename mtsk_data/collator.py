"""The collator that turns corpus records into Llama-MTSK model inputs, with the training augmentation.

A record is a row of the corpus schema (``mtsk_data/records.py``): ``id``, ``text``, and ``audio`` / ``video`` as
``{"bytes", "path"}`` (bytes win; a path is read when the bytes are empty). Already decoded samples work too:
``audio`` as a 1-D float array at 16 kHz or ``{"array", "sampling_rate"}`` (the ``datasets.Audio`` layout), ``video``
as uint8 frames ``(T, H, W[, 3])`` at 25 fps.

Per utterance the collator decodes only what the modality needs (WAV with soundfile, mp4 as the video processor
decodes it), then

- training: video made gray and resized to the processor's ``size`` by the video processor itself
  (:meth:`~llama_mtsk.processing_llama_mtsk.LlamaMTSKVideoProcessor.resize_clip`), cropped to its ``crop_size`` at a
  random position, time-masked; audio time-masked, then noise at an SNR drawn from the config (see
  ``mtsk_data/augment.py``);
- evaluation: video resized and centre-cropped by the processor; optional noise at ``augmentation.eval_snr_db``;

and hands the batch to :class:`~llama_mtsk.processing_llama_mtsk.LlamaMTSKProcessor`, which standardises the audio,
computes the Whisper log-mel, normalises the pixels and tokenises the transcripts into ``labels``. Training and
evaluation thus read every pixel through the same code as inference.

Decoding once: :func:`decode_records` decodes the media of many records up front, as this collator would decode them
per batch, into records that hold the arrays; the collator gives exactly the same batches from those (training's
``decode_once``, through :func:`decode_corpus`, which refuses a corpus too large for memory and logs its cost).

Determinism: the augmentation of a record is drawn from a generator seeded by ``(seed, epoch, record id)``
(:func:`~mtsk_data.augment.sample_rng`), so it does not depend on the batch, the process or the DataLoader worker,
and a resumed run reproduces it. Call :meth:`MTSKCollator.set_epoch` at the start of every epoch (with the sampler's
``set_epoch``; :class:`~mtsk_data.sampler.EpochDataset` does both from the hook accelerate calls); the epoch lives in
shared memory, so DataLoader workers see it even when they are persistent.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from llama_mtsk.configuration_llama_mtsk import SAMPLING_RATE
from llama_mtsk.media_llama_mtsk import align_audio_to_frames, load_audio
from llama_mtsk.processing_llama_mtsk import LlamaMTSKVideoProcessor

from .augment import AugmentationConfig, NoiseSource, augment_audio, augment_video, mix_at_snr, sample_rng


MODALITIES = ("audio", "video", "audiovisual")

logger = logging.getLogger(__name__)


def _media_source(value: Mapping[str, Any], record_id: str, column: str, media_root: str | None) -> bytes | str:
    data = value.get("bytes")
    if data:
        return data
    path = value.get("path")
    if not path:
        raise ValueError(f"record {record_id!r}: column {column!r} holds neither bytes nor a path")
    if media_root is not None and not os.path.isabs(path):
        path = os.path.join(media_root, path)
    return path


def decode_audio(record: Mapping[str, Any], media_root: str | None = None) -> np.ndarray:
    """The 16 kHz mono float32 waveform of a record (see the module doc for the accepted layouts)."""
    record_id = str(record.get("id", "?"))
    value = record.get("audio")
    if value is None:
        raise ValueError(f"record {record_id!r} has no 'audio' column")
    if isinstance(value, np.ndarray):
        waveform = value
    elif isinstance(value, Mapping) and value.get("array") is not None:
        if value.get("sampling_rate") != SAMPLING_RATE:
            raise ValueError(
                f"record {record_id!r}: decoded audio must be at {SAMPLING_RATE} Hz, got {value.get('sampling_rate')}"
            )
        waveform = np.asarray(value["array"])
    elif isinstance(value, Mapping):
        return load_audio(_media_source(value, record_id, "audio", media_root), sampling_rate=SAMPLING_RATE)
    else:
        raise ValueError(f"record {record_id!r}: unsupported 'audio' value of type {type(value).__name__}")
    if waveform.ndim != 1 or waveform.size == 0:
        raise ValueError(f"record {record_id!r}: decoded audio must be a non-empty 1-D array, got {waveform.shape}")
    return waveform.astype(np.float32, copy=False)


def decode_video(
    record: Mapping[str, Any], video_processor: LlamaMTSKVideoProcessor, media_root: str | None = None
) -> np.ndarray:
    """The uint8 frames ``(T, H, W, 3)`` RGB (or ``(T, H, W)`` gray, as a decoded record gives them) of a record at
    25 fps; a file is decoded by ``video_processor``, as inference decodes it."""
    record_id = str(record.get("id", "?"))
    value = record.get("video")
    if value is None:
        raise ValueError(f"record {record_id!r} has no 'video' column")
    if isinstance(value, Mapping):
        return video_processor.decode(_media_source(value, record_id, "video", media_root))
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8:
        raise ValueError(f"record {record_id!r}: decoded video must be a uint8 array, got {type(value).__name__}")
    if value.ndim not in (3, 4) or value.shape[0] == 0:
        raise ValueError(f"record {record_id!r}: decoded video must be (T, H, W[, 3]) with T > 0, got {value.shape}")
    return value


class SharedEpoch:
    """The epoch whose augmentation a collator draws, in shared memory: DataLoader workers (persistent ones too) read
    the epoch the main process sets."""

    def __init__(self) -> None:
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation the next batches draw."""
        self._epoch.fill_(epoch)


class MTSKCollator(SharedEpoch):
    """Records -> ``input_features``, ``input_features_mask``, ``pixel_values_videos``, ``pixel_values_videos_mask``,
    ``labels`` (only the inputs the modality uses, plus labels).

    Args:
        processor: a ``LlamaMTSKProcessor`` (its video processor's ``roi_size`` / ``image_size`` set the crop).
        modality: ``"audio"``, ``"video"`` or ``"audiovisual"``.
        training: apply the training augmentation; otherwise centre crop and optional fixed-SNR noise.
        augmentation: the augmentation parameters (default: the authors' recipe).
        noise: the noise mixed into the audio; required when the config draws noisy SNRs (training) or sets
            ``eval_snr_db`` (evaluation).
        seed: base seed of the per-record generators.
        media_root: folder that relative media paths in records are relative to.
    """

    def __init__(
        self,
        processor: Any,
        modality: str = "audiovisual",
        training: bool = False,
        augmentation: AugmentationConfig | None = None,
        noise: NoiseSource | None = None,
        seed: int = 0,
        media_root: str | None = None,
    ) -> None:
        if modality not in MODALITIES:
            raise ValueError(f"MTSKCollator: modality must be one of {MODALITIES}, got {modality!r}")
        self.processor = processor
        self.modality = modality
        self.training = training
        self.augmentation = augmentation if augmentation is not None else AugmentationConfig()
        self.noise = noise
        self.seed = seed
        self.media_root = media_root
        self.uses_audio = modality in ("audio", "audiovisual")
        self.uses_video = modality in ("video", "audiovisual")
        if self.uses_audio and noise is None:
            if training and self.augmentation.uses_train_noise:
                raise ValueError(
                    "MTSKCollator: the augmentation draws noisy training SNRs "
                    f"{self.augmentation.train_snrs_db} but noise=None; pass a NoiseSource (e.g. "
                    "NoiseSource.babble(...)) or AugmentationConfig(train_snrs_db=(None,)) for clean training"
                )
            if not training and self.augmentation.eval_snr_db is not None:
                raise ValueError(
                    f"MTSKCollator: eval_snr_db={self.augmentation.eval_snr_db} needs a NoiseSource, got noise=None"
                )
        super().__init__()

    def _video(self, record: Mapping[str, Any], rng: np.random.Generator | None) -> np.ndarray:
        video_processor = self.processor.video_processor
        frames = decode_video(record, video_processor, self.media_root)
        if rng is None:
            return frames  # evaluation: the processor resizes and centre-crops
        # Gray in [0, 1] at the processor's size (a clip already at its crop size stays as it is, and the crop below
        # keeps all of it); the processor uses the crops as they are.
        pixels = video_processor.resize_clip(frames, name=f"record {record.get('id')!r} video").numpy()
        crop_size = (video_processor.crop_size["height"], video_processor.crop_size["width"])
        return augment_video(pixels, crop_size, self.augmentation, rng)

    def _audio(self, record: Mapping[str, Any], rng: np.random.Generator | None, n_frames: int | None) -> np.ndarray:
        waveform = decode_audio(record, self.media_root)
        if n_frames is not None:
            # The authors align audio to the video at 640 samples per frame.
            waveform = align_audio_to_frames(waveform, n_frames, name=f"record {record.get('id')!r} audio")
        if rng is not None:
            return augment_audio(waveform, self.augmentation, self.noise, rng)
        if self.augmentation.eval_snr_db is None:
            return waveform
        noise_rng = sample_rng(self.seed, 0, str(record["id"]))
        return mix_at_snr(waveform, self.noise.segment(waveform.size, noise_rng), self.augmentation.eval_snr_db)

    def decode_and_augment(self, record: Mapping[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """One record -> ``(waveform or None, frames or None)`` ready for the processor."""
        if "id" not in record:
            raise ValueError("MTSKCollator: every record needs an 'id' (it seeds the augmentation)")
        rng = sample_rng(self.seed, self.epoch, str(record["id"])) if self.training else None
        frames = self._video(record, rng) if self.uses_video else None
        n_frames = len(frames) if frames is not None else None
        waveform = self._audio(record, rng, n_frames) if self.uses_audio else None
        return waveform, frames

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not records:
            raise ValueError("MTSKCollator: got an empty batch")
        waveforms, videos = [], []
        for record in records:
            waveform, frames = self.decode_and_augment(record)
            waveforms.append(waveform)
            videos.append(frames)
        texts = []
        for record in records:
            if not isinstance(record.get("text"), str):
                raise ValueError(f"record {record.get('id')!r}: 'text' must be a string, got {record.get('text')!r}")
            texts.append(record["text"])
        features = self.processor(
            audio=waveforms if self.uses_audio else None,
            videos=videos if self.uses_video else None,
            text=texts,
            sampling_rate=SAMPLING_RATE,
            return_tensors="pt",
        )
        return dict(features)


def _stored_bytes(array: np.ndarray) -> int:
    """The bytes of memory behind an array: a broadcast axis (stride 0) stores one item."""
    return array.itemsize * int(np.prod([size for size, stride in zip(array.shape, array.strides) if stride != 0]))


def _compact_frames(frames: np.ndarray) -> np.ndarray:
    """RGB frames whose three channels are equal (a gray video decodes so) as one stored channel broadcast back to
    ``(T, H, W, 3)``: a third of the memory, and every reader sees the same values as in ``frames``."""
    rgb = frames.ndim == 4 and frames.shape[-1] == 3
    if rgb and np.array_equal(frames[..., 1], frames[..., 0]) and np.array_equal(frames[..., 2], frames[..., 0]):
        return np.broadcast_to(frames[..., :1].copy(), frames.shape)
    return frames


def decoded_bytes(records: Sequence[Mapping[str, Any]]) -> int:
    """The memory held by the decoded audio and video arrays of ``records`` (from :func:`decode_records`)."""
    return sum(
        _stored_bytes(record[column])
        for record in records
        for column in ("audio", "video")
        if isinstance(record.get(column), np.ndarray)
    )


def decode_records(
    records: Iterable[Mapping[str, Any]],
    processor: Any,
    modality: str = "audiovisual",
    media_root: str | None = None,
) -> list[dict[str, Any]]:
    """The records with the media ``modality`` reads decoded, as :class:`MTSKCollator` decodes them per batch
    (:func:`decode_audio`, :func:`decode_video` with ``processor``'s video processor): ``audio`` a float32 16 kHz
    waveform, ``video`` uint8 frames (a gray clip's channels stored once, see :func:`_compact_frames`). A collator of
    that modality gives the same batches from them as from ``records``. The media column the modality does not read
    is left out; the other columns are kept."""
    if modality not in MODALITIES:
        raise ValueError(f"decode_records: modality must be one of {MODALITIES}, got {modality!r}")
    decoded = []
    for record in records:
        media = {}
        if modality in ("audio", "audiovisual"):
            media["audio"] = decode_audio(record, media_root)
        if modality in ("video", "audiovisual"):
            media["video"] = _compact_frames(decode_video(record, processor.video_processor, media_root))
        decoded.append({**{key: value for key, value in record.items() if key not in ("audio", "video")}, **media})
    return decoded


def available_memory_bytes() -> int:
    """The memory this machine can still hand out without swapping (psutil's ``available``; without psutil, the free
    pages, which leave out the reclaimable page cache)."""
    try:
        import psutil
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.virtual_memory().available)


def decode_corpus(
    records: Sequence[Mapping[str, Any]],
    processor: Any,
    modality: str = "audiovisual",
    name: str = "corpus",
    media_root: str | None = None,
    max_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """:func:`decode_records` for a corpus split held in memory for a whole training run; logs the time and memory.

    Refuses the split before decoding it all when its decoded size, extrapolated from the first clip's bytes per second
    of ``duration``, exceeds ``max_bytes`` (default: half of :func:`available_memory_bytes`, shared by the training
    processes of this machine, ``LOCAL_WORLD_SIZE`` as torchrun and accelerate set it, each of which holds a copy).
    """
    if len(records) == 0:
        raise ValueError(f"decode_corpus: {name} holds no records")
    if max_bytes is None:
        max_bytes = available_memory_bytes() // (2 * int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    started = time.monotonic()
    first = decode_records([records[0]], processor, modality, media_root)
    # A datasets.Dataset reads the column without the media; a list of records is read record by record.
    durations = records["duration"] if hasattr(records, "column_names") else [record["duration"] for record in records]
    estimate = decoded_bytes(first) / float(first[0]["duration"]) * float(np.sum(durations))
    if estimate > max_bytes:
        raise ValueError(
            f"decode_once: the decoded {name} split ({len(records)} clips, {float(np.sum(durations)) / 3600:.1f} h) "
            f"would take about {estimate / 2**30:.1f} GiB of memory, over the {max_bytes / 2**30:.1f} GiB allowed "
            "(by default half of the memory available, per training process on this machine); train without "
            "decode_once, or with streaming"
        )
    rest = (records[index] for index in range(1, len(records)))  # one record's bytes in memory at a time
    decoded = first + decode_records(rest, processor, modality, media_root)
    logger.info(
        "decode_once: %d %s clips decoded in %.1f s, %.0f MB in memory (estimated %.0f MB)",
        len(decoded), name, time.monotonic() - started, decoded_bytes(decoded) / 1e6, estimate / 1e6,
    )
    return decoded


def babble_from_records(
    records: Sequence[Mapping[str, Any]],
    num_utterances: int = 64,
    num_talkers: int = 8,
    seed: int = 0,
    media_root: str | None = None,
) -> NoiseSource:
    """Babble noise from ``num_utterances`` records drawn at random (seeded) from a corpus split, e.g. the train split.

    ``records`` is any indexable collection of records (a ``datasets.Dataset`` works). See :meth:`NoiseSource.babble`.
    """
    if len(records) < num_talkers:
        raise ValueError(f"babble_from_records: need at least num_talkers={num_talkers} records, got {len(records)}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(records), size=min(num_utterances, len(records)), replace=False)
    utterances = [decode_audio(records[int(index)], media_root) for index in np.sort(chosen)]
    return NoiseSource.babble(utterances, num_talkers=num_talkers, seed=seed)
