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
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperModel
from transformers.integrations import HfDeepSpeedConfig

import train
from llama_mtsk.modeling_llama_mtsk import AUTO_MAP, SIBLING_MODULES
from mtsk_data.records import load_split
from mtsk_data.synthetic.corpus import generate_corpus
from mtsk_train.arguments import parse_arguments
from mtsk_train.assemble import assemble_model, load_language_model
from mtsk_train.evaluation import evaluate_scales, write_report

from convert_fixtures import TINY, avhubert_state_dict, fairseq_checkpoint, fairseq_config, save_fairseq_checkpoint
from isolated import run_isolated


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


# The code files of a checkpoint, and the scripts DeepSpeed adds beside its resume state (to turn it into weights).
OUR_CODE_FILES = {"configuration_llama_mtsk.py", "modeling_llama_mtsk.py", *SIBLING_MODULES}
DEEPSPEED_SCRIPTS = {"zero_to_fp32.py", "zero_to_torch.py"}


def launch_two_processes(workspace: Path, root: Path, accelerate_config: str, port: int, use_cpu: bool) -> Path:
    """train.py on two CPU processes with a shipped accelerate config (without mixed precision), through
    tests/distributed_train.py; returns the run's folder, with the output in `run/` and the records in `records/`.
    `use_cpu`: DeepSpeed runs only without it (accelerate sets DeepSpeed up on accelerator devices alone)."""
    (root / "records").mkdir(parents=True)
    # accelerate 1.15 starts ONE process for `--cpu --num_processes 2` (its multi-CPU launcher needs mpirun); the
    # launcher of the GPU configs falls back to gloo on CPU-only machines and does start two.
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / accelerate_config), "--num_processes", "2",
        "--mixed_precision", "no", "--main_process_port", str(port),
        str(REPO / "tests" / "distributed_train.py"), str(root / "records"),
        *tiny_arguments(
            workspace, root / "run", use_cpu=use_cpu, transcribe_example=False, max_frames=300,
            average_last_checkpoints=2,
        ),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    completed = subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return root


def read_records(run: Path) -> dict[str, dict[int, object]]:
    records = run / "records"
    return {
        "batches": {
            rank: [json.loads(line) for line in (records / f"batches-{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)
        },
        "sharding": {rank: json.loads((records / f"sharding-{rank}.json").read_text()) for rank in (0, 1)},
        "weights": {rank: torch.load(records / f"weights-{rank}.pt") for rank in (0, 1)},
    }


RELOAD_AND_TRANSCRIBE = """
import json
import torch
from transformers import AutoModel, AutoProcessor, pipeline

folders = json.loads(open("folders.json").read())
clip = {"audio": open("clip.wav", "rb").read(), "video": open("clip.mp4", "rb").read()}
outputs = {}
for name, folder in folders["checkpoints"].items():
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "LlamaMTSKForConditionalGeneration", type(model)
    torch.save(model.state_dict(), f"{name}.pt")
for name, folder in folders["finals"].items():
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    inputs = AutoProcessor.from_pretrained(folder, trust_remote_code=True)(audio=clip["audio"], videos=clip["video"])
    recognizer = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
    outputs[name] = {"tokens": [], "scores": [], "transcripts": []}
    for scale in model.config.scales:
        # Eight tokens with their scores, as generated: four training steps teach the tiny model little beyond
        # punctuation, which transcripts leave out.
        generated = model.generate(
            **inputs, scale=scale, min_new_tokens=8, max_new_tokens=8, return_dict_in_generate=True, output_scores=True
        )
        outputs[name]["tokens"].append(generated.sequences[0].tolist())
        outputs[name]["scores"].append(torch.cat(generated.scores).tolist())
        outputs[name]["transcripts"].append(recognizer(clip, scale=scale)["text"])
open("outputs.json", "w").write(json.dumps(outputs))
"""


def test_two_processes_train_alike_under_ddp_fsdp2_and_zero2(workspace, tmp_path):
    ddp = launch_two_processes(workspace, tmp_path / "ddp", "ddp.yaml", 29611, use_cpu=True)
    fsdp = launch_two_processes(workspace, tmp_path / "fsdp", "fsdp.yaml", 29612, use_cpu=True)
    zero2 = launch_two_processes(workspace, tmp_path / "zero2", "deepspeed_zero2.yaml", 29613, use_cpu=False)
    runs = {"ddp": ddp, "fsdp": fsdp, "zero2": zero2}
    records = {name: read_records(run) for name, run in runs.items()}

    # Each run really is what its config says: FSDP2 trains on DTensor shards, DeepSpeed with ZeRO stage 2.
    for rank in (0, 1):
        assert records["ddp"]["sharding"][rank]["distributed_type"] == "DistributedType.MULTI_CPU"
        assert records["ddp"]["sharding"][rank]["dtensors"] == 0
        fsdp_sharding = records["fsdp"]["sharding"][rank]
        assert fsdp_sharding["distributed_type"] == "DistributedType.FSDP"
        assert fsdp_sharding["dtensors"] == fsdp_sharding["parameters"] > 0
        assert records["zero2"]["sharding"][rank]["distributed_type"] == "DistributedType.DEEPSPEED"
        assert records["zero2"]["sharding"][rank]["zero_stage"] == 2

    # The two processes of a run train on disjoint batches, the same batches in every run.
    batches = records["ddp"]["batches"]
    assert len(batches[0]) == len(batches[1]) == 4  # max_steps
    epoch_ids = {rank: set(sum(batches[rank][:2], [])) for rank in (0, 1)}
    assert not epoch_ids[0] & epoch_ids[1], "the two ranks saw the same samples in one epoch"
    assert records["fsdp"]["batches"] == records["zero2"]["batches"] == batches

    ddp_losses = [entry["loss"] for entry in log_history(ddp / "run", "checkpoint-4") if "loss" in entry]
    def report_without_times(run_dir: Path) -> list[dict]:
        # Wall times differ from run to run; every other field must be equal.
        rows = json.loads((run_dir / "run" / "final" / "eval_report.json").read_text())
        return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]

    ddp_report = report_without_times(ddp)
    for name, run in runs.items():
        # Both processes go on with the same full weights, the mean of the last two checkpoints, which process 0 saved.
        assert json.loads((run / "run" / "run_summary.json").read_text())["averaged_checkpoints"] == [
            "checkpoint-2", "checkpoint-4"
        ]
        weights = records[name]["weights"]
        for tensor_name, tensor in load_file(str(run / "run" / "final" / "model.safetensors")).items():
            assert torch.equal(weights[0][tensor_name], weights[1][tensor_name]), (name, tensor_name)
            assert torch.equal(weights[0][tensor_name], tensor), (name, tensor_name)
        losses = [entry["loss"] for entry in log_history(run / "run", "checkpoint-4") if "loss" in entry]
        assert losses == pytest.approx(ddp_losses, rel=1e-5), name
        assert report_without_times(run) == ddp_report, name
        for folder in ("checkpoint-2", "checkpoint-4", "final"):
            # Our own auto classes, our own code files only, and the tied output embedding saved once.
            config = json.loads((run / "run" / folder / "config.json").read_text())
            assert config["auto_map"] == AUTO_MAP, (name, folder)
            code_files = {path.name for path in (run / "run" / folder).glob("*.py")} - DEEPSPEED_SCRIPTS
            assert code_files == OUR_CODE_FILES, (name, folder)
            with safe_open(str(run / "run" / folder / "model.safetensors"), framework="pt") as weights:
                assert "language_model.lm_head.weight" not in weights.keys(), (name, folder)
    initial = load_file(str(ddp / "run" / "checkpoint-2" / "model.safetensors"))
    final = load_file(str(ddp / "run" / "final" / "model.safetensors"))
    assert not torch.equal(initial["audio_projectors.4.linear_1.weight"], final["audio_projectors.4.linear_1.weight"])

    # A Hub user's fresh process loads every checkpoint of every run and transcribes with the final ones.
    workdir = tmp_path / "reload"
    workdir.mkdir()
    checkpoints = {
        f"{name}-{folder}": str(run / "run" / folder)
        for name, run in runs.items()
        for folder in ("checkpoint-2", "final")
    }
    finals = {name: str(run / "run" / "final") for name, run in runs.items()}
    (workdir / "folders.json").write_text(json.dumps({"checkpoints": checkpoints, "finals": finals}))
    clip = load_split(workspace / "corpus", "test")[0]
    (workdir / "clip.wav").write_bytes(clip["audio"]["bytes"])
    (workdir / "clip.mp4").write_bytes(clip["video"]["bytes"])
    run_isolated(RELOAD_AND_TRANSCRIBE, workdir)
    for name in ("fsdp", "zero2"):
        for folder in ("checkpoint-2", "final"):
            expected = torch.load(workdir / f"ddp-{folder}.pt")
            actual = torch.load(workdir / f"{name}-{folder}.pt")
            assert actual.keys() == expected.keys()
            for key in expected:  # FSDP reduce-scatters what DDP all-reduces: a few last bits may differ
                message = f"{name}/{folder}: {key}"
                torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=1e-5, msg=message)
    outputs = json.loads((workdir / "outputs.json").read_text())
    assert all(len(tokens) == 8 for tokens in outputs["ddp"]["tokens"])
    for name in ("fsdp", "zero2"):
        assert outputs[name]["tokens"] == outputs["ddp"]["tokens"], name
        assert outputs[name]["transcripts"] == outputs["ddp"]["transcripts"], name
        scores, ddp_scores = torch.tensor(outputs[name]["scores"]), torch.tensor(outputs["ddp"]["scores"])
        torch.testing.assert_close(scores, ddp_scores, atol=1e-5, rtol=1e-5, msg=name)


def test_deepspeed_zero3_is_refused_before_assembly(workspace, tmp_path):
    model_args, _, _ = parse_arguments(tiny_arguments(workspace, tmp_path))
    # What the Trainer's arguments set up under a ZeRO-3 config: transformers follows it while it lives.
    zero3_config = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}})
    try:
        with pytest.raises(ValueError, match="ZeRO-3 is not supported; shard the parameters with .*fsdp.yaml"):
            train.build_model(model_args)
    finally:
        del zero3_config


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
        model.video_encoder.encoder.layers[0].feed_forward.intermediate_dense.weight, state["encoder.layers.0.fc1.weight"]
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
    if config.name == "lrs3_avsr.yaml":  # nothing overridden: the authors' recipe
        assert training_args.learning_rate == 1e-3 and training_args.weight_decay == 0.1
        assert training_args.max_grad_norm == 10.0
        assert training_args.lr_scheduler_type == "cosine" and training_args.warmup_steps == 0
        assert (model_args.audio_rates, model_args.video_rates) == ([4, 16], [2, 5])


def test_video_only_runs_default_to_the_vsr_learning_rate(workspace, tmp_path):
    _, _, training_args = parse_arguments(tiny_arguments(workspace, tmp_path, modality="video"))
    assert training_args.learning_rate == 5e-4
