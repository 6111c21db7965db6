"""train.py for `accelerate launch` on CPU processes, recording what the tests of distributed training check.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no \
        tests/distributed_train.py RECORDS_DIR CONFIG.yaml --use_cpu true ...

accelerate 1.15 runs sharded training only on accelerator devices, while torch's `fully_shard` and DeepSpeed's ZeRO
both run on CPU over gloo. So for the tests, and only here, this launcher lifts accelerate's two gates (see
`run_fsdp_on_cpu` and `run_deepspeed_on_cpu`); the tests then check that the run really was sharded.

Each process writes into RECORDS_DIR:
- `batches-<rank>.jsonl`: the clip ids of every training batch it collated;
- `sharding-<rank>.json`: at the first training step, accelerate's distributed type, how many of the model's
  parameters were DTensors (FSDP shards) and of how many, and the DeepSpeed ZeRO stage (None without DeepSpeed);
- `weights-<rank>.pt`: the state dict `train.main` saves and evaluates, after checkpoint averaging.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from mtsk_data.collator import MTSKCollator  # noqa: E402
from mtsk_train.trainer import MatryoshkaTrainer  # noqa: E402


def run_fsdp_on_cpu() -> None:
    """accelerate turns only multi-GPU (NPU, XPU, ...) states into FSDP: on CPU processes it drops the FSDP plugin
    and trains with DDP. Make a multi-CPU state with an FSDP plugin an FSDP state."""
    original_init = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init


def run_deepspeed_on_cpu() -> None:
    """accelerate starts DeepSpeed only when it finds an accelerator device: on a CPU-only machine every process
    sees a world of one. Give DeepSpeed runs gloo over CPU processes instead, and leave out DeepSpeed's
    shared-memory all-reduce kernel, which it would compile at first use (minutes): gloo does the same reduction."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    original_prepare_backend = PartialState._prepare_backend

    def prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        backend, distributed_type = original_prepare_backend(self, cpu, sagemaker_dp, backend)
        if distributed_type == DistributedType.NO and int(os.environ.get("WORLD_SIZE", 1)) > 1:
            return "gloo", DistributedType.MULTI_CPU
        return backend, distributed_type

    PartialState._prepare_backend = prepare_backend


def record_training_batches(records_dir: Path, rank: int) -> None:
    original_call = MTSKCollator.__call__

    def call(self, records):
        if self.training:
            with open(records_dir / f"batches-{rank}.jsonl", "a") as file:
                file.write(json.dumps([record["id"] for record in records]) + "\n")
        return original_call(self, records)

    MTSKCollator.__call__ = call


def record_sharding(records_dir: Path, rank: int) -> None:
    original_compute_loss = MatryoshkaTrainer.compute_loss
    path = records_dir / f"sharding-{rank}.json"

    def compute_loss(self, model, inputs, *args, **kwargs):
        if not path.exists():
            parameters = list(model.parameters())
            record = {
                "distributed_type": str(self.accelerator.distributed_type),
                "dtensors": sum(isinstance(parameter, DTensor) for parameter in parameters),
                "parameters": len(parameters),
                "zero_stage": self.model_wrapped.zero_optimization_stage() if self.is_deepspeed_enabled else None,
            }
            path.write_text(json.dumps(record))
        return original_compute_loss(self, model, inputs, *args, **kwargs)

    MatryoshkaTrainer.compute_loss = compute_loss


def record_final_weights(records_dir: Path, rank: int) -> None:
    original_average = train.average_last_checkpoints

    def average(model, *args, **kwargs):
        folders = original_average(model, *args, **kwargs)
        state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        torch.save(state, records_dir / f"weights-{rank}.pt")
        return folders

    train.average_last_checkpoints = average


if __name__ == "__main__":
    records_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ["RANK"])
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        run_fsdp_on_cpu()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        run_deepspeed_on_cpu()
    record_training_batches(records_dir, rank)
    record_sharding(records_dir, rank)
    record_final_weights(records_dir, rank)
    train.main(argv)
