# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Configuration of Llama-MTSK: a Matryoshka audio-visual speech recognizer built on a Llama-architecture LLM."""

from itertools import product
from numbers import Integral

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


# The rates of the authors' data: 16 kHz audio, 25 fps video, so one video frame spans 640 audio samples; Whisper
# encodes 50 frames per second (one per two mel frames of 10 ms). Here, not in the media module, so that the model
# reads them without importing the decoders.
SAMPLING_RATE = 16000
VIDEO_FPS = 25
SAMPLES_PER_FRAME = SAMPLING_RATE // VIDEO_FPS
WHISPER_FRAMES_PER_SECOND = 50

MODALITIES = ("audio", "video", "audiovisual")
COMPRESSIONS = ("avg_pool", "stack")
LORA_STRATEGIES = ("ms", "ss", "mss", "none")
LORA_INITS = ("peft", "authors", "gaussian")

DEFAULT_PROMPTS = {
    "audio": "Transcribe speech to text.",
    "video": "Transcribe video to text.",
    "audiovisual": "Transcribe speech and video to text.",
}
# The paper's rate sets (Cappellazzo et al., 2025, arXiv 2503.06362).
DEFAULT_AUDIO_RATES = {"audio": [4, 8, 12, 16, 20], "audiovisual": [4, 16]}
DEFAULT_VIDEO_RATES = {"video": [1, 2, 3, 4, 5], "audiovisual": [2, 5]}


class AVHubertConfig(PreTrainedConfig):
    r"""
    Configuration of the AV-HuBERT encoder used video-only (the audio branch is replaced by zeros), as in Llama-AVSR.
    The defaults are AV-HuBERT Large (`large_vox_iter5.pt`); the front end's widths and the input crop size are
    configurable so that CPU-sized models read small mouth crops through a narrow ResNet.

    Args:
        hidden_size (`int`, defaults to 1024): Transformer width (fairseq `encoder_embed_dim`).
        num_hidden_layers (`int`, defaults to 24): Number of pre-LN transformer layers.
        num_attention_heads (`int`, defaults to 16): Attention heads per layer.
        intermediate_size (`int`, defaults to 4096): Feed-forward width.
        hidden_act (`str`, defaults to `"gelu"`): Feed-forward activation.
        hidden_dropout (`float`, defaults to 0.1): Dropout on residual branches (training only).
        attention_dropout (`float`, defaults to 0.1): Dropout on attention probabilities (training only).
        activation_dropout (`float`, defaults to 0.0): Dropout after the feed-forward activation (training only).
        layerdrop (`float`, defaults to 0.0): Probability of skipping a transformer layer (training only, LayerDrop).
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon.
        layer_norm_first (`bool`, defaults to `True`): Pre-LN layers with a final LayerNorm (Large) or post-LN (Base).
        num_conv_pos_embeddings (`int`, defaults to 128): Kernel of the convolutional positional embedding.
        num_conv_pos_embedding_groups (`int`, defaults to 16): Groups of that convolution.
        feat_extract_activation (`str`, defaults to `"gelu"`): Activation after that convolution (the name is
            `HubertConfig`'s, whose positional embedding we use).
        frontend_channels (`int`, defaults to 64): Output channels of the 3-D convolution stem.
        resnet_channels (`list[int]`, defaults to `[64, 128, 256, 512]`): Widths of the four ResNet-18 stages.
        resnet_relu_type (`str`, defaults to `"prelu"`): `"prelu"` or `"relu"` in the front end.
        image_size (`int`, defaults to 88): Side of the square grayscale crop the encoder reads.
        roi_size (`int`, defaults to 96): Side a stored mouth ROI is resized to before the crop.
        image_mean (`float`, defaults to 0.421): Pixel mean used for normalisation (pixels in [0, 1]).
        image_std (`float`, defaults to 0.165): Pixel standard deviation used for normalisation.
        initializer_range (`float`, defaults to 0.02): Standard deviation of the random initialisation.
    """

    model_type = "llama_mtsk_avhubert"

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    layerdrop: float = 0.0
    layer_norm_eps: float = 1e-5
    layer_norm_first: bool = True
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    feat_extract_activation: str = "gelu"
    frontend_channels: int = 64
    resnet_channels: list[int] | tuple[int, ...] = (64, 128, 256, 512)
    resnet_relu_type: str = "prelu"
    image_size: int = 88
    roi_size: int = 96
    image_mean: float = 0.421
    image_std: float = 0.165
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.resnet_channels = list(self.resnet_channels)
        if len(self.resnet_channels) != 4:
            raise ValueError(f"resnet_channels must list the widths of the 4 ResNet-18 stages, got {self.resnet_channels}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_conv_pos_embedding_groups "
                f"({self.num_conv_pos_embedding_groups})"
            )
        if self.resnet_relu_type not in ("prelu", "relu"):
            raise ValueError(f"resnet_relu_type must be 'prelu' or 'relu', got {self.resnet_relu_type!r}")
        if not 0 < self.image_size <= self.roi_size:
            raise ValueError(f"image_size ({self.image_size}) must be positive and at most roi_size ({self.roi_size})")
        super().__post_init__(**kwargs)


class LlamaMTSKConfig(PreTrainedConfig):
    r"""
    Configuration of [`LlamaMTSKForConditionalGeneration`]: Whisper and/or AV-HuBERT encoders, compression of their
    outputs at several rates with one projector per modality and rate, and a frozen Llama-architecture LLM with
    Matryoshka LoRA adapters.

    Args:
        text_config (`dict` or `PreTrainedConfig`): The LLM's config (any Llama-architecture causal LM).
        audio_config (`dict` or `WhisperConfig`, *optional*): The Whisper config; required when the modality uses audio.
        video_config (`dict` or `AVHubertConfig`, *optional*): The AV-HuBERT config; required when the modality uses video.
        modality (`str`, defaults to `"audiovisual"`): `"audio"` (ASR), `"video"` (VSR) or `"audiovisual"` (AVSR).
        audio_rates (`list[int]`, *optional*): Audio compression rates (Whisper frames per LLM token). Defaults to the
            paper's set for the modality: ASR `[4, 8, 12, 16, 20]`, AVSR `[4, 16]`.
        video_rates (`list[int]`, *optional*): Video compression rates. Defaults: VSR `[1, 2, 3, 4, 5]`, AVSR `[2, 5]`.
        compression (`str`, defaults to `"avg_pool"`): `"avg_pool"` (average over `rate` frames) or `"stack"`
            (concatenate `rate` frames along channels).
        projector_hidden_size (`int`, defaults to 2048): Hidden width of every projector MLP.
        projector_layer_norm (`bool`, defaults to `True`): Whether projectors end with a LayerNorm.
        lora_strategy (`str`, defaults to `"ms"`): `"ms"` one global LoRA for all scales, `"ss"` one LoRA per scale,
            `"mss"` global + per-scale LoRA summed, `"none"` no LoRA.
        lora_r (`int`, defaults to 64): LoRA rank (the authors' `hidden // reduction`).
        lora_alpha (`float`, defaults to 8.0): LoRA alpha; the update is scaled by `lora_alpha / lora_r` (peft's
            convention; the authors' `alpha / reduction` equals `lora_alpha / lora_r` with `lora_alpha = r * alpha / reduction`).
        lora_target_modules (`list[str]`, defaults to `["q_proj", "v_proj"]`): LLM projections that get adapters.
        lora_init (`str`, defaults to `"peft"`): `"peft"` (A Kaiming-uniform, B zeros: identity at start), `"authors"`
            (A zeros, B Kaiming-uniform, as the authors' module reads: also identity at start) or `"gaussian"` (A and B
            N(0, 0.02): what the authors' runs actually start from, since `from_pretrained` re-initialises them).
        freeze_audio_encoder (`bool`, defaults to `True`): Whisper stays fixed in training, as in the paper: the
            forward runs it without gradients, and `freeze_for_training` freezes its parameters.
        freeze_video_encoder (`bool`, defaults to `True`): The same for AV-HuBERT.
        freeze_language_model (`bool`, defaults to `True`): `freeze_for_training` freezes the LLM except its LoRA
            adapters, as in the paper. Off only for an LLM trained from scratch (e.g. a CPU-sized demo).
        prompt (`str`, *optional*): The instruction after the modality blocks. Defaults to the paper's prompt.
        prompt_token_ids (`list[int]`, *optional*): The tokenised prompt (no BOS/EOS), filled in when the model is
            assembled with its tokenizer, so that `generate` needs no `input_ids`.
        bos_token_id, eos_token_id, pad_token_id (`int`, *optional*): The LLM's special tokens.
        audio_start_token_id, audio_end_token_id, video_start_token_id, video_end_token_id (`int`, *optional*): Ids of
            the added `<audio>`, `</audio>`, `<video>`, `</video>` tokens.
    """

    model_type = "llama_mtsk"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper", optional=True),
        "video_config": SubConfigSpec(config_class=AVHubertConfig, optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    video_config: dict | PreTrainedConfig | None = None
    modality: str = "audiovisual"
    audio_rates: list[int] | None = None
    video_rates: list[int] | None = None
    compression: str = "avg_pool"
    projector_hidden_size: int = 2048
    projector_layer_norm: bool = True
    lora_strategy: str = "ms"
    lora_r: int = 64
    lora_alpha: float = 8.0
    lora_target_modules: list[str] | tuple[str, ...] = ("q_proj", "v_proj")
    lora_init: str = "peft"
    freeze_audio_encoder: bool = True
    freeze_video_encoder: bool = True
    freeze_language_model: bool = True
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    audio_start_token_id: int | None = None
    audio_end_token_id: int | None = None
    video_start_token_id: int | None = None
    video_end_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if self.lora_strategy not in LORA_STRATEGIES:
            raise ValueError(f"lora_strategy must be one of {LORA_STRATEGIES}, got {self.lora_strategy!r}")
        if self.lora_init not in LORA_INITS:
            raise ValueError(f"lora_init must be one of {LORA_INITS}, got {self.lora_init!r}")
        if self.lora_strategy != "none" and self.lora_r < 1:
            raise ValueError(f"lora_r must be at least 1, got {self.lora_r}")
        self.lora_target_modules = list(self.lora_target_modules)

        self.audio_rates = self._validated_rates("audio", self.audio_rates, DEFAULT_AUDIO_RATES)
        self.video_rates = self._validated_rates("video", self.video_rates, DEFAULT_VIDEO_RATES)
        if self.prompt is None:
            self.prompt = DEFAULT_PROMPTS[self.modality]
        if self.prompt_token_ids is not None:
            self.prompt_token_ids = [int(token_id) for token_id in self.prompt_token_ids]

        super().__post_init__(**kwargs)
        if self.uses_audio and self.audio_config is None:
            raise ValueError(f"audio_config is required for modality {self.modality!r}")
        if self.uses_video and self.video_config is None:
            raise ValueError(f"video_config is required for modality {self.modality!r}")

    def _validated_rates(self, name: str, rates: list[int] | None, defaults: dict[str, list[int]]) -> list[int] | None:
        field = f"{name}_rates"
        if self.modality not in defaults:  # this modality does not use `name`
            if rates:
                raise ValueError(f"{field} must be empty for modality {self.modality!r}, got {rates}")
            return None
        rates = list(defaults[self.modality] if rates is None else rates)
        if not rates:
            raise ValueError(f"{field} must list at least one rate for modality {self.modality!r}")
        for rate in rates:
            if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
                raise ValueError(f"{field} must hold integers >= 1, got {rate!r} in {rates}")
        if len(set(rates)) != len(rates):
            raise ValueError(f"{field} must not repeat a rate, got {rates}")
        return sorted(rates)

    @property
    def uses_audio(self) -> bool:
        return self.modality in ("audio", "audiovisual")

    @property
    def uses_video(self) -> bool:
        return self.modality in ("video", "audiovisual")

    @property
    def scales(self) -> list[tuple[int | None, int | None]]:
        """The trained scales, finest first: `(audio_rate, video_rate)`, `None` for an unused modality.
        AVSR trains every audio x video pair (the paper's Cartesian product)."""
        audio_rates = self.audio_rates if self.uses_audio else [None]
        video_rates = self.video_rates if self.uses_video else [None]
        return list(product(audio_rates, video_rates))

    def scale_name(self, scale: tuple[int | None, int | None]) -> str:
        """A stable name for a scale, used for its LoRA adapter and in logs, e.g. `(4, 2)` -> `"a4_v2"`."""
        audio_rate, video_rate = scale
        parts = ([f"a{audio_rate}"] if audio_rate is not None else []) + ([f"v{video_rate}"] if video_rate is not None else [])
        return "_".join(parts)

    def normalize_scale(self, scale: int | tuple | list) -> tuple[int | None, int | None]:
        """
        Turns a user-given scale into a trained `(audio_rate, video_rate)` tuple. A rate is an integer (Python or
        NumPy; a bool, a float or a string is refused, not rounded) or `None` for a modality the model does not use; a
        plain integer is accepted for a single-modality model. One scale serves a whole call, so a list of scales is
        refused. Raises a `ValueError` that names what is wrong, or lists the trained scales.
        """
        if _is_rate(scale):
            if self.modality == "audiovisual":
                raise ValueError(
                    f"An audiovisual model needs a scale (audio_rate, video_rate), got {scale!r}; trained scales: {self.scales}"
                )
            normalized = (int(scale), None) if self.modality == "audio" else (None, int(scale))
        elif isinstance(scale, (tuple, list)):
            if any(isinstance(rate, (tuple, list)) for rate in scale):
                raise ValueError(
                    f"scale {scale!r} lists several scales, but one scale serves a whole call (every input of a "
                    "batch): call once per scale"
                )
            if len(scale) != 2:
                raise ValueError(f"scale must be an int or an (audio_rate, video_rate) pair, got {scale!r}")
            for rate in scale:
                if rate is not None and not _is_rate(rate):
                    raise ValueError(
                        f"scale {scale!r}: a rate must be an integer (or None for an unused modality), got "
                        f"{type(rate).__name__} {rate!r}"
                    )
            normalized = tuple(None if rate is None else int(rate) for rate in scale)
        else:
            raise ValueError(
                f"scale must be an int or an (audio_rate, video_rate) pair, got {type(scale).__name__} {scale!r}"
            )
        if normalized not in self.scales:
            raise ValueError(f"scale {scale!r} was not trained; trained scales (audio_rate, video_rate): {self.scales}")
        return normalized


def _is_rate(value) -> bool:
    """Whether `value` is an integer a rate can be: Python or NumPy integers, not bools."""
    return isinstance(value, Integral) and not isinstance(value, bool)


LlamaMTSKConfig.register_for_auto_class()

__all__ = ["AVHubertConfig", "LlamaMTSKConfig"]
