"""The Matryoshka LoRA routing belongs to the call: concurrent calls at different scales do not disturb each other,
nothing stays routed after a call, and activation checkpointing recomputes with the routes of its forward pass."""

import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from llama_mtsk.modeling_llama_mtsk import MatryoshkaLoRALinear, use_lora_routes
from llama_mtsk.pipeline_llama_mtsk import LlamaMTSKPipeline
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_train.trainer import train_mode

from media_samples import mouth_frames, signal
from tiny_models import tiny_inputs, tiny_model, tiny_tokenizer


FAST = {"max_new_tokens": 8, "min_new_tokens": 8}


@pytest.fixture
def one_intra_op_thread():
    """Our own threads, not torch's intra-op ones, interleave the calls."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_in_threads(jobs: list, calls_per_thread: int) -> list[list]:
    """Runs each job (a no-argument callable) `calls_per_thread` times on its own thread, all threads at once."""
    results: list[list] = [[] for _ in jobs]
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def worker(index: int) -> None:
        try:
            start.wait()
            for _ in range(calls_per_thread):
                results[index].append(jobs[index]())
        except BaseException as error:  # re-raised in the main thread below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("modality", ["audio", "audiovisual"])
def test_four_threads_at_different_scales_equal_sequential_calls(modality, one_intra_op_thread):
    model = tiny_model(modality=modality, lora_strategy="mss", audio_rates=[4, 16])
    inputs = tiny_inputs(model.config)
    scales = model.config.scales

    def job(scale):
        return lambda: model.generate(**inputs, scale=scale, output_scores=True, return_dict_in_generate=True, **FAST)

    sequential = [job(scale)() for scale in scales]
    # The scales disagree, so a row decoded with another call's adapters would show.
    assert any(not torch.equal(sequential[0].sequences, other.sequences) for other in sequential[1:])
    concurrent = run_in_threads([job(scale) for scale in scales], calls_per_thread=5)
    for scale, reference, outputs in zip(scales, sequential, concurrent):
        for output in outputs:
            assert torch.equal(output.sequences, reference.sequences), scale
            for step_scores, reference_scores in zip(output.scores, reference.scores):
                torch.testing.assert_close(step_scores, reference_scores, rtol=0, atol=0)


def test_pipeline_from_four_threads_equals_sequential_transcripts(one_intra_op_thread):
    model = tiny_model(modality="audiovisual", lora_strategy="ss")
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    asr = LlamaMTSKPipeline(model=model, processor=processor, device=-1)
    clips = [
        {"audio": signal(1.2, seed=seed), "video": mouth_frames(30, seed=seed), "sampling_rate": 16000} for seed in range(4)
    ]
    scales = model.config.scales

    def job(clip, scale):
        return lambda: asr(dict(clip), scale=scale, generate_kwargs=FAST)["text"]

    sequential = [job(clip, scale)() for clip, scale in zip(clips, scales)]
    concurrent = run_in_threads([job(clip, scale) for clip, scale in zip(clips, scales)], calls_per_thread=5)
    for expected, texts in zip(sequential, concurrent):
        assert texts == [expected] * 5


@pytest.mark.parametrize("strategy", ["ms", "ss", "mss"])
def test_after_a_call_the_language_model_is_the_plain_llm(strategy):
    model = tiny_model(modality="audio", lora_strategy=strategy)
    plain = AutoModelForCausalLM.from_config(model.config.text_config)
    base_weights = {name: value for name, value in model.language_model.state_dict().items() if ".lora_" not in name}
    plain.load_state_dict(base_weights)
    plain.eval()
    prompt = torch.tensor([[1, 12, 13, 14, 15]])
    expected = plain(input_ids=prompt).logits

    model.generate(**tiny_inputs(model.config), scale=model.config.scales[-1], **FAST)
    model(**tiny_inputs(model.config), scale=model.config.scales[0])
    torch.testing.assert_close(model.language_model(input_ids=prompt).logits, expected, rtol=0, atol=0)
    # Inside a route the adapters do run: the comparison above would catch a leaked route.
    with use_lora_routes(model.lora_routes_for(torch.tensor([0]))):
        assert not torch.allclose(model.language_model(input_ids=prompt).logits, expected)


def test_every_lora_layer_reads_the_active_routes_only():
    model = tiny_model(modality="audio", lora_strategy="mss")
    assert not any(hasattr(module, "routing") for module in model.modules() if isinstance(module, MatryoshkaLoRALinear))
    routes = model.lora_routes_for(torch.tensor([0, 1]))
    assert set(routes) == {"global", model.config.scale_name(model.config.scales[0]),
                           model.config.scale_name(model.config.scales[1])}
    assert routes["global"].index is None
    assert routes[model.config.scale_name(model.config.scales[1])].index.tolist() == [1]


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_recomputation_uses_the_forward_routes(use_reentrant):
    model = train_mode(tiny_model(modality="audiovisual", lora_strategy="mss").freeze_for_training())
    inputs = tiny_inputs(model.config)
    labels = torch.tensor([[20, 21, 22, model.config.eos_token_id], [23, 24, model.config.eos_token_id, -100]])

    def gradients():
        model.zero_grad()
        model(**inputs, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    reference = gradients()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    if use_reentrant:
        # Reentrant checkpointing only back-propagates into layers whose input requires a gradient.
        model.enable_input_require_grads()
    checkpointed = gradients()
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], atol=1e-5, rtol=0, msg=name)
