"""A frozen audio encoder's outputs, computed once for the whole training set and reused every epoch.

With a frozen pretrained Whisper encoder and no audio augmentation, every epoch would recompute exactly the same
encoder outputs: Whisper runs over its whole 30-s window whatever the clip's length (about 0.3 s per clip for
Whisper tiny.en on 2 CPU cores, several times a SmolLM2 LoRA step's cost per clip). The cache holds each clip's
output cut to the length the model uses (`LlamaMTSKForConditionalGeneration.encode_audio`), and
`EncodedAudioCollator` hands it to the model as `audio_encoder_outputs`, which gives the same loss as `input_features`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from llama_mtsk import LlamaMTSKForConditionalGeneration
from llama_mtsk.configuration_llama_mtsk import WHISPER_FRAMES_PER_SECOND
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_data.augment import sample_rng, time_mask
from mtsk_data.collator import MTSKCollator


logger = logging.getLogger(__name__)


def check_cacheable(model: LlamaMTSKForConditionalGeneration, augment: bool) -> None:
    """Caching is exact only for an audio-only model with a frozen audio encoder and no augmentation."""
    config = model.config
    problems = []
    if config.modality != "audio":
        problems.append(f"the model's modality is {config.modality!r}, not 'audio'")
    if not config.freeze_audio_encoder:
        problems.append("the audio encoder is trained (freeze_audio_encoder is false)")
    if augment:
        problems.append("augmentation is on (augment: true changes the audio every epoch)")
    if problems:
        raise ValueError("cache_audio_encoder_outputs needs a frozen audio encoder's fixed inputs, but " + "; ".join(problems))


@torch.no_grad()
def encode_audio_records(
    model: LlamaMTSKForConditionalGeneration,
    processor: LlamaMTSKProcessor,
    records: Sequence[Mapping[str, Any]],
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Record id -> the audio encoder's output for that clip, `(frames, d)` in float32 on the CPU."""
    duplicates = sorted(record_id for record_id, count in Counter(str(record["id"]) for record in records).items() if count > 1)
    if duplicates:
        raise ValueError(f"encode_audio_records: record ids must be unique to key the cache; repeated: {duplicates[:5]}")
    was_training = model.training
    model.eval()
    collator = MTSKCollator(processor, modality="audio", training=False)
    device = next(model.parameters()).device
    outputs: dict[str, torch.Tensor] = {}
    started = time.monotonic()
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        features = collator(batch)
        hidden, lengths = model.encode_audio(
            features["input_features"].to(device), features["input_features_mask"].to(device)
        )
        for row, record in enumerate(batch):
            outputs[str(record["id"])] = hidden[row, : int(lengths[row])].float().cpu().clone()
        if (start // batch_size) % 20 == 0:
            logger.info("audio encoder outputs: %d / %d clips (%.0f s)", len(outputs), len(records), time.monotonic() - started)
    model.train(was_training)
    return outputs


class EncodedAudioCollator:
    """Records -> `audio_encoder_outputs`, `audio_encoder_outputs_mask` (from the cache) and `labels` (the processor's
    transcript tokens).

    With `mask_window` > 0 (training), every 50 frames (one second of Whisper output) of a clip get one span of
    0 .. `mask_window` - 1 frames set to zero, drawn anew per clip and epoch from `seed`: the time masking that
    augmentation would apply to the audio, applied where the cache leaves something to change.
    """

    def __init__(
        self,
        processor: LlamaMTSKProcessor,
        encoder_outputs: Mapping[str, torch.Tensor],
        mask_window: int = 0,
        seed: int = 0,
    ):
        if mask_window < 0:
            raise ValueError(f"EncodedAudioCollator: mask_window must be >= 0 frames, got {mask_window}")
        self.processor = processor
        self.encoder_outputs = encoder_outputs
        self.mask_window = mask_window
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch seeds the masks (nothing else changes: the cached outputs are fixed)."""
        self.epoch = epoch

    def _masked(self, record_id: str) -> torch.Tensor:
        hidden = self.encoder_outputs[record_id]
        if not self.mask_window:
            return hidden
        rng = sample_rng(self.seed, self.epoch, record_id)
        return torch.from_numpy(time_mask(hidden.numpy(), self.mask_window, WHISPER_FRAMES_PER_SECOND, rng))

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not records:
            raise ValueError("EncodedAudioCollator: got an empty batch")
        missing = [str(record.get("id")) for record in records if str(record.get("id")) not in self.encoder_outputs]
        if missing:
            raise KeyError(f"EncodedAudioCollator: no cached audio encoder output for records {missing[:5]}")
        hidden = [self._masked(str(record["id"])) for record in records]
        longest = max(tensor.shape[0] for tensor in hidden)
        outputs = hidden[0].new_zeros(len(hidden), longest, hidden[0].shape[1])
        mask = torch.zeros(len(hidden), longest, dtype=torch.long)
        for row, tensor in enumerate(hidden):
            outputs[row, : tensor.shape[0]] = tensor
            mask[row, : tensor.shape[0]] = 1
        labels = self.processor(text=[record["text"] for record in records], return_tensors="pt")["labels"]
        return {"audio_encoder_outputs": outputs, "audio_encoder_outputs_mask": mask, "labels": labels}
