"""Synthetic fairseq AV-HuBERT checkpoints and an independent AV-HuBERT reference, for the converter tests.

No real weights are available here, so the checkpoints are built key by key from the public av_hubert sources
(`avhubert/hubert.py::AVHubertModel`, `avhubert/resnet.py::ResEncoder`, fairseq's wav2vec2 `TransformerEncoder`), with
the same key names and shapes, and pickled with the same objects a real fairseq checkpoint holds: an omegaconf
`DictConfig` (or the plain dict `OmegaConf.to_container` gives), fairseq `Dictionary` objects in `task_state`, numpy
scalars in the optimizer history, `OrderedDict`s. The omegaconf and fairseq classes are look-alikes registered under
the real module paths only while pickling, so the pickle names `omegaconf.dictconfig.DictConfig` etc. exactly as a
real file does, and the reader must cope without those packages.

`reference_video_features` recomputes AV-HuBERT on video from the fairseq state dict with plain tensor operations,
following the paper's description (AV-HuBERT, arXiv 2201.02184), without our encoder module.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import sys
import types
import typing
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------------------
# Look-alikes of the classes real fairseq checkpoints pickle
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Metadata:
    ref_type: typing.Any
    object_type: typing.Any
    optional: bool
    key: typing.Any
    flags: dict = dataclasses.field(default_factory=dict)
    flags_root: bool = False
    resolver_cache: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(dict))


@dataclasses.dataclass
class ContainerMetadata(Metadata):
    key_type: typing.Any = None
    element_type: typing.Any = None


class AnyNode:
    """omegaconf 2.1+ value node: state `_metadata`, `_parent`, `_val`."""

    def __init__(self, value, parent, key):
        self._metadata = Metadata(ref_type=typing.Any, object_type=None, optional=True, key=key)
        self._parent = parent
        self._val = value


class DictConfig:
    """omegaconf `DictConfig` as it pickles: state `_metadata`, `_parent`, `_content` ({key: node})."""

    def __init__(self, content: dict, parent=None, key=None):
        self._metadata = ContainerMetadata(
            ref_type=typing.Any, object_type=dict, optional=True, key=key, key_type=typing.Any, element_type=typing.Any
        )
        self._parent = parent
        self._content = {name: _node(value, self, name) for name, value in content.items()}


class ListConfig:
    def __init__(self, content: list, parent=None, key=None):
        self._metadata = ContainerMetadata(
            ref_type=typing.Any, object_type=list, optional=True, key=key, key_type=int, element_type=typing.Any
        )
        self._parent = parent
        self._content = [_node(value, self, index) for index, value in enumerate(content)]


def _node(value, parent, key):
    if isinstance(value, dict):
        return DictConfig(value, parent, key)
    if isinstance(value, list):
        return ListConfig(value, parent, key)
    return AnyNode(value, parent, key)


class Dictionary:
    """fairseq `Dictionary` (task_state["dictionaries"] of a HuBERT pre-training checkpoint)."""

    def __init__(self, num_symbols: int):
        self.bos_word, self.unk_word, self.pad_word, self.eos_word = "<s>", "<unk>", "<pad>", "</s>"
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(index) for index in range(num_symbols)]
        self.count = [1] * len(self.symbols)
        self.indices = {symbol: index for index, symbol in enumerate(self.symbols)}
        self.bos_index, self.pad_index, self.eos_index, self.unk_index = 0, 1, 2, 3
        self.nspecial = 4


_FAKE_MODULES = {
    "omegaconf.base": [Metadata, ContainerMetadata],
    "omegaconf.nodes": [AnyNode],
    "omegaconf.dictconfig": [DictConfig],
    "omegaconf.listconfig": [ListConfig],
    "fairseq.data.dictionary": [Dictionary],
}


@contextlib.contextmanager
def fairseq_classes_importable() -> Iterator[None]:
    """Registers the look-alikes under omegaconf's and fairseq's module paths while a checkpoint is pickled."""
    added = []
    for module_name, classes in _FAKE_MODULES.items():
        parts = module_name.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        for cls in classes:
            cls.__module__ = module_name
            setattr(sys.modules[module_name], cls.__name__, cls)
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic AV-HuBERT checkpoints
# ---------------------------------------------------------------------------------------------------------------------

LARGE = dict(
    hidden=1024, layers=24, heads=16, ffn=4096, conv_pos=128, conv_pos_groups=16, frontend=64, resnet=(64, 128, 256, 512)
)
# Same key set as Large, small enough for real numerics on a CPU.
TINY = dict(hidden=32, layers=2, heads=4, ffn=48, conv_pos=8, conv_pos_groups=4, frontend=8, resnet=(8, 8, 16, 16))
AUDIO_FEATURE_DIM = 104  # 26 log filterbanks stacked 4 times
FINAL_DIM = 256
NUM_CLUSTERS = 2000


def avhubert_state_dict(
    hidden: int,
    layers: int,
    heads: int,
    ffn: int,
    conv_pos: int,
    conv_pos_groups: int,
    frontend: int,
    resnet: tuple[int, ...],
    relu_type: str = "prelu",
    device: str = "cpu",
    seed: int = 0,
    **_: object,
) -> collections.OrderedDict:
    """`AVHubertModel.state_dict()` of a pre-training checkpoint, key by key from the av_hubert sources, with random
    values that look trained (BatchNorm statistics, PReLU slopes and biases away from their initial values).
    Settings only the config carries (`heads`, `layer_norm_first`) are accepted and ignored."""
    generator = torch.Generator().manual_seed(seed)
    state: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()

    def tensor(*shape, std=0.1, mean=0.0):
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=generator) * std + mean

    def batch_norm(prefix, channels):
        state[f"{prefix}.weight"] = tensor(channels, std=0.1, mean=1.0)
        state[f"{prefix}.bias"] = tensor(channels)
        state[f"{prefix}.running_mean"] = tensor(channels)
        state[f"{prefix}.running_var"] = tensor(channels, std=0.1, mean=1.0).abs() if device != "meta" else tensor(channels)
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000, device=device)

    def prelu(prefix, channels):
        if relu_type == "prelu":
            state[f"{prefix}.weight"] = tensor(channels, std=0.05, mean=0.25)

    def linear(prefix, out_features, in_features, std=None):
        state[f"{prefix}.weight"] = tensor(out_features, in_features, std=std or 1 / math.sqrt(in_features))
        state[f"{prefix}.bias"] = tensor(out_features, std=0.02)

    def layer_norm(prefix, size):
        state[f"{prefix}.weight"] = tensor(size, std=0.1, mean=1.0)
        state[f"{prefix}.bias"] = tensor(size, std=0.1)

    resnet_prefix = "feature_extractor_video.resnet"
    state[f"{resnet_prefix}.frontend3D.0.weight"] = tensor(frontend, 1, 5, 7, 7, std=0.05)
    batch_norm(f"{resnet_prefix}.frontend3D.1", frontend)
    prelu(f"{resnet_prefix}.frontend3D.2", frontend)
    in_channels = frontend
    for stage, out_channels in enumerate(resnet, start=1):
        for block in range(2):
            prefix = f"{resnet_prefix}.trunk.layer{stage}.{block}"
            block_in = in_channels if block == 0 else out_channels
            state[f"{prefix}.conv1.weight"] = tensor(out_channels, block_in, 3, 3, std=1 / math.sqrt(9 * block_in))
            batch_norm(f"{prefix}.bn1", out_channels)
            prelu(f"{prefix}.relu1", out_channels)
            state[f"{prefix}.conv2.weight"] = tensor(out_channels, out_channels, 3, 3, std=1 / math.sqrt(9 * out_channels))
            batch_norm(f"{prefix}.bn2", out_channels)
            prelu(f"{prefix}.relu2", out_channels)
            if block == 0 and (stage > 1 or in_channels != out_channels):
                state[f"{prefix}.downsample.0.weight"] = tensor(out_channels, block_in, 1, 1, std=1 / math.sqrt(block_in))
                batch_norm(f"{prefix}.downsample.1", out_channels)
        in_channels = out_channels
    linear("feature_extractor_video.proj", hidden, resnet[-1])
    linear("feature_extractor_audio.proj", hidden, AUDIO_FEATURE_DIM)
    state["mask_emb"] = tensor(AUDIO_FEATURE_DIM)
    state["encoder.pos_conv.0.bias"] = tensor(hidden, std=0.02)
    state["encoder.pos_conv.0.weight_g"] = tensor(1, 1, conv_pos, std=0.2, mean=1.0)
    state["encoder.pos_conv.0.weight_v"] = tensor(hidden, hidden // conv_pos_groups, conv_pos)
    for index in range(layers):
        prefix = f"encoder.layers.{index}"
        for projection in ("k_proj", "v_proj", "q_proj", "out_proj"):
            linear(f"{prefix}.self_attn.{projection}", hidden, hidden)
        layer_norm(f"{prefix}.self_attn_layer_norm", hidden)
        linear(f"{prefix}.fc1", ffn, hidden)
        linear(f"{prefix}.fc2", hidden, ffn)
        layer_norm(f"{prefix}.final_layer_norm", hidden)
    layer_norm("encoder.layer_norm", hidden)
    layer_norm("layer_norm", 2 * hidden)
    linear("post_extract_proj", hidden, 2 * hidden)
    linear("final_proj", FINAL_DIM, hidden)
    state["label_embs_concat"] = tensor(NUM_CLUSTERS + 4, FINAL_DIM)
    return state


def fairseq_config(
    hidden: int, layers: int, heads: int, ffn: int, conv_pos: int, conv_pos_groups: int, layer_norm_first: bool = True,
    relu_type: str = "prelu", image_crop_size: int = 88, **_: object,
) -> dict:
    """`cfg` of an AV-HuBERT pre-training checkpoint as fairseq saves it (`OmegaConf.to_container`), abridged."""
    return {
        "_name": None,
        "common": {"fp16": True, "seed": 1337, "user_dir": "/checkpoint/avhubert"},
        "checkpoint": {"save_interval_updates": 25000, "no_epoch_checkpoints": True},
        "task": {
            "_name": "av_hubert_pretraining",
            "labels": ["km"],
            "label_rate": 25,
            "sample_rate": 25,
            "stack_order_audio": 4,
            "input_modality": "image",
            "image_aug": True,
            "image_crop_size": image_crop_size,
            "image_mean": 0.421,
            "image_std": 0.165,
            "max_sample_size": 2000,
        },
        "model": {
            "_name": "av_hubert",
            "label_rate": 25,
            "input_modality": "image",
            "extractor_mode": "default",
            "encoder_layers": layers,
            "encoder_embed_dim": hidden,
            "encoder_ffn_embed_dim": ffn,
            "encoder_attention_heads": heads,
            "activation_fn": "gelu",
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "activation_dropout": 0.0,
            "encoder_layerdrop": 0.05,
            "dropout_input": 0.1,
            "dropout_features": 0.1,
            "final_dim": FINAL_DIM,
            "untie_final_proj": True,
            "layer_norm_first": layer_norm_first,
            "conv_pos": conv_pos,
            "conv_pos_groups": conv_pos_groups,
            "resnet_relu_type": relu_type,
            "resnet_weights": None,
            "sim_type": "cosine",
            "sub_encoder_layers": 0,
            "audio_feat_dim": AUDIO_FEATURE_DIM,
            "modality_dropout": 0.5,
            "audio_dropout": 0.5,
            "modality_fuse": "concat",
            "selection_type": "same_seq",
            "masking_type": "input",
            "mask_prob_image": 0.3,
            "mask_length_image": 5,
            "feature_grad_mult": 0.1,
            "layer_norm_eps": None,  # not an AV-HuBERT field: shows unrelated entries are ignored
        },
    }


def fairseq_checkpoint(state: dict, cfg: dict, as_dictconfig: bool = False) -> dict:
    """The top-level dict fairseq's `Trainer.state_dict` saves (fairseq at av_hubert's pinned commit)."""
    return {
        "args": None,
        "cfg": DictConfig(cfg) if as_dictconfig else cfg,
        "model": state,
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "AVHubertCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": np.float64(2.5)},
                "num_updates": np.int64(600000),
            }
        ],
        "task_state": {"dictionaries": [Dictionary(NUM_CLUSTERS)]},
        "extra_state": {
            "metrics": collections.OrderedDict(
                [("default", [(0, "loss", "AverageMeter", {"val": 2.1, "sum": 210.0, "count": 100, "round": 3})])]
            ),
            "previous_training_time": 123456.7,
            "train_iterator": {"epoch": 31, "iterations_in_epoch": 0, "shuffle": True},
            "best": np.float64(2.2),
        },
    }


def save_fairseq_checkpoint(checkpoint: dict, path, **save_kwargs) -> None:
    with fairseq_classes_importable():
        torch.save(checkpoint, path, **save_kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Independent reference: AV-HuBERT on video, from the fairseq state dict, with plain tensor operations
# ---------------------------------------------------------------------------------------------------------------------


def _batch_norm(x, state, prefix):
    return F.batch_norm(
        x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"], state[f"{prefix}.weight"],
        state[f"{prefix}.bias"], training=False, eps=1e-5,
    )


def _activation(x, state, prefix):
    return F.prelu(x, state[f"{prefix}.weight"]) if f"{prefix}.weight" in state else F.relu(x)


def _layer_norm(x, state, prefix):
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-5)


def _linear(x, state, prefix):
    return x @ state[f"{prefix}.weight"].T + state[f"{prefix}.bias"]


def reference_video_features(
    state: dict, video: torch.Tensor, heads: int, layer_norm_first: bool = True, lora_scaling: float | None = None
) -> torch.Tensor:
    """
    AV-HuBERT video-only features from a fairseq state dict: 3-D stem (conv 5x7x7 stride 1x2x2,
    BN, PReLU, max-pool 1x3x3 stride 1x2x2), per-frame ResNet-18, Linear to the width, concat(zero audio, video),
    LayerNorm, Linear, weight-normed grouped positional convolution (+ GELU, added), transformer layers, final LayerNorm.

    `video`: (B, T, 1, H, W). With `lora_scaling`, the attention adds the Llama-AVSR AV-HuBERT LoRA the way their
    fairseq fork does: q += s * up_Q(down_Q(x)), v += s * up_V(down_V(x)).
    """
    x = video.transpose(1, 2)  # (B, 1, T, H, W)
    stem = "feature_extractor_video.resnet.frontend3D"
    x = F.conv3d(x, state[f"{stem}.0.weight"], stride=(1, 2, 2), padding=(2, 3, 3))
    x = _activation(_batch_norm(x, state, f"{stem}.1"), state, f"{stem}.2")
    x = F.max_pool3d(x, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
    batch, channels, frames = x.shape[:3]
    x = x.transpose(1, 2).reshape(batch * frames, channels, *x.shape[3:])
    for stage in range(1, 5):
        for block in range(2):
            prefix = f"feature_extractor_video.resnet.trunk.layer{stage}.{block}"
            stride = 2 if (stage > 1 and block == 0) else 1
            out = F.conv2d(x, state[f"{prefix}.conv1.weight"], stride=stride, padding=1)
            out = _activation(_batch_norm(out, state, f"{prefix}.bn1"), state, f"{prefix}.relu1")
            out = _batch_norm(F.conv2d(out, state[f"{prefix}.conv2.weight"], padding=1), state, f"{prefix}.bn2")
            shortcut = x
            if f"{prefix}.downsample.0.weight" in state:
                shortcut = _batch_norm(
                    F.conv2d(x, state[f"{prefix}.downsample.0.weight"], stride=stride), state, f"{prefix}.downsample.1"
                )
            x = _activation(out + shortcut, state, f"{prefix}.relu2")
    x = x.mean(dim=(2, 3)).view(batch, frames, -1)
    video_features = _linear(x, state, "feature_extractor_video.proj")
    x = torch.cat([torch.zeros_like(video_features), video_features], dim=-1)
    x = _linear(_layer_norm(x, state, "layer_norm"), state, "post_extract_proj")

    weight_v, weight_g = state["encoder.pos_conv.0.weight_v"], state["encoder.pos_conv.0.weight_g"]
    kernel = weight_v.shape[-1]
    weight = weight_g * weight_v / weight_v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    groups = x.shape[-1] // weight_v.shape[1]
    positions = F.conv1d(x.transpose(1, 2), weight, state["encoder.pos_conv.0.bias"], padding=kernel // 2, groups=groups)
    if kernel % 2 == 0:
        positions = positions[..., :-1]
    x = x + F.gelu(positions).transpose(1, 2)
    if not layer_norm_first:
        x = _layer_norm(x, state, "encoder.layer_norm")

    layer = 0
    while f"encoder.layers.{layer}.fc1.weight" in state:
        prefix = f"encoder.layers.{layer}"

        def attention(h):
            q = _linear(h, state, f"{prefix}.self_attn.q_proj")
            k = _linear(h, state, f"{prefix}.self_attn.k_proj")
            v = _linear(h, state, f"{prefix}.self_attn.v_proj")
            if lora_scaling is not None:
                lora = f"{prefix}.self_attn.lora"
                q = q + lora_scaling * (h @ state[f"{lora}_down_Q.weight"].T @ state[f"{lora}_up_Q.weight"].T)
                v = v + lora_scaling * (h @ state[f"{lora}_down_V.weight"].T @ state[f"{lora}_up_V.weight"].T)
            split = lambda t: t.view(batch, frames, heads, -1).transpose(1, 2)  # noqa: E731
            q, k, v = split(q), split(k), split(v)
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, frames, -1)
            return _linear(attended, state, f"{prefix}.self_attn.out_proj")

        def feed_forward(h):
            return _linear(F.gelu(_linear(h, state, f"{prefix}.fc1")), state, f"{prefix}.fc2")

        if layer_norm_first:
            x = x + attention(_layer_norm(x, state, f"{prefix}.self_attn_layer_norm"))
            x = x + feed_forward(_layer_norm(x, state, f"{prefix}.final_layer_norm"))
        else:
            x = _layer_norm(x + attention(x), state, f"{prefix}.self_attn_layer_norm")
            x = _layer_norm(x + feed_forward(x), state, f"{prefix}.final_layer_norm")
        layer += 1
    if layer_norm_first:
        x = _layer_norm(x, state, "encoder.layer_norm")
    return x
