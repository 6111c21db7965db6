# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Llama-MTSK: Whisper and AV-HuBERT encoders, per-rate compression and projectors, and a frozen Llama-architecture
LLM with Matryoshka LoRA, for audio (ASR), visual (VSR) and audio-visual (AVSR) speech recognition at the compression
rate ("scale") the caller chooses.

Reading order: the AV-HuBERT video encoder, compression and projectors, the Matryoshka LoRA, then the model.
"""

import math
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, CompileConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.dynamic_module_utils import get_cached_module_file
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast
from transformers.models.hubert.modeling_hubert import HubertEncoder, HubertEncoderStableLayerNorm
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import HF_MODULES_CACHE, ModelOutput

from .configuration_llama_mtsk import VIDEO_FPS, WHISPER_FRAMES_PER_SECOND, AVHubertConfig, LlamaMTSKConfig


# The remote-code modules a checkpoint carries besides this one and its config (see `save_pretrained`).
SIBLING_MODULES = ("processing_llama_mtsk.py", "media_llama_mtsk.py", "pipeline_llama_mtsk.py", "mouth_roi.py")
AUTO_MAP = {
    "AutoConfig": "configuration_llama_mtsk.LlamaMTSKConfig",
    "AutoModel": "modeling_llama_mtsk.LlamaMTSKForConditionalGeneration",
    "AutoModelForSpeechSeq2Seq": "modeling_llama_mtsk.LlamaMTSKForConditionalGeneration",
    "AutoProcessor": "processing_llama_mtsk.LlamaMTSKProcessor",
}
# `pipeline("automatic-speech-recognition", model=checkpoint, trust_remote_code=True)` resolves to our pipeline.
CUSTOM_PIPELINES = {
    "automatic-speech-recognition": {
        "impl": "pipeline_llama_mtsk.LlamaMTSKPipeline",
        "pt": ["AutoModelForSpeechSeq2Seq"],
        "type": "multimodal",
    }
}
# The authors keep at least half a second of Whisper frames for very short clips.
MIN_AUDIO_FRAMES = WHISPER_FRAMES_PER_SECOND // 2
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------------------------------------------------
# AV-HuBERT, video only: its ResNet front end (fairseq's module names), then transformers' HuBERT encoder, which
# computes what fairseq's wav2vec 2.0 transformer in AV-HuBERT computes.
# ---------------------------------------------------------------------------------------------------------------------

# Checkpoints saved before the video encoder used transformers' HuBERT encoder have fairseq's names for it, as fairseq
# AV-HuBERT checkpoints do: `from_pretrained` renames them (and `mtsk_convert.avhubert` converts with the same map).
AVHUBERT_FAIRSEQ_RENAMES = {
    r"encoder\.pos_conv\.0\.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    r"encoder\.pos_conv\.0\.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    r"encoder\.pos_conv\.0\.bias": "encoder.pos_conv_embed.conv.bias",
    r"layers\.(\d+)\.self_attn_layer_norm\.": r"layers.\1.layer_norm.",
    r"layers\.(\d+)\.self_attn\.": r"layers.\1.attention.",
    r"layers\.(\d+)\.fc1\.": r"layers.\1.feed_forward.intermediate_dense.",
    r"layers\.(\d+)\.fc2\.": r"layers.\1.feed_forward.output_dense.",
}
# Also applies where the encoder is the `video_encoder` of a Llama-MTSK model. `overwrite`: this module is imported
# again as remote code.
register_checkpoint_conversion_mapping(
    "AVHubertVideoEncoder",
    [WeightRenaming(source, target) for source, target in AVHUBERT_FAIRSEQ_RENAMES.items()],
    overwrite=True,
)


class AVHubertBasicBlock(nn.Module):
    """ResNet-18 basic block with PReLU (or ReLU) activations."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, relu_type: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.PReLU(out_channels) if relu_type == "prelu" else nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.PReLU(out_channels) if relu_type == "prelu" else nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states if self.downsample is None else self.downsample(hidden_states)
        hidden_states = self.relu1(self.bn1(self.conv1(hidden_states)))
        hidden_states = self.bn2(self.conv2(hidden_states))
        return self.relu2(hidden_states + residual)


class AVHubertResNetTrunk(nn.Module):
    """The 2-D ResNet-18 applied to every frame independently; ends with global average pooling."""

    def __init__(self, config: AVHubertConfig):
        super().__init__()
        in_channels = config.frontend_channels
        for stage, out_channels in enumerate(config.resnet_channels, start=1):
            stride = 1 if stage == 1 else 2
            blocks = nn.Sequential(
                AVHubertBasicBlock(in_channels, out_channels, stride, config.resnet_relu_type),
                AVHubertBasicBlock(out_channels, out_channels, 1, config.resnet_relu_type),
            )
            self.add_module(f"layer{stage}", blocks)
            in_channels = out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        frames = self.layer4(self.layer3(self.layer2(self.layer1(frames))))
        return self.avgpool(frames).flatten(1)


class AVHubertResEncoder(nn.Module):
    """3-D convolution stem (5 frames of temporal context) followed by the per-frame ResNet trunk."""

    def __init__(self, config: AVHubertConfig):
        super().__init__()
        channels = config.frontend_channels
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, channels, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(channels),
            nn.PReLU(channels) if config.resnet_relu_type == "prelu" else nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.trunk = AVHubertResNetTrunk(config)

    def forward(self, videos: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """videos: (B, 1, T, H, W); frame_mask: (B, T) bool. Returns (B, T, C) with zeros on padded frames."""
        batch_size, _, num_frames = videos.shape[:3]
        stem = self.frontend3D(videos)  # (B, C, T, H', W')
        frames = stem.transpose(1, 2).flatten(0, 1)  # (B*T, C, H', W')
        # The trunk has no temporal context: run it on real frames only, padded frames stay zero.
        real = frame_mask.flatten()
        real_features = self.trunk(frames[real])  # in the trunk's dtype, which autocast may have changed
        features = real_features.new_zeros(batch_size * num_frames, real_features.shape[-1])
        features[real] = real_features
        return features.view(batch_size, num_frames, -1)


class AVHubertVideoFeatureExtractor(nn.Module):
    """fairseq's `SubModel` for the video stream: ResNet features projected to the transformer width."""

    def __init__(self, config: AVHubertConfig):
        super().__init__()
        self.resnet = AVHubertResEncoder(config)
        self.proj = nn.Linear(config.resnet_channels[-1], config.hidden_size)

    def forward(self, videos: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.resnet(videos, frame_mask))


class AVHubertPreTrainedModel(PreTrainedModel):
    config_class = AVHubertConfig
    config: AVHubertConfig
    base_model_prefix = "video_encoder"
    main_input_name = "pixel_values_videos"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["HubertEncoderLayer", "HubertEncoderLayerStableLayerNorm", "ParametrizedConv1d"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """fairseq's initialisation: He-normal convolutions in the ResNet, BERT-style N(0, 0.02) linear layers, and
        the positional convolution's (weight-normed over its kernel axis, the encoder's only 1-D convolution)."""
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            fan_out = math.prod(module.kernel_size) * module.out_channels
            init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.PReLU):
            init.constant_(module.weight, 0.25)
        elif isinstance(module, nn.Conv1d):
            weight_g, weight_v = module.parametrizations.weight.original0, module.parametrizations.weight.original1
            kernel_size, channels = weight_v.shape[-1], weight_v.shape[0]
            init.normal_(weight_v, mean=0.0, std=math.sqrt(4.0 / (kernel_size * channels)))
            init.copy_(weight_g, weight_v.norm(dim=(0, 1), keepdim=True))
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def save_pretrained(self, save_directory: str | Path, *args, save_original_format: bool = False, **kwargs) -> None:
        # Write our names: by default transformers writes back the names the weights were renamed from at load (and for
        # a new model, the names `AVHUBERT_FAIRSEQ_RENAMES` maps from).
        super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)


class AVHubertVideoEncoder(AVHubertPreTrainedModel):
    """AV-HuBERT used on video alone: the audio half of the fused features is zeros, as in Llama-AVSR."""

    def __init__(self, config: AVHubertConfig):
        super().__init__(config)
        self.feature_extractor_video = AVHubertVideoFeatureExtractor(config)
        self.layer_norm = nn.LayerNorm(2 * config.hidden_size, eps=config.layer_norm_eps)
        self.post_extract_proj = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.dropout_input = nn.Dropout(config.hidden_dropout)
        # HuBERT's two layer orders: pre-LN with a final LayerNorm (AV-HuBERT Large), or post-LN (Base).
        self.encoder = HubertEncoderStableLayerNorm(config) if config.layer_norm_first else HubertEncoder(config)
        self.post_init()

    def forward(
        self, pixel_values_videos: torch.Tensor, pixel_values_videos_mask: torch.Tensor | None = None
    ) -> BaseModelOutput:
        """
        Args:
            pixel_values_videos (`torch.FloatTensor` of shape `(batch, frames, 1, height, width)`): normalised mouth crops.
            pixel_values_videos_mask (`torch.LongTensor` of shape `(batch, frames)`, *optional*): 1 on real frames.
        Returns:
            `BaseModelOutput` whose `last_hidden_state` is `(batch, frames, hidden_size)`, one vector per frame (25 Hz).
        """
        if pixel_values_videos.dim() != 5 or pixel_values_videos.shape[2] != 1:
            raise ValueError(
                f"pixel_values_videos must be (batch, frames, 1, height, width), got {tuple(pixel_values_videos.shape)}"
            )
        batch_size, num_frames = pixel_values_videos.shape[:2]
        if pixel_values_videos_mask is None:
            frame_mask = torch.ones(batch_size, num_frames, dtype=torch.bool, device=pixel_values_videos.device)
        else:
            frame_mask = pixel_values_videos_mask.bool()
        # Padded frames must be zero: the stem's temporal convolution then sees what an unpadded clip sees.
        videos = (pixel_values_videos * frame_mask[:, :, None, None, None]).transpose(1, 2)
        video_features = self.feature_extractor_video(videos, frame_mask)
        features = torch.cat([torch.zeros_like(video_features), video_features], dim=-1)  # (zero audio, video)
        features = self.dropout_input(self.post_extract_proj(self.layer_norm(features)))
        # The encoder zeroes the padded frames, so that its positional convolution sees what an unpadded clip sees, and
        # masks them as keys.
        return self.encoder(features, attention_mask=frame_mask)


# ---------------------------------------------------------------------------------------------------------------------
# Compression and projection
# ---------------------------------------------------------------------------------------------------------------------


def compressed_lengths(lengths: torch.Tensor, rate: int) -> torch.Tensor:
    """Tokens a clip of `lengths` frames gives at `rate`: full windows only, but at least one."""
    return torch.clamp(lengths // rate, min=1)


def compress_frames(
    features: torch.Tensor, lengths: torch.Tensor, rate: int, method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compresses encoder frames by `rate` along time, each sample at its own length.

    `avg_pool` averages every `rate` consecutive frames, `stack` concatenates them along channels; a trailing window
    that is not full is dropped, except that a clip shorter than one window still gives one token (the mean, or the
    zero-filled stack, of its real frames). Padded frames never enter a token.

    Args:
        features: `(batch, frames, dim)` encoder output.
        lengths: `(batch,)` number of real frames per sample, each at least 1.
    Returns:
        `(tokens, token_counts)`: `(batch, max_tokens, dim)` for `avg_pool` or `(batch, max_tokens, dim * rate)` for
        `stack`, and `(batch,)` real token counts.
    """
    batch_size, num_frames, dim = features.shape
    token_counts = compressed_lengths(lengths, rate)
    max_tokens = int(token_counts.max())
    frame_mask = torch.arange(num_frames, device=features.device)[None, :] < lengths[:, None]
    features = features * frame_mask.unsqueeze(-1).to(features.dtype)
    target_frames = max_tokens * rate
    if target_frames > num_frames:
        features = F.pad(features, (0, 0, 0, target_frames - num_frames))
        frame_mask = F.pad(frame_mask, (0, target_frames - num_frames))
    windows = features[:, :target_frames].reshape(batch_size, max_tokens, rate, dim)
    if method == "stack":
        return windows.reshape(batch_size, max_tokens, rate * dim), token_counts
    real_per_window = frame_mask[:, :target_frames].reshape(batch_size, max_tokens, rate).sum(-1, keepdim=True)
    return windows.sum(2) / real_per_window.clamp(min=1).to(features.dtype), token_counts


class LlamaMTSKProjector(nn.Module):
    """Linear -> ReLU -> Linear (-> LayerNorm): one per modality and compression rate."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, layer_norm: bool):
        super().__init__()
        self.linear_1 = nn.Linear(input_size, hidden_size)
        self.act = nn.ReLU()
        self.linear_2 = nn.Linear(hidden_size, output_size)
        self.layer_norm = nn.LayerNorm(output_size) if layer_norm else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.linear_2(self.act(self.linear_1(tokens)))
        return tokens if self.layer_norm is None else self.layer_norm(tokens)


# ---------------------------------------------------------------------------------------------------------------------
# Matryoshka LoRA: one LLM pass serves every scale, each batch row routed to its own adapters.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRARoute:
    """Which inputs of an LLM projection one adapter applies to: every input (`index` None), the batch rows in `index`
    (one scale per row, as in `generate`), or the positions in `index` of the flattened (batch x sequence) input (one
    scale per token, as in the packed Matryoshka step)."""

    index: torch.Tensor | None = None
    per_token: bool = False


# The adapters of the LLM call in progress, by adapter name. A context variable, so every thread (and asyncio task)
# sees only the routing of its own call, and outside a call nothing is routed: the LLM computes as the plain model.
_ACTIVE_LORA_ROUTES: ContextVar[dict[str, LoRARoute] | None] = ContextVar("llama_mtsk_lora_routes", default=None)


@contextmanager
def use_lora_routes(routes: dict[str, LoRARoute] | None) -> Iterator[None]:
    """Routes every `MatryoshkaLoRALinear` for the LLM calls inside the `with` block, then restores what was before."""
    token = _ACTIVE_LORA_ROUTES.set(routes)
    try:
        yield
    finally:
        _ACTIVE_LORA_ROUTES.reset(token)


def checkpoint_with_lora_routes(checkpoint_function: Callable) -> Callable:
    """Wraps an activation-checkpointing function so that the recomputation in the backward pass (which may run on
    another thread, and always after the forward's `with use_lora_routes(...)` block has closed) sees the routes the
    forward pass saw."""

    def checkpoint(function: Callable, *args, **kwargs):
        routes = _ACTIVE_LORA_ROUTES.get()

        def routed_function(*inner_args, **inner_kwargs):
            with use_lora_routes(routes):
                return function(*inner_args, **inner_kwargs)

        return checkpoint_function(routed_function, *args, **kwargs)

    return checkpoint


class MatryoshkaLoRALinear(nn.Linear):
    """A frozen LLM projection plus low-rank adapters (`lora_A` down, `lora_B` up, scaled by `lora_alpha / r`), where
    each batch row uses the adapters its scale names. Keeps the base `weight`/`bias` keys of the plain projection, so a
    plain LLM checkpoint loads into it unchanged."""

    def __init__(self, base: nn.Linear, adapter_names: list[str], rank: int, scaling: float):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.ModuleDict({name: nn.Linear(base.in_features, rank, bias=False, **factory) for name in adapter_names})
        self.lora_B = nn.ModuleDict({name: nn.Linear(rank, base.out_features, bias=False, **factory) for name in adapter_names})
        self.scaling = scaling

    def reset_adapters(self, lora_init: str, std: float = 0.02) -> None:
        """Initialises every adapter that was not loaded from a checkpoint (see `LlamaMTSKConfig.lora_init`)."""
        for name in self.lora_A:
            down, up = self.lora_A[name].weight, self.lora_B[name].weight
            if lora_init == "gaussian":
                init.normal_(down, mean=0.0, std=std)
                init.normal_(up, mean=0.0, std=std)
            else:
                kaiming, zero = (down, up) if lora_init == "peft" else (up, down)
                init.kaiming_uniform_(kaiming, a=math.sqrt(5))
                init.zeros_(zero)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = F.linear(hidden_states, self.weight, self.bias)
        routes = _ACTIVE_LORA_ROUTES.get()
        if not routes:
            return output
        # The adapters run on the flattened (batch x sequence) tokens: one 2-D product, whatever the batch layout.
        inputs = hidden_states.reshape(-1, self.in_features)
        flat_output = output.reshape(-1, self.out_features)
        for name, route in routes.items():
            down, up = self.lora_A[name], self.lora_B[name]
            if route.index is None:
                flat_output = flat_output + up(down(inputs)) * self.scaling
                continue
            if route.per_token:
                positions = route.index
            else:  # the rows in `route.index`, every position of each
                length = hidden_states.shape[1]
                positions = (route.index[:, None] * length + torch.arange(length, device=route.index.device)).reshape(-1)
            update = (up(down(inputs[positions])) * self.scaling).to(flat_output.dtype)
            flat_output = flat_output.index_add(0, positions, update)
        return flat_output.view_as(output)


def _media_device(*media: torch.Tensor | None) -> torch.device:
    """The device of the first media input given."""
    return next(tensor for tensor in media if tensor is not None).device


def lora_adapter_names(config: LlamaMTSKConfig) -> list[str]:
    """The adapters a strategy defines: MS one global, SS one per scale, MSS both, none nothing."""
    per_scale = [config.scale_name(scale) for scale in config.scales]
    return {"ms": ["global"], "ss": per_scale, "mss": ["global", *per_scale], "none": []}[config.lora_strategy]


# ---------------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------------


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices whose lengths sum to at most `capacity`: longest first, each into the first bin it fits."""
    bins: list[list[int]] = []
    room: list[int] = []
    for item in sorted(range(len(lengths)), key=lambda item: -lengths[item]):
        target = next((index for index, free in enumerate(room) if free >= lengths[item]), None)
        if target is None:
            bins.append([])
            room.append(capacity)
            target = len(bins) - 1
        bins[target].append(item)
        room[target] -= lengths[item]
    return bins


def pack_sequences(
    inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, scale_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packs right-padded sequences into as few rows of the same length as fit (first fit, longest first).

    The Matryoshka batch holds every scale of every sample; the coarse scales' sequences are much shorter than the
    finest one, so as padded rows most of the batch would be padding. Packed, the LLM computes on real tokens. Each
    sequence keeps its own positions (restarting at 0); the rest of a row is filler with positions of its own, so it
    forms its own attention block, label -100 and scale -1.

    Returns `(inputs_embeds, position_ids, labels, token_scales)`, each with one row per packed row.
    """
    lengths = attention_mask.sum(-1).tolist()
    longest = attention_mask.shape[1]
    # Rows as long as the longest sequence, or twice that when it packs tighter: attention is computed over whole
    # rows, but the rest of the LLM only over tokens, so fewer filler tokens win.
    bins, capacity = min(
        ((first_fit(lengths, capacity), capacity) for capacity in (longest, 2 * longest)),
        key=lambda packing: len(packing[0]) * packing[1],
    )
    source_row = torch.full((len(bins), capacity), -1, dtype=torch.long)
    source_column = torch.zeros(len(bins), capacity, dtype=torch.long)
    position_ids = torch.zeros(len(bins), capacity, dtype=torch.long)
    for index, rows in enumerate(bins):
        offset = 0
        for row in rows:
            span = slice(offset, offset + lengths[row])
            source_row[index, span] = row
            source_column[index, span] = torch.arange(lengths[row])
            position_ids[index, span] = torch.arange(lengths[row])
            offset += lengths[row]
        position_ids[index, offset:] = torch.arange(capacity - offset)
    device = inputs_embeds.device
    source_row, source_column, position_ids = source_row.to(device), source_column.to(device), position_ids.to(device)
    real = source_row >= 0
    gather_row = source_row.clamp(min=0)
    packed_embeds = inputs_embeds[gather_row, source_column] * real.unsqueeze(-1).to(inputs_embeds.dtype)
    packed_labels = labels[gather_row, source_column].masked_fill(~real, IGNORE_INDEX)
    token_scales = scale_index[gather_row].masked_fill(~real, -1)
    return packed_embeds, position_ids, packed_labels, token_scales


@dataclass
class LlamaMTSKCausalLMOutput(CausalLMOutputWithPast):
    """The LLM's output plus, for the Matryoshka objective, each scale's loss in `config.scales` order: audio-major,
    (4, 2), (4, 5), (16, 2), (16, 5) for AVSR, where the authors' loop runs over video rates outermost.

    In the Matryoshka objective (`labels` given, `scale=None`) `logits` is `None`: only transcript positions are
    projected to the vocabulary, which is what keeps memory flat with the number of scales."""

    scale_losses: torch.Tensor | None = None


@dataclass
class LlamaMTSKGenerateOutput(ModelOutput):
    """What `generate(..., scale="cascade", return_dict_in_generate=True)` returns.

    Args:
        sequences: the generated tokens, right-padded with the pad token.
        scales: per row, the scale its transcript was decoded at.
        llm_tokens: per row, the LLM tokens it cost over every pass: input tokens plus generated tokens.
        confidences: per row, the confidence of its transcript (see `cascade_confidence`).
    """

    sequences: torch.LongTensor | None = None
    scales: list[tuple[int | None, int | None]] | None = None
    llm_tokens: torch.LongTensor | None = None
    confidences: torch.FloatTensor | None = None


@dataclass
class _Tokens:
    """Projected LLM tokens of one modality for every row: `(rows, max_tokens, hidden)` and `(rows,)` real counts."""

    embeddings: torch.Tensor
    counts: torch.Tensor


class LlamaMTSKPreTrainedModel(PreTrainedModel):
    config_class = LlamaMTSKConfig
    config: LlamaMTSKConfig
    base_model_prefix = ""
    # `generate` builds `inputs_embeds` from the media and decodes token ids from there.
    main_input_name = "input_ids"
    input_modalities = ("audio", "video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The Matryoshka loss averages per-scale token means itself; the Trainer must not renormalise it.
    accepts_loss_kwargs = False


class LlamaMTSKForConditionalGeneration(LlamaMTSKPreTrainedModel, GenerationMixin):
    """Llama-MTSK for ASR, VSR and AVSR.

    The LLM input for a sample is `[BOS] <audio> A_1..A_n </audio> <video> V_1..V_m </video> PROMPT transcript [EOS]`
    (blocks of unused modalities left out), where the audio and video tokens come from the encoder output compressed
    at the sample's scale and projected by that rate's projector, and the LLM's q/v projections add the LoRA
    adapters of that scale. Each sample keeps its own audio and video length: no padding frame becomes an LLM token.
    """

    def __init__(self, config: LlamaMTSKConfig):
        super().__init__(config)
        text_hidden = config.text_config.hidden_size
        if config.uses_audio:
            self.audio_encoder = WhisperEncoder(config.audio_config)
            audio_dim = config.audio_config.d_model
            self.audio_projectors = nn.ModuleDict(
                {str(rate): self._projector(audio_dim, rate, text_hidden) for rate in config.audio_rates}
            )
        if config.uses_video:
            self.video_encoder = AVHubertVideoEncoder(config.video_config)
            video_dim = config.video_config.hidden_size
            self.video_projectors = nn.ModuleDict(
                {str(rate): self._projector(video_dim, rate, text_hidden) for rate in config.video_rates}
            )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self._add_lora_adapters()
        self.post_init()
        if self.generation_config.max_new_tokens is None:
            self.generation_config.max_new_tokens = 32  # the authors' decoding limit

    def _projector(self, encoder_dim: int, rate: int, text_hidden: int) -> LlamaMTSKProjector:
        input_size = encoder_dim * rate if self.config.compression == "stack" else encoder_dim
        return LlamaMTSKProjector(
            input_size, self.config.projector_hidden_size, text_hidden, self.config.projector_layer_norm
        )

    def _add_lora_adapters(self) -> None:
        adapter_names = lora_adapter_names(self.config)
        if not adapter_names:
            return
        targets = set(self.config.lora_target_modules)
        replaced = 0
        for parent in list(self.language_model.modules()):
            for child_name, child in list(parent.named_children()):
                if child_name in targets and type(child) is nn.Linear:
                    lora = MatryoshkaLoRALinear(
                        child,
                        adapter_names,
                        rank=self.config.lora_r,
                        scaling=self.config.lora_alpha / self.config.lora_r,
                    )
                    setattr(parent, child_name, lora)
                    replaced += 1
        if replaced == 0:
            raise ValueError(
                f"lora_target_modules {self.config.lora_target_modules} matched no linear layer of the LLM "
                f"({type(self.language_model).__name__})"
            )

    def freeze_for_training(self) -> "LlamaMTSKForConditionalGeneration":
        """Freezes what the config says training leaves fixed, as in the paper by default: the LLM except its LoRA
        adapters (`freeze_language_model`), Whisper (`freeze_audio_encoder`) and AV-HuBERT (`freeze_video_encoder`).
        The projectors always train.

        Training code calls it once, before building the optimizer, as it calls Wav2Vec2's `freeze_feature_encoder`;
        the model never calls it itself, so a model built or loaded with `from_pretrained` has every parameter
        trainable, like any transformers model. Returns the model."""
        for name, parameter in self.language_model.named_parameters():
            parameter.requires_grad_(not self.config.freeze_language_model or ".lora_A." in name or ".lora_B." in name)
        if self.config.uses_audio:
            self.audio_encoder.requires_grad_(not self.config.freeze_audio_encoder)
        if self.config.uses_video:
            self.video_encoder.requires_grad_(not self.config.freeze_video_encoder)
        return self

    def initialize_weights(self) -> None:
        super().initialize_weights()
        if self.config.uses_audio:
            # In a custom-code model transformers skips modules without parameters of their own, and with them
            # Whisper's own init of its sinusoidal positions (left N(0, 0.02), a from-scratch encoder barely learns).
            self.audio_encoder._init_weights(self.audio_encoder)
        # The LLM's own `_init_weights` treats adapters as plain linear layers; give them the configured init.
        for module in self.language_model.modules():
            if isinstance(module, MatryoshkaLoRALinear):
                module.reset_adapters(self.config.lora_init, std=self.config.text_config.initializer_range)

    def save_pretrained(self, save_directory: str | Path, *args, save_original_format: bool = False, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, plus what a checkpoint needs to run anywhere with `trust_remote_code`: the
        auto classes (AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor) in `config.auto_map`, the
        automatic-speech-recognition pipeline in `config.custom_pipelines`, and the processor, pipeline and mouth-ROI
        modules beside the model code. Every checkpoint the Trainer writes is therefore complete too. The weights keep
        this model's names, not the ones a load renamed them from (`AVHUBERT_FAIRSEQ_RENAMES`)."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        self.config.custom_pipelines = CUSTOM_PIPELINES
        super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)
        for module_file in SIBLING_MODULES:
            source = Path(__file__).with_name(module_file)
            if not source.exists():
                # Loaded through remote code: transformers fetched only the modules it imported. Take the rest from
                # the checkpoint this model came from.
                if not self.config.name_or_path:
                    raise FileNotFoundError(f"The remote code is incomplete: {module_file} is missing beside {__file__}")
                source = Path(HF_MODULES_CACHE) / get_cached_module_file(self.config.name_or_path, module_file)
            shutil.copyfile(source, Path(save_directory) / module_file)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    # -- scales and routing ------------------------------------------------------------------------------------------

    def _row_scale_indices(self, scale, batch_size: int, device: torch.device) -> torch.Tensor:
        """Index into `config.scales` for every row. `scale` is one scale for the whole batch, a list with one scale
        per row (a mixed-scale batch), or None for the finest scale."""
        scales = self.config.scales
        single_modality = self.config.modality != "audiovisual"
        per_row = isinstance(scale, list) and all(
            isinstance(row_scale, (tuple, list)) or (single_modality and isinstance(row_scale, int)) for row_scale in scale
        )
        if scale is None:
            indices = [0] * batch_size
        elif per_row:
            if len(scale) != batch_size:
                raise ValueError(f"scale lists {len(scale)} per-row scales for a batch of {batch_size} samples")
            indices = [scales.index(self.config.normalize_scale(row_scale)) for row_scale in scale]
        else:
            indices = [scales.index(self.config.normalize_scale(scale))] * batch_size
        return torch.tensor(indices, dtype=torch.long, device=device)

    def lora_routes_for(self, scale_index: torch.Tensor) -> dict[str, LoRARoute]:
        """The adapters of each row's (`scale_index` of shape `(rows,)`) or each token's (`(rows, sequence_length)`,
        packed rows of several scales) scale, as indices into `config.scales`; -1 marks filler tokens, which get no
        scale adapter. Use with `use_lora_routes(...)` around an LLM call."""
        strategy = self.config.lora_strategy
        routes: dict[str, LoRARoute] = {}
        if strategy in ("ms", "mss"):
            routes["global"] = LoRARoute()  # filler tokens may use it too: nothing reads their outputs
        if strategy in ("ss", "mss"):
            per_token = scale_index.dim() == 2
            flat = scale_index.reshape(-1)
            present = torch.unique(flat).tolist()
            for index in (index for index in present if index >= 0):
                name = self.config.scale_name(self.config.scales[index])
                positions = None if len(present) == 1 else torch.nonzero(flat == index).flatten()
                routes[name] = LoRARoute(positions, per_token)
        return routes

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Callable = torch.utils.checkpoint.checkpoint, **kwargs
    ) -> None:
        # The recomputed LLM layers must see the LoRA routes of the forward pass they recompute.
        super()._set_gradient_checkpointing(
            enable=enable, gradient_checkpointing_func=checkpoint_with_lora_routes(gradient_checkpointing_func), **kwargs
        )

    # -- encoders and projection -------------------------------------------------------------------------------------

    def audio_frame_lengths(self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None) -> torch.Tensor:
        """Real Whisper output frames per sample (`WHISPER_FRAMES_PER_SECOND`, at least `MIN_AUDIO_FRAMES` as in the
        authors' code), after checking that the features fit this model's Whisper window."""
        expected = self.config.audio_config.num_mel_bins, 2 * self.config.audio_config.max_source_positions
        if input_features.dim() != 3 or tuple(input_features.shape[1:]) != expected:
            raise ValueError(
                f"input_features must be (batch, {expected[0]} mel bins, {expected[1]} frames) for this model's "
                f"Whisper encoder, got {tuple(input_features.shape)}"
            )
        batch_size = input_features.shape[0]
        if input_features_mask is None:
            mel_frames = torch.full((batch_size,), expected[1], device=input_features.device)
        else:
            if tuple(input_features_mask.shape) != (batch_size, expected[1]):
                raise ValueError(
                    f"input_features_mask must be (batch, {expected[1]}), got {tuple(input_features_mask.shape)}"
                )
            mel_frames = input_features_mask.sum(-1)
        return torch.clamp(mel_frames // 2, min=MIN_AUDIO_FRAMES, max=self.config.audio_config.max_source_positions)

    def video_frame_lengths(
        self, pixel_values_videos: torch.Tensor, pixel_values_videos_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Real video frames per sample, each at least one."""
        if pixel_values_videos_mask is None:
            lengths = torch.full(
                (pixel_values_videos.shape[0],), pixel_values_videos.shape[1], device=pixel_values_videos.device
            )
        else:
            if tuple(pixel_values_videos_mask.shape) != tuple(pixel_values_videos.shape[:2]):
                raise ValueError(
                    f"pixel_values_videos_mask must be (batch, frames) = {tuple(pixel_values_videos.shape[:2])}, "
                    f"got {tuple(pixel_values_videos_mask.shape)}"
                )
            lengths = pixel_values_videos_mask.sum(-1)
        if bool((lengths == 0).any()):
            raise ValueError(f"Every video needs at least one frame; frames per sample: {lengths.tolist()}")
        return lengths

    def count_llm_input_tokens(
        self,
        scale: int | tuple,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        pixel_values_videos_mask: torch.Tensor | None = None,
        audio_encoder_outputs: torch.Tensor | None = None,
        audio_encoder_outputs_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens each sample feeds the LLM at `scale` before the transcript (BOS, modality blocks with their
        delimiters, prompt), without running any encoder: the number that sets the LLM's compute."""
        audio_rate, video_rate = self.config.normalize_scale(scale)
        self._check_inputs(input_features, pixel_values_videos, None, None, audio_encoder_outputs)
        prompt_length = len(self.config.prompt_token_ids or [])
        tokens = None
        if audio_rate is not None:
            if audio_encoder_outputs is not None:
                lengths = self._encoder_output_lengths(audio_encoder_outputs_mask)
            else:
                lengths = self.audio_frame_lengths(input_features, input_features_mask)
            tokens = 2 + compressed_lengths(lengths, audio_rate)
        if video_rate is not None:
            lengths = self.video_frame_lengths(pixel_values_videos, pixel_values_videos_mask)
            video_tokens = 2 + compressed_lengths(lengths, video_rate)
            tokens = video_tokens if tokens is None else tokens + video_tokens
        return 1 + tokens + prompt_length

    def llm_flops_per_token(self) -> float:
        """Estimated forward FLOPs per LLM input token: 2 x the base LLM's parameters, leaving out the input
        embedding (a lookup) and the LoRA adapters (a few percent at most); a tied LM head is the embedding used as a
        real product and stays in. The rule behind the paper's TFLOPs-per-scale table."""
        embedding = self.get_input_embeddings().weight
        parameters = sum(  # named_parameters yields tied weights once
            parameter.numel() for name, parameter in self.language_model.named_parameters() if ".lora_" not in name
        )
        tied = self.get_output_embeddings().weight is embedding
        return 2.0 * (parameters - (0 if tied else embedding.numel()))

    def encode_audio(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper over its whole window: the outputs `(batch, frames, d)` and each clip's real length. What
        `audio_encoder_outputs` / `audio_encoder_outputs_mask` take, so that a frozen encoder's outputs can be computed
        once and reused for every training epoch."""
        lengths = self.audio_frame_lengths(input_features, input_features_mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_audio_encoder):
            features = self.audio_encoder(input_features.to(self.audio_encoder.dtype)).last_hidden_state
        return features, lengths

    def precompute_audio_encoder_outputs(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """`encode_audio` as the inputs `forward` and `generate` take instead of `input_features`:
        `audio_encoder_outputs` and `audio_encoder_outputs_mask` (1 on each clip's real frames). For decoding the same
        clips several times (at several scales, with and without noise in the video) with one audio encoder pass."""
        features, lengths = self.encode_audio(input_features, input_features_mask)
        frames = torch.arange(features.shape[1], device=features.device)
        return {"audio_encoder_outputs": features, "audio_encoder_outputs_mask": (frames[None, :] < lengths[:, None]).long()}

    def _encoder_output_lengths(self, audio_encoder_outputs_mask: torch.Tensor | None) -> torch.Tensor:
        """Real frames per sample of precomputed audio encoder outputs (their mask is required: the outputs of
        different clips are cut to different lengths and zero-padded)."""
        if audio_encoder_outputs_mask is None:
            raise ValueError("`audio_encoder_outputs` needs `audio_encoder_outputs_mask` (1 on each clip's real frames)")
        lengths = audio_encoder_outputs_mask.sum(-1)
        if bool((lengths == 0).any()):
            raise ValueError(f"Every clip needs at least one audio encoder frame; frames per sample: {lengths.tolist()}")
        return lengths

    def _encode_video(self, pixel_values_videos: torch.Tensor, pixel_values_videos_mask: torch.Tensor | None):
        lengths = self.video_frame_lengths(pixel_values_videos, pixel_values_videos_mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_video_encoder):
            features = self.video_encoder(
                pixel_values_videos.to(self.video_encoder.dtype), pixel_values_videos_mask
            ).last_hidden_state
        return features, lengths

    def _project(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        rates: list[int],
        sample_index: torch.Tensor,
        projectors: nn.ModuleDict,
    ) -> _Tokens:
        """LLM tokens for every row: row `r` holds sample `sample_index[r]` compressed at `rates[r]`. Each rate is
        compressed and projected once for the samples that need it, however many scales share it."""
        rows = len(rates)
        per_rate = {}
        for rate in sorted(set(rates)):
            row_ids = torch.tensor([r for r in range(rows) if rates[r] == rate], device=features.device)
            samples, row_to_sample = torch.unique(sample_index[row_ids], return_inverse=True)
            tokens, counts = compress_frames(features[samples], lengths[samples], rate, self.config.compression)
            per_rate[rate] = (row_ids, projectors[str(rate)](tokens), counts, row_to_sample)
        hidden = self.config.text_config.hidden_size
        max_tokens = max(tokens.shape[1] for _, tokens, _, _ in per_rate.values())
        some_tokens = next(iter(per_rate.values()))[1]
        embeddings = some_tokens.new_zeros(rows, max_tokens, hidden)
        counts = torch.zeros(rows, dtype=torch.long, device=features.device)
        for row_ids, tokens, rate_counts, row_to_sample in per_rate.values():
            embeddings[row_ids, : tokens.shape[1]] = tokens[row_to_sample]
            counts[row_ids] = rate_counts[row_to_sample]
        return _Tokens(embeddings, counts)

    # -- sequence building -------------------------------------------------------------------------------------------

    def _special_token_id(self, name: str) -> int:
        token_id = getattr(self.config, name)
        if token_id is None:
            raise ValueError(
                f"config.{name} is not set: assemble the model with its tokenizer so the special tokens are known"
            )
        return token_id

    def _build_sequences(
        self,
        audio: _Tokens | None,
        video: _Tokens | None,
        sample_index: torch.Tensor,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        padding_side: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Packs `[BOS] <audio> A </audio> <video> V </video> PROMPT transcript` for every row into a padded batch.

        Returns `(inputs_embeds, attention_mask, labels)`; labels are -100 everywhere but on the transcript (which
        ends with EOS), or None without transcript."""
        rows = sample_index.shape[0]
        device = sample_index.device
        one_each = torch.ones(rows, dtype=torch.long, device=device)

        def special(name: str) -> torch.Tensor:
            return torch.full((rows, 1), self._special_token_id(name), dtype=torch.long, device=device)

        # Each piece: [token ids or None, embeddings or None, length per row, labels or None].
        pieces: list[list] = [[special("bos_token_id"), None, one_each, None]]
        if audio is not None:
            pieces += [
                [special("audio_start_token_id"), None, one_each, None],
                [None, audio.embeddings, audio.counts, None],
                [special("audio_end_token_id"), None, one_each, None],
            ]
        if video is not None:
            pieces += [
                [special("video_start_token_id"), None, one_each, None],
                [None, video.embeddings, video.counts, None],
                [special("video_end_token_id"), None, one_each, None],
            ]
        if input_ids is None:
            if self.config.prompt_token_ids is None:
                raise ValueError("config.prompt_token_ids is not set and no prompt input_ids were given")
            prompt = torch.tensor(self.config.prompt_token_ids, dtype=torch.long, device=device).expand(rows, -1)
            prompt_lengths = torch.full((rows,), prompt.shape[1], dtype=torch.long, device=device)
        else:
            prompt = input_ids[sample_index]
            prompt_lengths = (
                attention_mask[sample_index].sum(-1) if attention_mask is not None else torch.full_like(sample_index, prompt.shape[1])
            )
        pieces.append([prompt, None, prompt_lengths, None])
        if labels is not None:
            transcript = labels[sample_index]
            pieces.append([transcript.clamp(min=0), None, (transcript != IGNORE_INDEX).sum(-1), transcript])
        # One embedding lookup for every token piece: a trainable embedding's backward writes a vocabulary-sized
        # gradient per lookup.
        token_ids = [piece[0] for piece in pieces if piece[0] is not None]
        embedded = torch.split(
            self.get_input_embeddings()(torch.cat(token_ids, dim=1)), [ids.shape[1] for ids in token_ids], dim=1
        )
        token_pieces = iter(embedded)
        pieces = [
            (next(token_pieces) if ids is not None else values, piece_lengths, piece_labels)
            for ids, values, piece_lengths, piece_labels in pieces
        ]

        lengths = torch.stack([piece_lengths for _, piece_lengths, _ in pieces], dim=1)  # (rows, pieces)
        totals = lengths.sum(1)
        total_length = int(totals.max())
        offsets = total_length - totals if padding_side == "left" else torch.zeros_like(totals)
        starts = offsets[:, None] + torch.cumsum(lengths, dim=1) - lengths

        first = pieces[0][0]
        inputs_embeds = first.new_zeros(rows, total_length, first.shape[-1])
        sequence_labels = torch.full((rows, total_length), IGNORE_INDEX, dtype=torch.long, device=device)
        for index, (values, piece_lengths, piece_labels) in enumerate(pieces):
            positions = torch.arange(values.shape[1], device=device)
            valid = positions[None, :] < piece_lengths[:, None]
            row_ids, column_ids = torch.nonzero(valid, as_tuple=True)
            target_columns = starts[row_ids, index] + column_ids
            inputs_embeds[row_ids, target_columns] = values[row_ids, column_ids].to(inputs_embeds.dtype)
            if piece_labels is not None:
                sequence_labels[row_ids, target_columns] = piece_labels[row_ids, column_ids]
        columns = torch.arange(total_length, device=device)[None, :]
        sequence_mask = ((columns >= offsets[:, None]) & (columns < (offsets + totals)[:, None])).long()
        return inputs_embeds, sequence_mask, sequence_labels if labels is not None else None

    def _check_inputs(
        self,
        input_features: torch.Tensor | None,
        pixel_values_videos: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        labels: torch.Tensor | None,
        audio_encoder_outputs: torch.Tensor | None = None,
    ) -> int:
        """Checks that the modality's inputs are present and agree on the batch size; returns it."""
        if input_features is not None and audio_encoder_outputs is not None:
            raise ValueError("Give the audio as `input_features` or as `audio_encoder_outputs`, not both")
        if self.config.uses_audio and input_features is None and audio_encoder_outputs is None:
            raise ValueError(f"This {self.config.modality} model needs `input_features` (audio) and got none")
        if self.config.uses_video and pixel_values_videos is None:
            raise ValueError(f"This {self.config.modality} model needs `pixel_values_videos` (video) and got none")
        if not self.config.uses_audio and (input_features is not None or audio_encoder_outputs is not None):
            raise ValueError(f"This {self.config.modality} model has no audio encoder but got audio inputs")
        if not self.config.uses_video and pixel_values_videos is not None:
            raise ValueError(f"This {self.config.modality} model has no video encoder but got `pixel_values_videos`")
        sizes = {
            name: tensor.shape[0]
            for name, tensor in [
                ("input_features", input_features),
                ("audio_encoder_outputs", audio_encoder_outputs),
                ("pixel_values_videos", pixel_values_videos),
                ("input_ids", input_ids),
                ("labels", labels),
            ]
            if tensor is not None
        }
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Inputs disagree on the batch size: {sizes}")
        return next(iter(sizes.values()))

    def build_inputs_embeds(
        self,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        pixel_values_videos_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        scale_index: torch.Tensor | None = None,
        sample_index: torch.Tensor | None = None,
        padding_side: str = "right",
        audio_encoder_outputs: torch.Tensor | None = None,
        audio_encoder_outputs_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Encodes the media once and builds the LLM input of every row (row `r` = sample `sample_index[r]` at scale
        `config.scales[scale_index[r]]`). Returns `(inputs_embeds, attention_mask, labels)`."""
        batch_size = self._check_inputs(input_features, pixel_values_videos, input_ids, labels, audio_encoder_outputs)
        device = _media_device(input_features, audio_encoder_outputs, pixel_values_videos)
        if sample_index is None:
            sample_index = torch.arange(batch_size, device=device)
        if scale_index is None:
            scale_index = torch.zeros_like(sample_index)
        audio, video = self._modality_tokens(
            input_features, input_features_mask, pixel_values_videos, pixel_values_videos_mask,
            audio_encoder_outputs, audio_encoder_outputs_mask, scale_index, sample_index,
        )
        return self._build_sequences(audio, video, sample_index, input_ids, attention_mask, labels, padding_side)

    def _modality_tokens(
        self,
        input_features: torch.Tensor | None,
        input_features_mask: torch.Tensor | None,
        pixel_values_videos: torch.Tensor | None,
        pixel_values_videos_mask: torch.Tensor | None,
        audio_encoder_outputs: torch.Tensor | None,
        audio_encoder_outputs_mask: torch.Tensor | None,
        scale_index: torch.Tensor,
        sample_index: torch.Tensor,
    ) -> tuple[_Tokens | None, _Tokens | None]:
        """The projected audio and video tokens of every row (`None` for a modality the model does not use)."""
        row_scales = [self.config.scales[index] for index in scale_index.tolist()]
        audio = video = None
        if self.config.uses_audio:
            if audio_encoder_outputs is not None:
                features, lengths = audio_encoder_outputs, self._encoder_output_lengths(audio_encoder_outputs_mask)
            else:
                features, lengths = self.encode_audio(input_features, input_features_mask)
            rates = [audio_rate for audio_rate, _ in row_scales]
            audio = self._project(features, lengths, rates, sample_index, self.audio_projectors)
        if self.config.uses_video:
            features, lengths = self._encode_video(pixel_values_videos, pixel_values_videos_mask)
            rates = [video_rate for _, video_rate in row_scales]
            video = self._project(features, lengths, rates, sample_index, self.video_projectors)
        return audio, video

    # -- forward and generate ----------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        pixel_values_videos_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        scale: int | tuple | list | None = None,
        scale_index: torch.LongTensor | None = None,
        audio_encoder_outputs: torch.FloatTensor | None = None,
        audio_encoder_outputs_mask: torch.Tensor | None = None,
        audio_ctc_weight: float = 0.0,
        inputs_embeds: torch.FloatTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> LlamaMTSKCausalLMOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, prompt_length)`, *optional*):
                With media: the prompt that follows the modality blocks (default `config.prompt_token_ids`), with
                `attention_mask` marking its real tokens. Without media: plain token ids for the LLM (text only, or the
                decoding steps of `generate`).
            input_features (`torch.FloatTensor` of shape `(batch, mel_bins, frames)`, *optional*):
                Whisper log-mel features of the standardised waveform, padded to the Whisper window.
            input_features_mask (`torch.LongTensor` of shape `(batch, frames)`, *optional*): 1 on real mel frames.
            pixel_values_videos (`torch.FloatTensor` of shape `(batch, frames, 1, height, width)`, *optional*):
                Normalised grayscale mouth crops at 25 fps, zero-padded in time.
            pixel_values_videos_mask (`torch.LongTensor` of shape `(batch, frames)`, *optional*): 1 on real frames.
            labels (`torch.LongTensor` of shape `(batch, transcript_length)`, *optional*):
                Transcript token ids ending with EOS, right-padded with -100. With `scale=None` this trains the
                Matryoshka objective: every scale's sequences in one LLM pass, loss = mean of per-scale token means.
            scale (`int`, `tuple` or `list`, *optional*):
                `(audio_rate, video_rate)` for the whole batch (an int for a single-modality model), or a list with one
                scale per row. Defaults to the finest scale, except in the Matryoshka objective.
            scale_index (`torch.LongTensor` of shape `(batch,)`, *optional*):
                Per-row index into `config.scales`; `generate` uses it to keep each row's LoRA routing while decoding.
            audio_encoder_outputs (`torch.FloatTensor` of shape `(batch, frames, d)`, *optional*):
                The audio encoder's outputs instead of `input_features` (see `encode_audio`), zero-padded, with
                `audio_encoder_outputs_mask` (`(batch, frames)`, 1 on real frames).
            audio_ctc_weight (`float`, *optional*, defaults to 0):
                Matryoshka objective only: adds this weight times a CTC loss that reads each projected audio token as
                a word piece (its similarity to the LLM's input embeddings of the batch's transcript tokens, the pad
                token's as the blank). It pulls the audio tokens towards the embeddings the frozen LLM already reads,
                which shortens the search for that alignment; it is a training aid, not part of the paper's method.
        """
        kwargs.pop("num_items_in_batch", None)
        media = {
            "input_features": input_features,
            "input_features_mask": input_features_mask,
            "pixel_values_videos": pixel_values_videos,
            "pixel_values_videos_mask": pixel_values_videos_mask,
            "audio_encoder_outputs": audio_encoder_outputs,
            "audio_encoder_outputs_mask": audio_encoder_outputs_mask,
        }
        has_media = any(value is not None for value in (input_features, pixel_values_videos, audio_encoder_outputs))
        if not has_media:
            if input_ids is None and inputs_embeds is None:
                raise ValueError(
                    "forward needs media (`input_features` and/or `pixel_values_videos`), or `input_ids`/`inputs_embeds`"
                )
            tokens = input_ids if input_ids is not None else inputs_embeds
            if scale_index is None:
                scale_index = self._row_scale_indices(scale, tokens.shape[0], tokens.device)
            with use_lora_routes(self.lora_routes_for(scale_index)):
                outputs = self.language_model(
                    input_ids=input_ids,
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    labels=labels,
                    logits_to_keep=logits_to_keep,
                    **kwargs,
                )
            return LlamaMTSKCausalLMOutput(**outputs)

        batch_size = self._check_inputs(input_features, pixel_values_videos, input_ids, labels, audio_encoder_outputs)
        device = _media_device(input_features, audio_encoder_outputs, pixel_values_videos)
        if labels is not None and scale is None and scale_index is None:
            return self._matryoshka_forward(media, input_ids, attention_mask, labels, audio_ctc_weight, **kwargs)

        if scale_index is None:
            scale_index = self._row_scale_indices(scale, batch_size, device)
        inputs_embeds, sequence_mask, sequence_labels = self.build_inputs_embeds(
            **media, input_ids=input_ids, attention_mask=attention_mask, labels=labels, scale_index=scale_index
        )
        with use_lora_routes(self.lora_routes_for(scale_index)):
            outputs = self.language_model(
                inputs_embeds=inputs_embeds, attention_mask=sequence_mask, logits_to_keep=logits_to_keep, **kwargs
            )
        loss = None
        if sequence_labels is not None:
            if outputs.logits.shape[1] != sequence_labels.shape[1]:
                raise ValueError("A loss needs the logits of every position: leave logits_to_keep at 0 with labels")
            targets = sequence_labels[:, 1:]
            predicted = targets != IGNORE_INDEX
            loss = F.cross_entropy(outputs.logits[:, :-1][predicted].float(), targets[predicted])
        return LlamaMTSKCausalLMOutput(loss=loss, **{key: value for key, value in outputs.items() if key != "loss"})

    def _matryoshka_forward(
        self,
        media: dict[str, torch.Tensor | None],
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor,
        audio_ctc_weight: float = 0.0,
        **kwargs,
    ) -> LlamaMTSKCausalLMOutput:
        """Encoders once; every scale's sequence of every sample packed into one batch; one LLM pass; the mean of the
        per-scale token-mean cross-entropies. Only transcript positions go through the LM head."""
        batch_size = labels.shape[0]
        num_scales = len(self.config.scales)
        device = labels.device
        scale_index = torch.arange(num_scales, device=device).repeat_interleave(batch_size)
        sample_index = torch.arange(batch_size, device=device).repeat(num_scales)
        audio, video = self._modality_tokens(**media, scale_index=scale_index, sample_index=sample_index)
        inputs_embeds, sequence_mask, sequence_labels = self._build_sequences(
            audio, video, sample_index, input_ids, attention_mask, labels, "right"
        )
        inputs_embeds, position_ids, sequence_labels, token_scales = pack_sequences(
            inputs_embeds, sequence_mask, sequence_labels, scale_index
        )
        # No attention mask: transformers reads the packed layout from the position ids restarting at 0 and keeps
        # every sequence's attention inside its own block.
        with use_lora_routes(self.lora_routes_for(token_scales)):
            hidden_states = self.language_model.get_decoder()(
                inputs_embeds=inputs_embeds, position_ids=position_ids, use_cache=False, **kwargs
            ).last_hidden_state
        targets = sequence_labels[:, 1:]
        predicted = targets != IGNORE_INDEX
        logits = self.get_output_embeddings()(hidden_states[:, :-1][predicted]).float()
        token_losses = F.cross_entropy(logits, targets[predicted], reduction="none")
        target_scales = token_scales[:, 1:][predicted]
        scale_losses = torch.zeros(num_scales, device=device, dtype=token_losses.dtype).index_add(0, target_scales, token_losses)
        scale_losses = scale_losses / torch.bincount(target_scales, minlength=num_scales).clamp(min=1)
        loss = scale_losses.mean()
        if audio_ctc_weight:
            loss = loss + audio_ctc_weight * self._audio_ctc_loss(audio, labels[sample_index])
        return LlamaMTSKCausalLMOutput(loss=loss, scale_losses=scale_losses)

    def _audio_ctc_loss(self, audio: _Tokens, labels: torch.Tensor) -> torch.Tensor:
        """CTC of every row's projected audio tokens against its transcript tokens (without EOS), each token scored by
        its dot product with the LLM's input embeddings of the word pieces in the batch and of the pad token (the
        blank). Rows with fewer audio tokens than CTC needs (coarse rates, fast speech) contribute nothing."""
        eos, blank = self._special_token_id("eos_token_id"), self._special_token_id("pad_token_id")
        is_target = (labels != IGNORE_INDEX) & (labels != eos)
        pieces = torch.unique(labels[is_target])
        classes = torch.cat([torch.tensor([blank], device=labels.device), pieces])
        logits = audio.embeddings @ self.get_input_embeddings().weight[classes].T  # (rows, tokens, classes)
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)
        targets = torch.searchsorted(pieces, labels[is_target]) + 1  # class index; 0 is the blank
        return F.ctc_loss(
            log_probs, targets, audio.counts, is_target.sum(-1), blank=0, reduction="mean", zero_infinity=True
        )

    def audio_ctc_loss(
        self,
        labels: torch.Tensor,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        audio_encoder_outputs: torch.Tensor | None = None,
        audio_encoder_outputs_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The auxiliary CTC loss of `audio_ctc_weight` alone, over every trained audio rate, without running the LLM:
        it trains the audio projectors to say which word pieces the audio holds, at a small fraction of a Matryoshka
        step's cost (`audio_ctc_warmup_steps` in training)."""
        if not self.config.uses_audio:
            raise ValueError(f"audio_ctc_loss needs a model with audio, this one's modality is {self.config.modality!r}")
        if (input_features is None) == (audio_encoder_outputs is None):
            raise ValueError("audio_ctc_loss takes input_features or audio_encoder_outputs, exactly one of them")
        if audio_encoder_outputs is not None:
            features, lengths = audio_encoder_outputs, self._encoder_output_lengths(audio_encoder_outputs_mask)
        else:
            features, lengths = self.encode_audio(input_features, input_features_mask)
        rates = sorted({audio_rate for audio_rate, _ in self.config.scales})
        batch_size = labels.shape[0]
        sample_index = torch.arange(batch_size, device=labels.device).repeat(len(rates))
        row_rates = [rate for rate in rates for _ in range(batch_size)]
        audio = self._project(features, lengths, row_rates, sample_index, self.audio_projectors)
        return self._audio_ctc_loss(audio, labels[sample_index])

    # -- adaptive inference ------------------------------------------------------------------------------------------

    def cascade_order(self) -> list[tuple[int | None, int | None]]:
        """The trained scales from the coarsest to the finest: by LLM tokens per second of media (50 / audio rate for
        Whisper's 50 Hz, 25 / video rate for 25 fps video), the order in which `scale="cascade"` tries them."""

        def tokens_per_second(scale: tuple[int | None, int | None]) -> float:
            audio_rate, video_rate = scale
            audio = 0 if audio_rate is None else WHISPER_FRAMES_PER_SECOND / audio_rate
            video = 0 if video_rate is None else VIDEO_FPS / video_rate
            return audio + video

        return sorted(self.config.scales, key=tokens_per_second)

    def llm_input_tokens_per_scale(self, **media: torch.Tensor | None) -> torch.Tensor:
        """`(len(config.scales), batch)`: each sample's LLM input tokens at every trained scale (see
        `count_llm_input_tokens`), without running any encoder."""
        return torch.stack([self.count_llm_input_tokens(scale, **media) for scale in self.config.scales])

    def scales_within_budget(self, max_llm_tokens: int, **media: torch.Tensor | None) -> list[tuple]:
        """Per sample, the finest trained scale (the most LLM input tokens) whose LLM input tokens fit
        `max_llm_tokens`: what `scale="auto"` decodes each row at. Ties keep `config.scales` order."""
        if isinstance(max_llm_tokens, bool) or not isinstance(max_llm_tokens, (int, np.integer)) or max_llm_tokens < 1:
            raise ValueError(f'scale="auto" needs max_llm_tokens, a positive integer; got {max_llm_tokens!r}')
        tokens = self.llm_input_tokens_per_scale(**media)
        chosen = []
        for row in range(tokens.shape[1]):
            fitting = [index for index in range(tokens.shape[0]) if tokens[index, row] <= max_llm_tokens]
            if not fitting:
                cheapest = int(tokens[:, row].argmin())
                raise ValueError(
                    f"max_llm_tokens={max_llm_tokens} fits no trained scale for sample {row}: its cheapest scale "
                    f"{self.config.scales[cheapest]} needs {int(tokens[cheapest, row])} LLM input tokens"
                )
            chosen.append(self.config.scales[max(fitting, key=lambda index: (tokens[index, row], -index))])
        return chosen

    def _generated_lengths(self, sequences: torch.Tensor) -> torch.Tensor:
        """Generated tokens per row up to and including the first end-of-sequence token (all of them without one)."""
        eos = self.generation_config.eos_token_id
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=sequences.device)
        is_end = torch.isin(sequences, eos)
        first_end = torch.where(is_end.any(-1), is_end.int().argmax(-1), sequences.shape[1] - 1)
        return first_end + 1

    def get_compiled_call(self, compile_config: CompileConfig | None) -> Callable:
        """The decoding step `generate` runs when it compiles (with a static cache on a GPU, or anywhere a
        `compile_config` asks for it): this model's forward for the next token of every row, where only the LLM is
        compiled (the LLM's own `get_compiled_call`, cached on it). The LoRA routing stays outside the compiled region:
        `lora_routes_for` has data-dependent shapes and reads the scales back to the host. The compiled LLM reads the
        routes as guarded inputs, so each set of scales in a batch compiles once. Beam search in transformers calls the
        model eagerly at every step and never comes here."""
        compiled_language_model = self.language_model.get_compiled_call(compile_config)
        # One closure per decoding loop, whose rows keep their scales at every step: route once, not once per token
        # (each routing waits for the device).
        routed: dict[str, torch.Tensor | dict | None] = {"scale_index": None, "routes": None}

        def decoding_step(
            input_ids: torch.LongTensor, scale_index: torch.LongTensor | None = None, **kwargs
        ) -> LlamaMTSKCausalLMOutput:
            if scale_index is None:
                scale_index = self._row_scale_indices(None, input_ids.shape[0], input_ids.device)
            if scale_index is not routed["scale_index"]:
                routed.update(scale_index=scale_index, routes=self.lora_routes_for(scale_index))
            with use_lora_routes(routed["routes"]):
                outputs = compiled_language_model(input_ids=input_ids, **kwargs)
            return LlamaMTSKCausalLMOutput(**outputs)

        return decoding_step

    def _decode_at(
        self,
        media: dict[str, torch.Tensor],
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        scale,
        generate_kwargs: dict,
    ):
        """One `generate` pass at a scale (one for the batch, or one per row). With `return_dict_in_generate` the
        output also carries `scales` (per row) and `llm_tokens` (per row: LLM input tokens + generated tokens)."""
        batch_size = next(iter(media.values())).shape[0]
        device = next(iter(media.values())).device
        scale_index = self._row_scale_indices(scale, batch_size, device)
        inputs_embeds, sequence_mask, _ = self.build_inputs_embeds(
            **media, input_ids=input_ids, attention_mask=attention_mask, scale_index=scale_index, padding_side="left"
        )
        outputs = super().generate(
            inputs_embeds=inputs_embeds, attention_mask=sequence_mask, scale_index=scale_index, **generate_kwargs
        )
        if not generate_kwargs.get("return_dict_in_generate", False):
            return outputs
        row_scales = [self.config.scales[index] for index in scale_index.tolist()]
        # The LLM input is the (left-padded) sequence's real tokens; decoding adds one token per generated position.
        outputs["scales"] = row_scales
        outputs["llm_tokens"] = sequence_mask.sum(-1) + self._generated_lengths(outputs.sequences)
        return outputs

    def _confidence(self, outputs, kind: str) -> torch.Tensor:
        """Per row, the mean (`"mean"`) or smallest (`"min"`) log-probability of the generated tokens up to and
        including the end-of-sequence token: how sure the model is of its transcript."""
        log_probs = self.compute_transition_scores(
            outputs.sequences, outputs.scores, outputs.get("beam_indices"), normalize_logits=True
        ).float()
        lengths = self._generated_lengths(outputs.sequences)
        real = torch.arange(log_probs.shape[1], device=log_probs.device)[None, :] < lengths[:, None]
        if kind == "mean":
            return (log_probs * real).sum(-1) / lengths
        if kind == "min":
            return log_probs.masked_fill(~real, math.inf).min(-1).values
        raise ValueError(f'cascade_confidence must be "mean" or "min", got {kind!r}')

    def _cascade(
        self,
        media: dict[str, torch.Tensor],
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        threshold: float | None,
        confidence: str | None,
        generate_kwargs: dict,
    ):
        """Decodes every row at the coarsest scale, then only the rows whose confidence is below `threshold` at the
        next finer scale, and so on; the finest scale's transcript is kept whatever its confidence."""
        if threshold is None:
            threshold = getattr(self.generation_config, "cascade_threshold", None)
        if threshold is None:
            raise ValueError(
                'scale="cascade" needs cascade_threshold=..., or a checkpoint whose generation config carries one '
                "(python -m mtsk_train.evaluation ... --calibrate_cascade stores it)"
            )
        confidence = confidence or getattr(self.generation_config, "cascade_confidence", None) or "mean"
        return_dict = generate_kwargs.pop("return_dict_in_generate", False)
        generate_kwargs = {**generate_kwargs, "return_dict_in_generate": True, "output_scores": True}
        batch_size = next(iter(media.values())).shape[0]
        device = next(iter(media.values())).device
        rows = torch.arange(batch_size, device=device)
        sequences: list[torch.Tensor | None] = [None] * batch_size
        scales: list[tuple | None] = [None] * batch_size
        confidences = torch.zeros(batch_size, device=device)
        llm_tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        order = self.cascade_order()
        for step, scale in enumerate(order):
            outputs = self._decode_at(
                {name: value[rows] for name, value in media.items()},
                None if input_ids is None else input_ids[rows],
                None if attention_mask is None else attention_mask[rows],
                scale,
                dict(generate_kwargs),
            )
            row_confidence = self._confidence(outputs, confidence)
            llm_tokens[rows] += outputs.llm_tokens
            accepted = row_confidence >= threshold if step < len(order) - 1 else torch.ones_like(row_confidence, dtype=torch.bool)
            for position in torch.nonzero(accepted).flatten().tolist():
                row = int(rows[position])
                sequences[row], scales[row], confidences[row] = outputs.sequences[position], scale, row_confidence[position]
            rows = rows[~accepted]
            if rows.numel() == 0:
                break
        longest = max(sequence.shape[0] for sequence in sequences)
        padded = torch.full((batch_size, longest), self.generation_config.pad_token_id, dtype=torch.long, device=device)
        for row, sequence in enumerate(sequences):
            padded[row, : sequence.shape[0]] = sequence
        if not return_dict:
            return padded
        return LlamaMTSKGenerateOutput(sequences=padded, scales=scales, llm_tokens=llm_tokens, confidences=confidences)

    @torch.no_grad()
    def generate(
        self,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        pixel_values_videos_mask: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        scale: int | tuple | list | str | None = None,
        max_llm_tokens: int | None = None,
        cascade_threshold: float | None = None,
        cascade_confidence: str | None = None,
        audio_encoder_outputs: torch.FloatTensor | None = None,
        audio_encoder_outputs_mask: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Transcribes a batch with any of transformers' generation options (greedy, beam search, sampling, streamers,
        `max_new_tokens`, ...). Rows are left-padded, each with its own audio and video length. Returns only the
        generated tokens (or, with `return_dict_in_generate`, the usual `GenerateOutput` plus `scales`, the scale each
        row was decoded at, and `llm_tokens`, the LLM tokens each row cost: input and generated, over every pass).

        `scale` is one of:
        - a trained scale for the whole batch, or a list with one per row (see `forward`); default the finest;
        - `"auto"` with `max_llm_tokens`: each row at the finest trained scale whose LLM input fits the budget
          (`scales_within_budget`);
        - `"cascade"`: every row at the coarsest scale first, then only the rows whose transcript's confidence
          (`cascade_confidence`: the mean, or the smallest, log-probability of its tokens) is below
          `cascade_threshold` again at the next finer scale, up to the finest (`cascade_order`). The threshold and
          the confidence default to the checkpoint's calibrated ones in its generation config.

        The audio may come as `audio_encoder_outputs` with `audio_encoder_outputs_mask` instead of `input_features`
        (`precompute_audio_encoder_outputs`): to transcribe the same clips at several scales while running the audio
        encoder once, as the cascade does for its passes.

        Without media this is plain text generation by the LLM with the scale's LoRA adapters."""
        media = {
            name: value
            for name, value in (
                ("input_features", input_features),
                ("input_features_mask", input_features_mask),
                ("pixel_values_videos", pixel_values_videos),
                ("pixel_values_videos_mask", pixel_values_videos_mask),
                ("audio_encoder_outputs", audio_encoder_outputs),
                ("audio_encoder_outputs_mask", audio_encoder_outputs_mask),
            )
            if value is not None
        }
        if isinstance(scale, str) and scale not in ("auto", "cascade"):
            raise ValueError(f'scale {scale!r} is not a choice: a trained scale, a per-row list, "auto" or "cascade"')
        if max_llm_tokens is not None and scale != "auto":
            raise ValueError(f'max_llm_tokens is the budget of scale="auto", but scale is {scale!r}')
        if (cascade_threshold is not None or cascade_confidence is not None) and scale != "cascade":
            raise ValueError(f'cascade_threshold and cascade_confidence belong to scale="cascade", but scale is {scale!r}')
        if input_features is None and pixel_values_videos is None and audio_encoder_outputs is None:
            if input_ids is None:
                raise ValueError("generate needs media (`input_features` and/or `pixel_values_videos`) or `input_ids`")
            if isinstance(scale, str):
                raise ValueError(f'scale="{scale}" chooses by the media, and there is none: give a scale')
            scale_index = self._row_scale_indices(scale, input_ids.shape[0], input_ids.device)
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, scale_index=scale_index, **generate_kwargs)
        self._check_inputs(input_features, pixel_values_videos, input_ids, None, audio_encoder_outputs)
        if scale == "cascade":
            if input_features is not None:  # every pass reads the same audio: Whisper runs once, not once per pass
                media = {name: value for name, value in media.items() if not name.startswith("input_features")}
                media.update(self.precompute_audio_encoder_outputs(input_features, input_features_mask))
            return self._cascade(media, input_ids, attention_mask, cascade_threshold, cascade_confidence, generate_kwargs)
        if scale == "auto":
            scale = self.scales_within_budget(max_llm_tokens, **media)
        return self._decode_at(media, input_ids, attention_mask, scale, generate_kwargs)


LlamaMTSKForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "AVHubertPreTrainedModel",
    "AVHubertVideoEncoder",
    "LlamaMTSKPreTrainedModel",
    "LlamaMTSKForConditionalGeneration",
    "LlamaMTSKGenerateOutput",
    "MatryoshkaLoRALinear",
    "compress_frames",
]
