"""Adaptive inference: `scale="auto"` under a token budget, and the confidence cascade from coarse to fine scales;
both, and fixed scales, from precomputed audio encoder outputs."""

import math

import pytest
import torch

from tiny_models import count_audio_encodings, single_sample, tiny_inputs, tiny_model


FAST = {"max_new_tokens": 6}


@pytest.fixture(scope="module")
def av_model():
    return tiny_model(modality="audiovisual", lora_strategy="mss")


@pytest.fixture(scope="module")
def audio_model():
    return tiny_model(modality="audio", lora_strategy="ss", audio_rates=[2, 4, 8, 16])


def test_cascade_order_runs_from_the_coarsest_scale(av_model, audio_model):
    assert av_model.cascade_order() == [(16, 5), (16, 2), (4, 5), (4, 2)]
    assert audio_model.cascade_order() == [(16, None), (8, None), (4, None), (2, None)]


@pytest.mark.parametrize("fixture", ["av_model", "audio_model"])
def test_auto_picks_per_row_the_finest_scale_under_the_budget(fixture, request):
    model = request.getfixturevalue(fixture)
    inputs = tiny_inputs(model.config, audio_seconds=[1.9, 0.6, 1.2], video_frames=[47, 15, 30])
    if not model.config.uses_video:
        inputs = {name: value for name, value in inputs.items() if "video" not in name}
    tokens = model.llm_input_tokens_per_scale(**inputs)  # (scales, rows)
    every_row_fits = int(tokens.min(0).values.max())
    budgets = sorted({int(value) for value in tokens.flatten() if value >= every_row_fits}) + [10_000]
    assert len(budgets) > 4
    for budget in budgets:
        chosen = model.scales_within_budget(budget, **inputs)
        for row, scale in enumerate(chosen):
            fitting = [index for index in range(len(model.config.scales)) if tokens[index, row] <= budget]
            index = model.config.scales.index(scale)
            assert tokens[index, row] <= budget
            assert tokens[index, row] == max(tokens[other, row] for other in fitting), (budget, row)
        # Rows may end at different scales; each decodes as it would at its scale alone.
        auto = model.generate(**inputs, scale="auto", max_llm_tokens=budget, **FAST)
        assert torch.equal(auto, model.generate(**inputs, scale=chosen, **FAST))
    # Between the extremes the rows of different lengths end at different scales.
    assert any(len(set(model.scales_within_budget(budget, **inputs))) > 1 for budget in budgets)


def test_auto_refuses_a_budget_no_scale_fits(av_model):
    inputs = tiny_inputs(av_model.config)
    cheapest = int(av_model.llm_input_tokens_per_scale(**inputs)[:, 0].min())
    with pytest.raises(ValueError, match=f"fits no trained scale for sample 0: its cheapest scale .* needs {cheapest}"):
        av_model.generate(**inputs, scale="auto", max_llm_tokens=cheapest - 1)
    with pytest.raises(ValueError, match="max_llm_tokens, a positive integer"):
        av_model.generate(**inputs, scale="auto")
    with pytest.raises(ValueError, match='budget of scale="auto"'):
        av_model.generate(**inputs, scale=(4, 2), max_llm_tokens=100)
    with pytest.raises(ValueError, match="not a choice"):
        av_model.generate(**inputs, scale="fastest")


def test_cascade_at_the_extremes_equals_the_coarsest_and_the_finest_scale(av_model):
    inputs = tiny_inputs(av_model.config)
    coarsest, finest = av_model.cascade_order()[0], av_model.cascade_order()[-1]
    for threshold, scale in ((-math.inf, coarsest), (math.inf, finest)):
        cascade = av_model.generate(**inputs, scale="cascade", cascade_threshold=threshold, return_dict_in_generate=True, **FAST)
        direct = av_model.generate(**inputs, scale=scale, return_dict_in_generate=True, **FAST)
        assert torch.equal(cascade.sequences, direct.sequences)
        assert cascade.scales == [scale, scale]
        assert cascade.scales == direct.scales
    # At +inf every row pays for every pass: the sum of each pass's input and generated tokens.
    cascade = av_model.generate(**inputs, scale="cascade", cascade_threshold=math.inf, return_dict_in_generate=True, **FAST)
    passes = [av_model.generate(**inputs, scale=scale, return_dict_in_generate=True, **FAST) for scale in av_model.cascade_order()]
    assert torch.equal(cascade.llm_tokens, sum(output.llm_tokens for output in passes))
    input_tokens = av_model.count_llm_input_tokens(coarsest, **inputs)
    assert bool((passes[0].llm_tokens > input_tokens).all()) and bool((passes[0].llm_tokens <= input_tokens + 6).all())


def test_cascade_in_between_stops_each_row_where_it_is_confident(av_model):
    inputs = tiny_inputs(av_model.config, audio_seconds=[1.9, 0.6, 1.2, 1.5], video_frames=[47, 15, 30, 38])
    order = av_model.cascade_order()
    coarse = av_model.generate(**inputs, scale=order[0], output_scores=True, return_dict_in_generate=True, **FAST)
    confidence = av_model._confidence(coarse, "mean")
    threshold = float(confidence.median())
    cascade = av_model.generate(**inputs, scale="cascade", cascade_threshold=threshold, return_dict_in_generate=True, **FAST)
    for row in range(4):
        if confidence[row] >= threshold:
            assert cascade.scales[row] == order[0]
        else:
            assert order.index(cascade.scales[row]) > 0
    assert len(set(cascade.scales)) > 1
    # Batched equals each sample run alone.
    for row in range(4):
        alone = av_model.generate(
            **single_sample(inputs, row), scale="cascade", cascade_threshold=threshold, return_dict_in_generate=True, **FAST
        )
        assert alone.scales == [cascade.scales[row]]
        length = alone.sequences.shape[1]
        assert torch.equal(alone.sequences[0], cascade.sequences[row, :length])
        assert int(alone.llm_tokens[0]) == int(cascade.llm_tokens[row])


def test_cascade_with_beam_search_and_the_min_confidence(audio_model):
    inputs = {name: value for name, value in tiny_inputs(audio_model.config).items() if "video" not in name}
    finest = audio_model.cascade_order()[-1]
    cascade = audio_model.generate(
        **inputs, scale="cascade", cascade_threshold=math.inf, cascade_confidence="min", num_beams=3, **FAST
    )
    assert torch.equal(cascade, audio_model.generate(**inputs, scale=finest, num_beams=3, **FAST))
    with pytest.raises(ValueError, match='"mean" or "min"'):
        audio_model.generate(**inputs, scale="cascade", cascade_threshold=0.0, cascade_confidence="median", **FAST)


def test_cascade_needs_a_threshold_and_reads_the_calibrated_one(audio_model, tmp_path):
    inputs = {name: value for name, value in tiny_inputs(audio_model.config).items() if "video" not in name}
    with pytest.raises(ValueError, match="needs cascade_threshold"):
        audio_model.generate(**inputs, scale="cascade", **FAST)
    audio_model.generation_config.cascade_threshold = -math.inf
    try:
        calibrated = audio_model.generate(**inputs, scale="cascade", **FAST)
        assert torch.equal(calibrated, audio_model.generate(**inputs, scale=audio_model.cascade_order()[0], **FAST))
    finally:
        del audio_model.generation_config.cascade_threshold


def test_pipeline_reports_the_scale_and_cost_of_auto_and_cascade(audio_model):
    from llama_mtsk.pipeline_llama_mtsk import LlamaMTSKPipeline
    from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor

    from media_samples import signal
    from tiny_models import tiny_tokenizer

    processor = LlamaMTSKProcessor.from_model_config(audio_model.config, tiny_tokenizer())
    asr = LlamaMTSKPipeline(model=audio_model, processor=processor, device=-1)
    clips = [signal(1.6, seed=1), signal(0.7, seed=2)]
    inputs = processor(audio=clips, sampling_rate=16000)
    tokens = audio_model.llm_input_tokens_per_scale(**inputs)
    budget = int(tokens[:, 0].min()) + 1  # the long clip fits only its cheapest scale, the short one a finer one
    expected = audio_model.scales_within_budget(budget, **inputs)
    assert expected[0] != expected[1]
    results = asr(clips, scale="auto", max_llm_tokens=budget, generate_kwargs=FAST, batch_size=2)
    assert [result["scale"] for result in results] == [audio_rate for audio_rate, _ in expected]
    direct = audio_model.generate(**inputs, scale=expected, return_dict_in_generate=True, **FAST)
    assert [result["text"] for result in results] == processor.batch_decode(direct.sequences)
    assert [result["llm_tokens"] for result in results] == direct.llm_tokens.tolist()

    finest = audio_model.cascade_order()[-1]
    cascade = asr(clips[0], scale="cascade", cascade_threshold=math.inf, generate_kwargs=FAST)
    assert cascade["scale"] == finest[0]
    assert cascade["text"] == asr(clips[0], scale=finest[0], generate_kwargs=FAST)["text"]
    assert cascade["llm_tokens"] > asr(clips[0], scale=finest[0], generate_kwargs=FAST)["llm_tokens"]
    with pytest.raises(ValueError, match="not a choice"):
        asr(clips[0], scale="best")


def test_generate_from_encoder_outputs_transcribes_as_from_the_features(av_model):
    inputs = tiny_inputs(av_model.config)
    encoded = {
        **av_model.precompute_audio_encoder_outputs(inputs["input_features"], inputs["input_features_mask"]),
        "pixel_values_videos": inputs["pixel_values_videos"],
        "pixel_values_videos_mask": inputs["pixel_values_videos_mask"],
    }
    options = {"max_new_tokens": 5, "return_dict_in_generate": True}
    budget = int(av_model.llm_input_tokens_per_scale(**inputs).float().mean())
    # A threshold between the two rows' confidences at the coarsest scale: one row stops there, the other goes on.
    coarsest = av_model.generate(**inputs, scale="cascade", cascade_threshold=-math.inf, **options)
    threshold = float(coarsest.confidences.mean())
    for scale in [(4, 2), [(16, 5), (4, 2)], "auto", "cascade"]:
        extra = {"max_llm_tokens": budget} if scale == "auto" else {"cascade_threshold": threshold} if scale == "cascade" else {}
        expected = av_model.generate(**inputs, scale=scale, **extra, **options)
        cached = av_model.generate(**encoded, scale=scale, **extra, **options)
        assert torch.equal(cached.sequences, expected.sequences), scale
        assert cached.scales == expected.scales and torch.equal(cached.llm_tokens, expected.llm_tokens), scale
        if scale == "cascade":
            assert len(set(cached.scales)) == 2  # the rows ended at different scales
    assert torch.equal(av_model.count_llm_input_tokens((4, 2), **encoded), av_model.count_llm_input_tokens((4, 2), **inputs))
    with pytest.raises(ValueError, match="not both"):
        av_model.generate(**inputs, audio_encoder_outputs=encoded["audio_encoder_outputs"],
                          audio_encoder_outputs_mask=encoded["audio_encoder_outputs_mask"], scale=(4, 2))


def test_the_cascade_runs_the_audio_encoder_once_for_all_its_passes(av_model, monkeypatch):
    inputs = tiny_inputs(av_model.config)
    calls = count_audio_encodings(av_model, monkeypatch)
    output = av_model.generate(**inputs, scale="cascade", cascade_threshold=math.inf, return_dict_in_generate=True, **FAST)
    assert output.scales == [av_model.cascade_order()[-1]] * 2  # every pass ran
    assert calls == [2]
