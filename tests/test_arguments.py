"""Training configs: every YAML value is checked against its field's declared type when the config is parsed, before
a model or a corpus is built, with an error that names the field, the value and the type."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtsk_train.arguments import coerce_config, parse_arguments


REPO = Path(__file__).resolve().parents[1]
TRAINING_CONFIGS = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "tests" / "configs").glob("*.yaml"))


def parse_config(tmp_path: Path, text: str, *overrides: str):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    return parse_arguments([str(config), "--output_dir", str(tmp_path / "out"), *overrides])


def test_yaml_numbers_without_a_dot_become_numbers(tmp_path):
    assert yaml.safe_load("learning_rate: 1e-3") == {"learning_rate": "1e-3"}  # YAML 1.1 reads a string
    model_args, _, training_args = parse_config(tmp_path, "learning_rate: 1e-3\nmax_steps: 1e3\nlora_alpha: 2e1\n")
    assert training_args.learning_rate == 0.001 and type(training_args.learning_rate) is float
    assert training_args.max_steps == 1000 and type(training_args.max_steps) is int
    assert model_args.lora_alpha == 20.0
    _, data_args, training_args = parse_config(tmp_path, "", "--learning_rate", "5e-4", "--augment", "'no'")
    assert training_args.learning_rate == 0.0005 and data_args.augment is False


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_steps: ten", "max_steps = 'ten' (str) is not an integer"),
        ("learning_rate: fast", "learning_rate = 'fast' (str) is not a number (e.g. 0.001 or 1e-3)"),
        ("audio_rates: 4", "audio_rates = 4 (int) is not a list of integers"),
        ("audio_rates: [4, x]", "audio_rates[1] = 'x' (str) is not an integer"),
        ("lora_r: 4.5", "lora_r = 4.5 (float) is not an integer"),
        ("video_encoder_config: [16, 1]", "video_encoder_config = [16, 1] (list) is not a mapping {name: value}"),
        ("llm_config: {hidden_size: big}", None),  # any value inside: LlamaConfig checks its own fields
        ("bf16: maybe", "bf16 = 'maybe' (str) is not true or false"),
        ("seed: true", "seed = True (bool) is not an integer"),
        ("corpus_sizes: {train: 3}", "corpus_sizes = {'train': 3} (dict) is not a list of integers"),
        ("lr_scheduler_kwargs: [1]", "lr_scheduler_kwargs = [1] (list) is not a mapping {name: value} or a string or null"),
        ("log_level: loud", "log_level = 'loud' is not one of 'detail', 'debug', 'info'"),
        ("projector_layer_norm: null", "projector_layer_norm = None (NoneType) is not true or false"),
    ],
)
def test_values_of_the_wrong_type_are_refused_at_parse_time(tmp_path, line, message):
    if message is None:
        assert coerce_config(yaml.safe_load(line)) == yaml.safe_load(line)
        return
    with pytest.raises(ValueError) as error:
        parse_config(tmp_path, line + "\n")
    assert str(error.value).startswith(f"Config field {message}")
    # The same value given on the command line is refused alike.
    name, _, value = line.partition(": ")
    with pytest.raises(ValueError, match=f"^Config field {name}"):
        parse_config(tmp_path, "", f"--{name}", value)


def test_values_convert_only_where_no_meaning_is_lost():
    converted = coerce_config(
        {"train_snrs_db": [-5, 0, "clean"], "run_name": 7, "save_steps": 500, "warmup_steps": 0.5, "fp16": "False"}
    )
    assert converted == {"train_snrs_db": ["-5", "0", "clean"], "run_name": "7", "save_steps": 500,
                         "warmup_steps": 0.5, "fp16": False}
    assert type(converted["save_steps"]) is int  # an integer for a float field stays as written
    # `true` stays a bool where a field takes a string or a bool; a number where a string or a mapping fits is a string.
    assert coerce_config({"include_num_input_tokens_seen": True}) == {"include_num_input_tokens_seen": True}
    assert coerce_config({"lr_scheduler_kwargs": 3}) == {"lr_scheduler_kwargs": "3"}
    with pytest.raises(ValueError, match=r"^Config field run_name = True \(bool\) is not a string or null"):
        coerce_config({"run_name": True})


@pytest.mark.parametrize("config", TRAINING_CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_parses_unchanged(config):
    written = yaml.safe_load(config.read_text())
    assert repr(coerce_config(written)) == repr(written)  # same values, same types
    parse_arguments([str(config)])


def test_encoder_output_masks_need_the_cache(tmp_path):
    _, data_args, _ = parse_config(tmp_path, "cache_audio_encoder_outputs: true\nencoder_output_mask_window: 10\n")
    assert data_args.encoder_output_mask_window == 10
    with pytest.raises(ValueError, match="masks cached encoder outputs: set cache_audio_encoder_outputs"):
        parse_config(tmp_path, "encoder_output_mask_window: 10\n")
    with pytest.raises(ValueError, match="must be >= 0 frames, got -2"):
        parse_config(tmp_path, "cache_audio_encoder_outputs: true\nencoder_output_mask_window: -2\n")


def test_ctc_warm_up_needs_the_cache(tmp_path):
    _, _, training_args = parse_config(tmp_path, "cache_audio_encoder_outputs: true\naudio_ctc_warmup_steps: 100\n")
    assert training_args.audio_ctc_warmup_steps == 100
    with pytest.raises(ValueError, match="trains on cached encoder outputs: set cache_audio_encoder_outputs"):
        parse_config(tmp_path, "audio_ctc_warmup_steps: 100\n")
