"""A frozen audio encoder's outputs, computed once for the whole training set and reused every epoch.

With a frozen pretrained Whisper encoder and no audio augmentation, every epoch would recompute exactly the same
encoder outputs: Whisper runs over its whole window whatever the clip's length (about 0.3 s per clip for Whisper
tiny.en's 30-s window on 2 CPU cores, several times a SmolLM2 LoRA step's cost per clip). The cache holds each clip's
output cut to the length the model uses (`LlamaMTSKForConditionalGeneration.encode_audio`), and
`EncodedAudioCollator` hands it to the model as `audio_encoder_outputs`, which gives the same loss as `input_features`.
An audio-visual model gets its video from an `MTSKCollator` beside the cache, as it would without it.

Noise, the augmentation a cache would otherwise rule out, is cached too: with `noisy_copies` > 0 every clip is also
encoded that many times with noise mixed in at an SNR drawn from `noisy_snrs_db` (per clip and copy, seeded), and each
epoch the collator hands the model one of the clip's copies, the clean one included, drawn uniformly. That is what
teaches an audio-visual model to read the lips when the audio is drowned out.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from llama_mtsk import LlamaMTSKForConditionalGeneration
from llama_mtsk.configuration_llama_mtsk import SAMPLING_RATE, WHISPER_FRAMES_PER_SECOND
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_data.augment import NoiseSource, mix_at_snr, sample_rng, time_mask
from mtsk_data.collator import MTSKCollator, SharedEpoch


logger = logging.getLogger(__name__)


def check_cacheable(model: LlamaMTSKForConditionalGeneration, augment: bool) -> None:
    """Caching is exact only for a model with audio, a frozen audio encoder and no augmentation."""
    config = model.config
    problems = []
    if not config.uses_audio:
        problems.append(f"the model's modality is {config.modality!r}, without audio")
    if not config.freeze_audio_encoder:
        problems.append("the audio encoder is trained (freeze_audio_encoder is false)")
    if augment:
        problems.append("augmentation is on (augment: true changes the audio every epoch; cache noisy copies instead)")
    if problems:
        raise ValueError("cache_audio_encoder_outputs needs a frozen audio encoder's fixed inputs, but " + "; ".join(problems))


def _noisy_copy_rng(seed: int, copy: int, record_id: str) -> np.random.Generator:
    # Its own stream, apart from the per-epoch draws of `sample_rng(seed, epoch, record_id)`.
    return sample_rng(seed, copy, f"{record_id} noisy copy")


@torch.no_grad()
def encode_audio_records(
    model: LlamaMTSKForConditionalGeneration,
    processor: LlamaMTSKProcessor,
    records: Sequence[Mapping[str, Any]],
    batch_size: int = 16,
    noise: NoiseSource | None = None,
    noisy_copies: int = 0,
    noisy_snrs_db: Sequence[float] = (),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Record id -> the audio encoder's outputs for that clip, `(1 + noisy_copies, frames, d)` in float32 on the CPU:
    the clean audio first, then each noisy copy (`noise` at an SNR drawn uniformly from `noisy_snrs_db`).

    The waveforms are those `MTSKCollator` gives the model's modality without augmentation (an audio-visual model's
    audio is cut or padded to its video's frames), so the outputs are exactly what `input_features` would produce."""
    if noisy_copies < 0:
        raise ValueError(f"encode_audio_records: noisy_copies must be >= 0, got {noisy_copies}")
    if noisy_copies and (noise is None or not noisy_snrs_db):
        raise ValueError(f"encode_audio_records: {noisy_copies} noisy copies need a NoiseSource and noisy_snrs_db")
    duplicates = sorted(record_id for record_id, count in Counter(str(record["id"]) for record in records).items() if count > 1)
    if duplicates:
        raise ValueError(f"encode_audio_records: record ids must be unique to key the cache; repeated: {duplicates[:5]}")
    was_training = model.training
    model.eval()
    collator = MTSKCollator(processor, modality=model.config.modality, training=False)
    device = next(model.parameters()).device
    copies = 1 + noisy_copies
    outputs: dict[str, torch.Tensor] = {}
    started = time.monotonic()
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        waveforms = []
        for record in batch:
            clean, _ = collator.decode_and_augment(record)
            waveforms.append(clean)
            for copy in range(noisy_copies):
                rng = _noisy_copy_rng(seed, copy, str(record["id"]))
                snr_db = noisy_snrs_db[int(rng.integers(0, len(noisy_snrs_db)))]
                waveforms.append(mix_at_snr(clean, noise.segment(clean.size, rng), snr_db))
        features = processor(audio=waveforms, sampling_rate=SAMPLING_RATE, return_tensors="pt")
        hidden, lengths = model.encode_audio(
            features["input_features"].to(device), features["input_features_mask"].to(device)
        )
        for row, record in enumerate(batch):
            rows = slice(row * copies, (row + 1) * copies)
            outputs[str(record["id"])] = hidden[rows, : int(lengths[row * copies])].float().cpu().clone()
        if (start // batch_size) % 20 == 0:
            logger.info("audio encoder outputs: %d / %d clips (%.0f s)", len(outputs), len(records), time.monotonic() - started)
    logger.info(
        "audio encoder outputs of %d clips (%d copies each) in %.0f s", len(outputs), copies, time.monotonic() - started
    )
    model.train(was_training)
    return outputs


class EncodedAudioCollator(SharedEpoch):
    """Records -> `audio_encoder_outputs`, `audio_encoder_outputs_mask` (from the cache) and `labels` (the processor's
    transcript tokens); with `video_collator` (an audio-visual model), also its `pixel_values_videos` and mask.

    Each clip's audio is one of its cached copies (see `encode_audio_records`), drawn uniformly per clip and epoch from
    `seed` when there are several. With `mask_window` > 0 (training), every 50 frames (one second of Whisper output)
    of a clip get one span of 0 .. `mask_window` - 1 frames set to zero, drawn the same way: the time masking that
    augmentation would apply to the audio, applied where the cache leaves something to change.
    """

    def __init__(
        self,
        processor: LlamaMTSKProcessor,
        encoder_outputs: Mapping[str, torch.Tensor],
        mask_window: int = 0,
        seed: int = 0,
        video_collator: MTSKCollator | None = None,
    ):
        if mask_window < 0:
            raise ValueError(f"EncodedAudioCollator: mask_window must be >= 0 frames, got {mask_window}")
        if video_collator is not None and video_collator.modality != "video":
            raise ValueError(
                f"EncodedAudioCollator: video_collator must read the video alone, its modality is {video_collator.modality!r}"
            )
        self.processor = processor
        self.encoder_outputs = encoder_outputs
        self.mask_window = mask_window
        self.seed = seed
        self.video_collator = video_collator
        super().__init__()

    def set_epoch(self, epoch: int) -> None:
        """The epoch seeds the choice of copy and the masks (and the video collator's augmentation)."""
        super().set_epoch(epoch)
        if self.video_collator is not None:
            self.video_collator.set_epoch(epoch)

    def _audio(self, record_id: str) -> torch.Tensor:
        copies = self.encoder_outputs[record_id]
        if copies.shape[0] == 1 and not self.mask_window:
            return copies[0]
        rng = sample_rng(self.seed, self.epoch, record_id)
        hidden = copies[int(rng.integers(0, copies.shape[0]))] if copies.shape[0] > 1 else copies[0]
        if not self.mask_window:
            return hidden
        return torch.from_numpy(time_mask(hidden.numpy(), self.mask_window, WHISPER_FRAMES_PER_SECOND, rng))

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not records:
            raise ValueError("EncodedAudioCollator: got an empty batch")
        missing = [str(record.get("id")) for record in records if str(record.get("id")) not in self.encoder_outputs]
        if missing:
            raise KeyError(f"EncodedAudioCollator: no cached audio encoder output for records {missing[:5]}")
        hidden = [self._audio(str(record["id"])) for record in records]
        longest = max(tensor.shape[0] for tensor in hidden)
        outputs = hidden[0].new_zeros(len(hidden), longest, hidden[0].shape[1])
        mask = torch.zeros(len(hidden), longest, dtype=torch.long)
        for row, tensor in enumerate(hidden):
            outputs[row, : tensor.shape[0]] = tensor
            mask[row, : tensor.shape[0]] = 1
        if self.video_collator is None:
            batch = {"labels": self.processor(text=[record["text"] for record in records], return_tensors="pt")["labels"]}
        else:
            batch = self.video_collator(records)
        return {"audio_encoder_outputs": outputs, "audio_encoder_outputs_mask": mask, **batch}
