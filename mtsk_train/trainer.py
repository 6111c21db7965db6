"""The transformers Trainer, fed with frame-capped dynamic batches and logging each Matryoshka scale's loss.

Data (see mtsk_data.sampler for why it is wired this way under accelerate):
- map-style: a `FrameBatchSampler` over the whole epoch (`rank=None`), which accelerate shards across processes; the
  dataset is wrapped in `EpochDataset` so that the epoch reaches the sampler and the collator in every case,
  resumed runs included;
- streaming: a `StreamingFrameBatches` that shards row groups itself, given to a plain DataLoader (never through
  `accelerator.prepare`, which would re-dispatch its batches), with the epoch set by `StreamingEpochCallback`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from mtsk_data.sampler import EpochDataset, FrameBatchSampler
from mtsk_data.streaming import StreamingFrameBatches


class MatryoshkaTrainer(Trainer):
    """`Trainer` with our batch sampler / streaming batches and per-scale loss logging (`loss_a4_v2`, ...)."""

    def __init__(
        self,
        *args: Any,
        train_batches: FrameBatchSampler | StreamingFrameBatches | None = None,
        eval_batches: FrameBatchSampler | None = None,
        train_collator=None,
        eval_collator=None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.train_batches = train_batches
        self.eval_batches = eval_batches
        self.train_collator = train_collator
        self.eval_collator = eval_collator
        self._scale_loss_sum: torch.Tensor | None = None
        self._scale_loss_steps = 0

    def _loader(self, dataset, batches, collator) -> DataLoader:
        workers = self.args.dataloader_num_workers
        common = dict(
            collate_fn=collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            persistent_workers=workers > 0 and self.args.dataloader_persistent_workers,
        )
        if isinstance(batches, StreamingFrameBatches):
            return DataLoader(batches, batch_size=None, **common)
        return self.accelerator.prepare(
            DataLoader(EpochDataset(dataset, batches, collator), batch_sampler=batches, **common)
        )

    def get_train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.train_batches, self.train_collator)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        if eval_dataset is not None and eval_dataset is not self.eval_dataset:
            raise ValueError("MatryoshkaTrainer evaluates the eval split it was built with")
        return self._loader(self.eval_dataset, self.eval_batches, self.eval_collator)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        outputs = model(**inputs)
        if outputs.scale_losses is not None and model.training:
            losses = outputs.scale_losses.detach()
            self._scale_loss_sum = losses if self._scale_loss_sum is None else self._scale_loss_sum + losses
            self._scale_loss_steps += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._scale_loss_steps:
            means = self.accelerator.reduce(self._scale_loss_sum / self._scale_loss_steps, reduction="mean")
            config = self.accelerator.unwrap_model(self.model).config
            for scale, value in zip(config.scales, means.tolist()):
                logs[f"loss_{config.scale_name(scale)}"] = round(value, 4)
            self._scale_loss_sum, self._scale_loss_steps = None, 0
        super().log(logs, start_time)


class TimeBudgetCallback(TrainerCallback):
    """Stops training once `minutes` of wall time have passed (and saves a checkpoint then), so that a run on a slow
    machine still finishes in time; the learning-rate schedule keeps the planned number of steps."""

    def __init__(self, minutes: float):
        self.seconds = 60.0 * minutes
        self.started = math.inf

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.started > self.seconds:
            control.should_training_stop = True
            control.should_save = True


class StreamingEpochCallback(TrainerCallback):
    """Sets the epoch of streaming batches and their collator, which no DataLoader wrapper reaches."""

    def __init__(self, batches: StreamingFrameBatches, collator):
        self.batches = batches
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = int(state.epoch or 0)
        self.batches.set_epoch(epoch)
        self.collator.set_epoch(epoch)
