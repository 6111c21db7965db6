"""Calibrating the cascade: replaying it from every scale's decodes equals running it, and the chosen threshold is
the cheapest that keeps the WER within the allowed increase."""

import math

import numpy as np
import pytest
import torch

from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor, normalize_text
from mtsk_data.collator import MTSKCollator
from mtsk_train.cascade import ScaleDecodes, choose_threshold, decode_every_scale, replay_cascade
from media_samples import signal
from tiny_models import WORDS, tiny_model, tiny_tokenizer


def records(count: int = 6) -> list[dict]:
    generator = np.random.default_rng(0)
    return [
        {
            "id": f"clip-{index}",
            "text": " ".join(generator.choice(WORDS, size=3)),
            "audio": signal(0.6 + 0.25 * index, seed=index).astype(np.float32),
        }
        for index in range(count)
    ]


@pytest.mark.parametrize("confidence", ["mean", "min"])
def test_replayed_cascade_equals_the_generated_one(confidence):
    model = tiny_model(modality="audio", lora_strategy="mss", audio_rates=[4, 8, 16])
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    clips = records()
    decodes = decode_every_scale(model, processor, clips, batch_size=4, generate_kwargs={"max_new_tokens": 5})
    assert [decoded.scale for decoded in decodes] == model.cascade_order()
    references = [normalize_text(clip["text"]) for clip in clips]
    values = sorted(decodes[0].confidences[confidence])
    threshold = (values[2] + values[3]) / 2
    replayed = replay_cascade(decodes, references, confidence, threshold)

    inputs = {name: value for name, value in MTSKCollator(processor, modality="audio")(clips).items() if name != "labels"}
    generated = model.generate(
        **inputs, scale="cascade", cascade_threshold=threshold, cascade_confidence=confidence,
        return_dict_in_generate=True, max_new_tokens=5,
    )
    hypotheses = [normalize_text(text) for text in processor.batch_decode(generated.sequences)]
    import jiwer

    assert replayed.wer == pytest.approx(jiwer.wer(references, hypotheses))
    assert replayed.mean_llm_tokens == pytest.approx(float(generated.llm_tokens.float().mean()))
    shares = {str(scale): [str(s) for s in generated.scales].count(str(scale)) / len(clips) for scale in model.cascade_order()}
    assert replayed.final_scales == shares
    assert 0 < shares[str(model.cascade_order()[0])] < 1


def test_the_cheapest_threshold_within_the_allowed_increase_is_chosen():
    references = ["a b", "c d", "e f", "g h"]
    coarse = ScaleDecodes((16, None), ["a b", "c x", "e f", "x x"], {"mean": [-0.1, -0.9, -0.2, -0.5], "min": [-0.2, -2.0, -0.3, -1.0]}, [10, 10, 10, 10])
    fine = ScaleDecodes((4, None), ["a b", "c d", "e f", "g h"], {"mean": [-0.1] * 4, "min": [-0.1] * 4}, [30, 30, 30, 30])
    best, frontier = choose_threshold([coarse, fine], references, max_wer_increase=0.0)
    # Rows 1 and 3 are wrong at the coarse scale and the least confident: a threshold between -0.5 and -0.2 sends
    # exactly them on, for (10 + 10 + 40 + 40) / 4 = 25 tokens a clip at the finest scale's WER of 0.
    assert best.wer == 0.0
    assert best.mean_llm_tokens == pytest.approx(25.0)
    assert -0.5 < best.threshold < -0.2 if best.confidence == "mean" else -1.0 < best.threshold < -0.3
    assert {point.threshold for point in frontier} >= {-math.inf, math.inf}
    loose, _ = choose_threshold([coarse, fine], references, max_wer_increase=1.0)
    assert loose.threshold == -math.inf and loose.mean_llm_tokens == 10
