"""train.py end to end on a tiny generated corpus: report, checkpoint, pipeline, resume, two processes, assembly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperModel

import train
from convert_fixtures import TINY, avhubert_state_dict, fairseq_checkpoint, fairseq_config, save_fairseq_checkpoint
from mtsk_data.records import load_split
from mtsk_data.synth import generate_corpus
from mtsk_train.arguments import parse_arguments
from mtsk_train.assemble import assemble_model, load_language_model
from mtsk_train.evaluation import evaluate_scales, write_report


REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "configs" / "tiny_train.yaml"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny generated corpus and a tiny LLM on the corpus's word-level tokenizer, saved locally (loading it is
    instant, unlike the GGUF)."""
    root = tmp_path_factory.mktemp("train")
    generate_corpus(str(root / "corpus"), num_train=16, num_validation=4, num_test=6, seed=3, workers=1)
    tokenizer = AutoTokenizer.from_pretrained(root / "corpus" / "tokenizer")
    torch.manual_seed(0)
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
        )
    )
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    return root


def tiny_arguments(workspace: Path, output_dir: Path, **overrides) -> list[str]:
    """train.py's command line: the tiny config plus overrides."""
    values = {"dataset_dir": str(workspace / "corpus"), "llm": str(workspace / "llm"), "output_dir": str(output_dir)}
    values.update(overrides)
    argv = [str(TINY_CONFIG)]
    for name, value in values.items():
        argv += [f"--{name}", yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()]
    return argv


def log_history(output_dir: Path, checkpoint: str) -> list[dict]:
    return json.loads((output_dir / checkpoint / "trainer_state.json").read_text())["log_history"]


def test_training_run_writes_checkpoint_report_and_transcribes(workspace, tmp_path):
    summary = train.main(tiny_arguments(workspace, tmp_path / "run"))
    final = tmp_path / "run" / "final"

    report = json.loads((final / "eval_report.json").read_text())
    assert [(entry["audio_rate"], entry["video_rate"]) for entry in report] == [(4, 2), (4, 5), (16, 2), (16, 5)]
    tokens = {(entry["audio_rate"], entry["video_rate"]): entry["mean_llm_tokens"] for entry in report}
    assert tokens[(4, 2)] > tokens[(4, 5)] > tokens[(16, 5)] and tokens[(4, 2)] > tokens[(16, 2)] > tokens[(16, 5)]
    assert all(entry["reference_words"] > 0 and 0 <= entry["wer"] for entry in report)
    assert (final / "wer_vs_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (final / "README.md").read_text()
    assert "pipeline_tag: automatic-speech-recognition" in card and "WER" in card
    assert isinstance(summary["example"]["transcript"], str)
    # Each scale's loss is logged next to the mean.
    logged = [entry for entry in log_history(tmp_path / "run", "checkpoint-4") if "loss" in entry]
    assert logged and all({"loss_a4_v2", "loss_a4_v5", "loss_a16_v2", "loss_a16_v5"} <= entry.keys() for entry in logged)
    # The saved folder is a complete checkpoint: the pipeline transcribed from it, and it reloads.
    reloaded = train.LlamaMTSKForConditionalGeneration.from_pretrained(final)
    assert reloaded.config.scales == [(4, 2), (4, 5), (16, 2), (16, 5)]
    # The run's record goes into BENCHMARKS.md with its WER table and the pipeline example.
    assert json.loads((tmp_path / "run" / "run_summary.json").read_text())["wer"] == summary["wer"]
    benchmark = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_benchmarks.py"), "--demo", str(tmp_path / "run"),
         "--results", str(tmp_path / "results.json"), "--report", str(tmp_path / "BENCHMARKS.md")],
        capture_output=True, text=True, timeout=300,
    )
    assert benchmark.returncode == 0, benchmark.stderr[-3000:]
    section = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## The embedded demo" in section and summary["example"]["reference"] in section
    assert section.count("| (4, 2) |") == 1 and f"| (4, 2) | {100 * report[0]['wer']:.1f} |" in section


def test_resumed_run_matches_an_uninterrupted_one(workspace, tmp_path):
    train.main(tiny_arguments(workspace, tmp_path / "straight", max_steps=6, save_steps=3, transcribe_example=False))
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", resumed_dir / "checkpoint-3")
    train.main(
        tiny_arguments(
            workspace, resumed_dir, max_steps=6, save_steps=3, transcribe_example=False,
            resume_from_checkpoint=str(resumed_dir / "checkpoint-3"),
        )
    )
    straight = [entry["loss"] for entry in log_history(tmp_path / "straight", "checkpoint-6") if "loss" in entry]
    resumed = [entry["loss"] for entry in log_history(resumed_dir, "checkpoint-6") if "loss" in entry]
    assert len(straight) == 6
    assert resumed == pytest.approx(straight, rel=1e-4)
    expected = load_file(str(tmp_path / "straight" / "checkpoint-6" / "model.safetensors"))
    actual = load_file(str(resumed_dir / "checkpoint-6" / "model.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


RANK_SPY = """
import json, os, sys, hashlib
import torch
sys.path.insert(0, {repo!r})
import train
from mtsk_data.collator import MTSKCollator

rank = int(os.environ["RANK"])
original_call = MTSKCollator.__call__
def recording_call(self, records):
    if self.training:
        with open(os.path.join({out!r}, f"batches-{{rank}}.jsonl"), "a") as file:
            file.write(json.dumps([record["id"] for record in records]) + "\\n")
    return original_call(self, records)
MTSKCollator.__call__ = recording_call

original_average = train.average_last_checkpoints
def average_and_dump(model, *args, **kwargs):
    result = original_average(model, *args, **kwargs)
    state = {{name: tensor.detach().clone() for name, tensor in model.state_dict().items()}}
    torch.save(state, os.path.join({out!r}, f"weights-{{rank}}.pt"))
    return result
train.average_last_checkpoints = average_and_dump
train.main(sys.argv[1:])
"""


def test_two_processes_train_disjoint_batches_and_agree_on_weights(workspace, tmp_path):
    # accelerate 1.15 starts ONE process for `--cpu --num_processes 2` (its multi-CPU launcher needs mpirun); the
    # multi-GPU launcher falls back to gloo on CPU-only machines and does start two.
    spy = tmp_path / "spy.py"
    spy.write_text(RANK_SPY.format(repo=str(REPO), out=str(tmp_path)))
    output_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29611",
        str(spy), *tiny_arguments(workspace, output_dir, use_cpu=True, transcribe_example=False, max_frames=300),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    completed = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]

    batches = {rank: [json.loads(line) for line in (tmp_path / f"batches-{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)}
    assert len(batches[0]) == len(batches[1]) == 4  # max_steps
    assert batches[0] != batches[1]
    epoch_ids = {rank: set(sum(batches[rank][:2], [])) for rank in (0, 1)}
    assert not epoch_ids[0] & epoch_ids[1], "the two ranks saw the same samples in one epoch"

    rank_weights = [torch.load(tmp_path / f"weights-{rank}.pt") for rank in (0, 1)]
    saved = load_file(str(output_dir / "final" / "model.safetensors"))
    for name, tensor in saved.items():
        assert torch.equal(rank_weights[0][name], rank_weights[1][name]), name
        assert torch.equal(rank_weights[0][name], tensor), name
    initial = train.LlamaMTSKForConditionalGeneration.from_pretrained(output_dir / "checkpoint-2")
    assert not torch.equal(initial.audio_projectors["4"].linear_1.weight, saved["audio_projectors.4.linear_1.weight"])


def test_evaluation_report_equals_jiwer_on_the_hypotheses(workspace, tmp_path):
    model, processor = assemble_model(
        llm=str(workspace / "llm"),
        audio_encoder={"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                       "num_mel_bins": 80, "max_source_positions": 200},
        modality="audio", audio_rates=[4, 8], projector_hidden_size=16, lora_r=4, lora_alpha=8,
    )
    records = list(load_split(workspace / "corpus", "test"))
    results, hypotheses = evaluate_scales(model, processor, records, batch_size=4, generate_kwargs={"max_new_tokens": 5})
    references = [record["text"] for record in records]
    for result in results:
        scale_hypotheses = hypotheses[f"{result.scale}@None"]
        assert result.wer == pytest.approx(jiwer.wer(references, scale_hypotheses))
        assert result.reference_words == sum(len(text.split()) for text in references)
    paths = write_report(results, tmp_path)
    written = json.loads(paths["json"].read_text())
    assert [entry["wer"] for entry in written] == [result.wer for result in results]
    from PIL import Image

    with Image.open(paths["plot"]) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_assembling_from_gguf_whisper_and_fairseq_avhubert_keeps_the_llm_text_path(workspace, tmp_path):
    torch.manual_seed(0)
    whisper = WhisperModel(
        WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, decoder_layers=1,
                      decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=200)
    )
    whisper.save_pretrained(tmp_path / "whisper")
    state = avhubert_state_dict(**TINY, seed=2)
    save_fairseq_checkpoint(fairseq_checkpoint(state, fairseq_config(**TINY, image_crop_size=16), as_dictconfig=True),
                            tmp_path / "avhubert.pt")

    model, processor = assemble_model(
        llm="smollm2", audio_encoder=str(tmp_path / "whisper"), video_encoder=str(tmp_path / "avhubert.pt"),
        modality="audiovisual", projector_hidden_size=16, lora_strategy="mss", lora_r=4, lora_alpha=8,
    )
    plain, tokenizer = load_language_model("smollm2")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = model(input_ids=ids, scale=(4, 2)).logits
        reference = plain(input_ids=ids).logits
    torch.testing.assert_close(ours[..., : reference.shape[-1]], reference, atol=1e-4, rtol=0)
    # The pretrained parts landed, frozen; the five added tokens are in the tokenizer and the embedding.
    torch.testing.assert_close(model.audio_encoder.conv1.weight, whisper.encoder.conv1.weight)
    torch.testing.assert_close(
        model.video_encoder.encoder.layers[0].fc1.weight, state["encoder.layers.0.fc1.weight"]
    )
    assert not any(p.requires_grad for p in model.audio_encoder.parameters())
    assert not any(p.requires_grad for p in model.video_encoder.parameters())
    assert len(processor.tokenizer) == len(tokenizer) + 5 == model.get_input_embeddings().weight.shape[0]
    assert processor.tokenizer.convert_ids_to_tokens(model.config.video_end_token_id) == "</video>"


@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_configs_parse_with_the_authors_recipe_underneath(config):
    model_args, data_args, training_args = parse_arguments([str(config)])
    assert (training_args.adam_beta1, training_args.adam_beta2) == (0.9, 0.98)
    assert model_args.modality in ("audio", "video", "audiovisual") and data_args.max_frames > 0
    if config.name == "lrs3_avsr.yaml":  # nothing overridden: the recipe of SPEC.md section 6
        assert training_args.learning_rate == 1e-3 and training_args.weight_decay == 0.1
        assert training_args.max_grad_norm == 10.0
        assert training_args.lr_scheduler_type == "cosine" and training_args.warmup_steps == 0
        assert (model_args.audio_rates, model_args.video_rates) == ([4, 16], [2, 5])


def test_video_only_runs_default_to_the_vsr_learning_rate(workspace, tmp_path):
    _, _, training_args = parse_arguments(tiny_arguments(workspace, tmp_path, modality="video"))
    assert training_args.learning_rate == 5e-4
