"""The transformers Trainer, fed with frame-capped dynamic batches and logging each Matryoshka scale's loss.

Data (see mtsk_data.sampler for why it is wired this way under accelerate):
- map-style: a `FrameBatchSampler` over the whole epoch (`rank=None`), which accelerate shards across processes; the
  dataset is wrapped in `EpochDataset` so that the epoch reaches the sampler and the collator in every case,
  resumed runs included;
- streaming: a `StreamingFrameBatches` that shards row groups itself, given to a plain DataLoader (never through
  `accelerator.prepare`, which would re-dispatch its batches), with the epoch set by `StreamingEpochCallback`.

Sharded training: FSDP2's `fully_shard` turns the model's parameters into shards (DTensors) in place and gives the
model a class of its own, `FSDPLlamaMTSKForConditionalGeneration`, which transformers' `save_pretrained` would record
in `auto_map` (copying torch's FSDP modules as the model code). FSDP2 and DeepSpeed hand the Trainer's save the
weights gathered into a state dict, where the tied `lm_head.weight` is a tensor of its own. So those checkpoints are
written from `copy_with_weights`, a plain model on the gathered weights, which is also what
`MatryoshkaTrainer.full_model` gives every process after FSDP2 training.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME

from llama_mtsk import LlamaMTSKForConditionalGeneration
from mtsk_data.sampler import EpochDataset, FrameBatchSampler
from mtsk_data.streaming import StreamingFrameBatches


def copy_with_weights(
    model: LlamaMTSKForConditionalGeneration, state_dict: dict[str, torch.Tensor]
) -> LlamaMTSKForConditionalGeneration:
    """A plain `LlamaMTSKForConditionalGeneration` like `model` (config, generation config, trainable parameters)
    holding the full weights `state_dict`, its tied weights tied again."""
    plain = LlamaMTSKForConditionalGeneration.from_pretrained(
        None, config=model.config, state_dict=state_dict, dtype=model.dtype
    )
    plain.generation_config = copy.deepcopy(model.generation_config)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    for name, parameter in plain.named_parameters():
        parameter.requires_grad_(name in trainable)
    return plain


def train_mode(model: LlamaMTSKForConditionalGeneration) -> LlamaMTSKForConditionalGeneration:
    """`model.train()`, except for the encoders its config freezes: they stay in eval mode (no dropout, fixed
    BatchNorm statistics), so that a frozen encoder is a fixed function. The authors left them in train mode."""
    model.train()
    if model.config.uses_audio and model.config.freeze_audio_encoder:
        model.audio_encoder.eval()
    if model.config.uses_video and model.config.freeze_video_encoder:
        model.video_encoder.eval()
    return model


class MatryoshkaTrainer(Trainer):
    """`Trainer` with our batch sampler / streaming batches, per-scale loss logging (`loss_a4_v2`, ...) and frozen
    encoders in eval mode during training steps (see `train_mode`)."""

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
        if self.is_fsdp_enabled and self.accelerator.state.fsdp_plugin.fsdp_version != 2:
            raise ValueError("MatryoshkaTrainer shards with FSDP2 only: `fsdp_version: 2` in the accelerate config")
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

    def full_model(self) -> LlamaMTSKForConditionalGeneration:
        """The trained model with all its weights on this process's device, to save and evaluate: the model itself,
        or under FSDP2 a `copy_with_weights` on the gathered shards. Every process must call it."""
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, FSDPModule):
            return model
        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        return copy_with_weights(model, state_dict).to(self.args.device)

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        if state_dict is None:  # one process or DDP: the model holds its weights
            super()._save(output_dir)
            return
        # FSDP2 (FULL_STATE_DICT) and DeepSpeed gathered the weights, on process 0 at least.
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        copy_with_weights(self.accelerator.unwrap_model(self.model), state_dict).save_pretrained(output_dir)
        self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, output_dir / TRAINING_ARGS_NAME)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if model.training:
            # `training_step` has just put the whole model in train mode; the frozen encoders go back to eval.
            train_mode(self.accelerator.unwrap_model(model))
        ctc_weight = getattr(self.args, "audio_ctc_weight", 0.0)
        outputs = model(**inputs, **({"audio_ctc_weight": ctc_weight} if ctc_weight and model.training else {}))
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
    machine still finishes in time; the learning-rate schedule keeps the planned number of steps (on the demo, a
    cosine cut where the budget ended beat a cosine that decays to zero within the steps that fit: BENCHMARKS.md).
    Every process stops at the same step."""

    def __init__(self, minutes: float):
        if minutes <= 0:
            raise ValueError(f"TimeBudgetCallback: minutes must be positive, got {minutes}")
        self.seconds = 60.0 * minutes
        self.started = math.inf

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        out_of_time = float(time.monotonic() - self.started > self.seconds)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Each process has its own clock: stop when any of them is out of time, or the others would wait forever
            # in the next step's collectives.
            flag = torch.tensor([out_of_time], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            out_of_time = flag.item()
        if out_of_time:
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
