"""Fast decoding: a static KV cache and compiled decoding give the eager transcripts token for token (greedy and beam
search, one clip, a batch, a batch of mixed scales), int8 LLM weights load with outputs close to full precision, and
the pipeline, the evaluation and the decoding benchmark use them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import CompileConfig, WhisperConfig

from llama_mtsk import LlamaMTSKForConditionalGeneration
from llama_mtsk.modeling_llama_mtsk import MatryoshkaLoRALinear
from llama_mtsk.pipeline_llama_mtsk import LlamaMTSKPipeline
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from llama_mtsk.quantization import keeps_precision, llm_quantization_config, quantize_language_model
from mtsk_data.synthetic.corpus import generate_corpus
from mtsk_train import evaluation

from media_samples import mouth_frames, signal
from tiny_models import tiny_inputs, tiny_model, tiny_tokenizer


REPO = Path(__file__).resolve().parents[1]


NEW_TOKENS = {"max_new_tokens": 8}
# Row counts and scales: one clip, a batch at the finest scale, a batch whose rows each have their own scale.
CASES = {
    "one clip": ([1.3], [33], (16, 5)),
    "batch": ([1.6, 1.0, 0.7], [40, 25, 18], None),
    "mixed scales": ([1.6, 1.0, 0.7], [40, 25, 18], [(4, 2), (16, 5), (4, 5)]),
}
DECODING = {"greedy": {}, "beam search": {"num_beams": 3}}


def lively_model() -> LlamaMTSKForConditionalGeneration:
    """A tiny model whose LLM weights are 10x the random init: its transcripts vary from token to token and beam
    search departs from greedy decoding, so a cache that loses or misplaces a token changes the transcript."""
    model = tiny_model(modality="audiovisual", lora_strategy="mss")
    with torch.no_grad():
        for name, parameter in model.language_model.named_parameters():
            if parameter.dim() == 2 and ".lora_" not in name:
                parameter.mul_(10.0)
    return model


@pytest.fixture(scope="module")
def model() -> LlamaMTSKForConditionalGeneration:
    return lively_model()


def case_inputs(model, case: str) -> tuple[dict[str, torch.Tensor], object]:
    audio_seconds, video_frames, scale = CASES[case]
    return tiny_inputs(model.config, audio_seconds=audio_seconds, video_frames=video_frames), scale


def scored_generate(model, inputs, scale, **generate_kwargs):
    return model.generate(
        **inputs, scale=scale, return_dict_in_generate=True, output_scores=True, **NEW_TOKENS, **generate_kwargs
    )


def assert_same_decoding(reference, candidate, atol: float = 1e-4) -> None:
    """The same tokens, and at every step the same scores (to float rounding)."""
    assert torch.equal(candidate.sequences, reference.sequences)
    assert len(candidate.scores) == len(reference.scores)
    for step, (expected, actual) in enumerate(zip(reference.scores, candidate.scores)):
        torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=f"scores of step {step}")


def cpu_compile_config(backend) -> CompileConfig:
    """transformers compiles decoding on accelerators only, unless the config says every device (its switch for
    tests). `fullgraph=True`: any graph break in the LLM's forward fails the test."""
    config = CompileConfig(backend=backend, mode=None, fullgraph=True)
    config._compile_all_devices = True
    return config


def graph_recorder(graphs: list[torch.fx.GraphModule]):
    """A torch.compile backend that runs each captured graph as it is and appends it to `graphs`. A function, not an
    object: `CompileConfig` deep-copies its settings, and a copied object would record into its own copy."""

    def backend(graph: torch.fx.GraphModule, example_inputs: list):
        graphs.append(graph)
        return graph.forward

    return backend


def test_the_lively_model_gives_varied_transcripts_where_beam_search_departs_from_greedy(model):
    inputs, scale = case_inputs(model, "mixed scales")
    greedy = model.generate(**inputs, scale=scale, **NEW_TOKENS)
    beam = model.generate(**inputs, scale=scale, num_beams=3, **NEW_TOKENS)
    assert all(len(set(row.tolist())) >= 3 for row in greedy)
    assert not torch.equal(greedy, beam)


@pytest.mark.parametrize("decoding", DECODING)
@pytest.mark.parametrize("case", CASES)
def test_static_cache_decodes_as_the_dynamic_cache(model, case, decoding):
    inputs, scale = case_inputs(model, case)
    dynamic = scored_generate(model, inputs, scale, **DECODING[decoding])
    static = scored_generate(model, inputs, scale, cache_implementation="static", **DECODING[decoding])
    assert_same_decoding(dynamic, static)


@pytest.mark.parametrize("case", CASES)
def test_compiled_decoding_equals_eager_and_compiles_the_llm_once_per_scale_set(model, case):
    inputs, scale = case_inputs(model, case)
    eager = scored_generate(model, inputs, scale)
    graphs = []
    compiled_kwargs = {"cache_implementation": "static", "compile_config": cpu_compile_config(graph_recorder(graphs))}
    compiled = scored_generate(model, inputs, scale, **compiled_kwargs)
    assert_same_decoding(eager, compiled)
    # One whole graph of the LLM's forward (fullgraph), reused by every decoding step and by the next call.
    assert len(graphs) == 1
    again = scored_generate(model, inputs, scale, **compiled_kwargs)
    assert_same_decoding(eager, again)
    assert len(graphs) == 1


def test_compiled_decoding_routes_the_lora_adapters_once_per_call(model, monkeypatch):
    """Routing reads the scales back from the device: once for the prefill and once for all the decoding steps, not
    once per token."""
    inputs, scale = case_inputs(model, "mixed scales")
    routings = []
    route = model.lora_routes_for
    monkeypatch.setattr(model, "lora_routes_for", lambda scale_index: routings.append(scale_index) or route(scale_index))
    generated = model.generate(
        **inputs, scale=scale, cache_implementation="static", compile_config=cpu_compile_config("eager"), **NEW_TOKENS
    )
    assert generated.shape[1] == NEW_TOKENS["max_new_tokens"]
    assert len(routings) == 2


def test_beam_search_with_a_compile_config_equals_eager(model):
    """transformers' beam search runs the model eagerly at every step; the static cache and a compile config leave
    its transcripts unchanged."""
    inputs, scale = case_inputs(model, "mixed scales")
    eager = scored_generate(model, inputs, scale, num_beams=3)
    static = scored_generate(
        model, inputs, scale, num_beams=3, cache_implementation="static", compile_config=cpu_compile_config("eager")
    )
    assert_same_decoding(eager, static)


def test_compiled_decoding_through_aot_autograd_equals_eager(model):
    """`aot_eager` also functionalises the graph (the static cache's in-place writes), as inductor does."""
    inputs, scale = case_inputs(model, "mixed scales")
    eager = scored_generate(model, inputs, scale)
    compiled = scored_generate(
        model, inputs, scale, cache_implementation="static", compile_config=cpu_compile_config("aot_eager")
    )
    assert_same_decoding(eager, compiled)


# ---------------------------------------------------------------------------------------------------------------------
# int8 LLM weights
# ---------------------------------------------------------------------------------------------------------------------


def quantized_parameters(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if type(parameter.data) is not torch.Tensor}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("full_precision")
    model.save_pretrained(folder)
    return folder


def test_int8_loading_quantises_exactly_the_llm_projections(saved_model):
    quantized = LlamaMTSKForConditionalGeneration.from_pretrained(
        saved_model, quantization_config=llm_quantization_config("int8")
    )
    llm_projections = {
        f"{name}.weight"
        for name, module in quantized.named_modules()
        if name.startswith("language_model.model.layers.")
        and ".lora_" not in name
        and type(module) in (nn.Linear, MatryoshkaLoRALinear)
    }
    # q, k, v, o, gate, up, down in each of the two layers; q and v carry the LoRA adapters.
    assert len(llm_projections) == 2 * 7
    assert quantized_parameters(quantized) == llm_projections
    assert all(type(quantized.get_parameter(name).data).__name__ == "Int8Tensor" for name in llm_projections)
    # The adapters, encoders, projectors and the tied embedding / LM head keep full precision.
    for name, parameter in quantized.named_parameters():
        if name not in llm_projections:
            assert parameter.dtype == torch.float32 and type(parameter.data) is torch.Tensor, name
    assert quantized.get_output_embeddings().weight is quantized.get_input_embeddings().weight
    assert keeps_precision("language_model.model.layers.0.self_attn.q_proj.lora_A.global")
    assert not keeps_precision("language_model.model.layers.0.self_attn.q_proj")


@pytest.mark.parametrize("case", ["batch", "mixed scales"])
def test_int8_weights_decode_close_to_full_precision(model, saved_model, case):
    quantized = LlamaMTSKForConditionalGeneration.from_pretrained(
        saved_model, quantization_config=llm_quantization_config("int8")
    )
    inputs, scale = case_inputs(model, case)
    full_logits = model(**inputs, scale=scale).logits
    int8_logits = quantized(**inputs, scale=scale).logits
    # Per-row int8 weights: here within 2.3 % of the largest logit; 5 % leaves room for rounding elsewhere.
    assert (int8_logits - full_logits).abs().max() <= 0.05 * full_logits.abs().max()
    full = scored_generate(model, inputs, scale)
    int8 = scored_generate(quantized, inputs, scale)
    assert torch.equal(int8.sequences, full.sequences)
    # The options combine: int8 weights with the static cache and compiled decoding decode as int8 eagerly.
    compiled = scored_generate(
        quantized, inputs, scale, cache_implementation="static", compile_config=cpu_compile_config("eager")
    )
    assert_same_decoding(int8, compiled)


def test_quantizing_a_loaded_model_equals_quantizing_at_load_and_survives_saving(saved_model, tmp_path):
    at_load = LlamaMTSKForConditionalGeneration.from_pretrained(
        saved_model, quantization_config=llm_quantization_config("int8")
    )
    after_load = quantize_language_model(LlamaMTSKForConditionalGeneration.from_pretrained(saved_model), "int8")
    assert quantized_parameters(after_load) == quantized_parameters(at_load)
    inputs, scale = case_inputs(at_load, "mixed scales")
    logits = at_load(**inputs, scale=scale).logits
    assert torch.equal(after_load(**inputs, scale=scale).logits, logits)

    at_load.save_pretrained(tmp_path)
    reloaded = LlamaMTSKForConditionalGeneration.from_pretrained(tmp_path)
    assert quantized_parameters(reloaded) == quantized_parameters(at_load)
    assert torch.equal(reloaded(**inputs, scale=scale).logits, logits)


def test_unknown_quantisation_kinds_are_refused_by_name():
    with pytest.raises(ValueError, match=r"one of \('int8', 'int4'\), got 'int3'"):
        llm_quantization_config("int3")
    with pytest.raises(ValueError, match="got 'fp8'"):
        quantize_language_model(tiny_model(modality="audio", audio_rates=[4]), "fp8")


# ---------------------------------------------------------------------------------------------------------------------
# Where the options are used: the pipeline, the evaluation, the benchmark
# ---------------------------------------------------------------------------------------------------------------------


def test_the_pipeline_passes_the_static_cache_and_compile_config_to_generate(model):
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    asr = LlamaMTSKPipeline(model=model, processor=processor, device=-1)
    clips = [
        {"audio": signal(seconds, seed=seed), "sampling_rate": 16000, "video": mouth_frames(frames, seed=seed)}
        for seconds, frames, seed in ((1.2, 30, 1), (0.8, 20, 2))
    ]
    eager = asr(clips, batch_size=2, **NEW_TOKENS)
    compiled = asr(
        clips, batch_size=2, cache_implementation="static", compile_config=cpu_compile_config("eager"), **NEW_TOKENS
    )
    assert [result["text"] for result in compiled] == [result["text"] for result in eager]
    assert all(len(result["text"].split()) >= 2 for result in eager)


def test_evaluation_refuses_compile_off_cuda(capsys):
    with pytest.raises(SystemExit):
        evaluation.main(["--model", "unused", "--data", "unused", "--device", "cpu", "--compile"])
    assert "--compile needs a CUDA device" in capsys.readouterr().err


def run_decode_speed(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "benchmarks" / "decode_speed.py"), *arguments]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


def test_decode_speed_benchmark_runs_its_gpu_part_on_tiny_shapes_and_reports_it(tmp_path):
    measured, results, report = tmp_path / "decode.json", tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    run_decode_speed("--smoke", "--sizes", "1b", "--compile_backend", "eager", "--output", str(measured))
    section = json.loads(measured.read_text())["shapes"]["1b"]
    assert [row["batch_size"] for row in section["decoding"]] == [1, 8]
    for row in section["decoding"]:
        # fp32 on CPU: the compiled decoding step writes the eager tokens.
        assert row["rows_equal_to_eager"] == row["batch_size"]
        assert row["eager"]["per_token_ms"] > 0 and row["static + compiled"]["clips_per_s"] > 0
    float32, int8 = section["weights"]
    assert (float32["weights"], int8["weights"]) == ("float32", "int8")
    assert int8["llm_bytes_per_token"] < section["llm_bytes_per_token"]
    assert int8["batch_1"]["per_token_ms"] > 0

    results.write_text(json.dumps({}))
    run_decode_speed("--results", str(results), "--report", str(report), "--merge", str(measured))
    text = report.read_text()
    assert "## Fast decoding" in text and "GPU figures not measured yet" not in text
    assert "| 1 |" in text and "| int8 |" in text


def test_decode_speed_bandwidth_table_and_weight_bytes():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from decode_speed import llm_bytes_per_token, memory_bandwidth_tb_s, stored_bytes

    assert memory_bandwidth_tb_s("NVIDIA H200") == 4.8
    assert memory_bandwidth_tb_s("NVIDIA H100 80GB HBM3") == 3.35
    assert memory_bandwidth_tb_s("NVIDIA L40S") == 0.864 and memory_bandwidth_tb_s("NVIDIA L4") == 0.3
    assert memory_bandwidth_tb_s("Some Future GPU") is None
    model = tiny_model(modality="audio", lora_strategy="mss", audio_rates=[4, 16])
    llm = model.language_model
    base = sum(parameter.numel() for name, parameter in llm.named_parameters() if ".lora_" not in name)
    routed = sum(
        parameter.numel() for name, parameter in llm.named_parameters() if ".global." in name or ".a4." in name
    )
    assert llm_bytes_per_token(model, (4, None)) == 4 * (base + routed)
    linear = nn.Linear(64, 32)
    full = stored_bytes(linear.weight.data)
    quantize_language_model(nn.ModuleDict({"language_model": nn.ModuleDict({"proj": linear})}), "int8")
    # One byte per weight plus one scale per output row.
    assert stored_bytes(linear.weight.data) < full / 3


def test_wer_under_each_option_on_a_tiny_saved_checkpoint(tmp_path):
    generate_corpus(str(tmp_path / "corpus"), num_train=1, num_validation=1, num_test=3, seed=3, workers=1)
    checkpoint = tmp_path / "checkpoint"
    # An 8-second Whisper window: the corpus's sentences run longer than the tiny models' 2 seconds.
    whisper = WhisperConfig(
        d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=8, max_source_positions=400
    )
    model = tiny_model(modality="audiovisual", lora_strategy="mss", audio_config=whisper)
    model.save_pretrained(checkpoint)
    LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer()).save_pretrained(checkpoint)
    results, report = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    run_decode_speed(
        "--wer", str(checkpoint), "--data", str(tmp_path / "corpus"), "--compile_backend", "eager",
        "--results", str(results), "--report", str(report),
    )
    wer = json.loads(results.read_text())["decode_speed"]["wer"]
    options = wer["options"]
    assert list(options) == ["eager", "static cache", "static cache + compiled", "int8 LLM weights"]
    assert wer["utterances"] == 3
    for name in ("static cache", "static cache + compiled"):
        assert options[name]["wer_percent"] == options["eager"]["wer_percent"]
        assert options[name]["same_transcripts_as_eager"] == options[name]["transcripts"] == 3 * len(model.config.scales)
    assert set(options["int8 LLM weights"]["wer_percent"]) == set(options["eager"]["wer_percent"])
    assert "| static cache + compiled |" in report.read_text()
