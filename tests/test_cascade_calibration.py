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


def test_calibration_is_stored_in_the_checkpoint_and_loads_in_a_fresh_process(tmp_path):
    import json

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mtsk_data.synthetic.corpus import generate_corpus
    from mtsk_train.assemble import assemble_model
    from mtsk_train.evaluation import main as evaluation_main
    from mtsk_train.hub import save_checkpoint

    from isolated import run_isolated

    generate_corpus(str(tmp_path / "corpus"), num_train=4, num_validation=6, num_test=5, seed=5, workers=1)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "corpus" / "tokenizer")
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    ).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    model, processor = assemble_model(
        llm=str(tmp_path / "llm"),
        audio_encoder={"d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                       "num_mel_bins": 80, "max_source_positions": 200},
        modality="audio", audio_rates=[4, 8, 16], projector_hidden_size=16, lora_r=4, lora_alpha=8,
    )
    save_checkpoint(tmp_path / "model", model.eval(), processor)
    evaluation_main([
        "--model", str(tmp_path / "model"), "--data", str(tmp_path / "corpus"), "--split", "test",
        "--calibrate_cascade", "--budgets", "30,60", "--max_new_tokens", "4", "--batch_size", "4",
    ])
    calibration = json.loads((tmp_path / "model" / "cascade_calibration.json").read_text())
    stored = json.loads((tmp_path / "model" / "generation_config.json").read_text())
    assert stored["cascade_threshold"] == calibration["chosen"]["threshold"]
    assert stored["cascade_confidence"] == calibration["chosen"]["confidence"]
    assert calibration["chosen"]["wer"] <= calibration["finest_wer"] + 0.005 + 1e-12
    report = json.loads((tmp_path / "model" / "eval_report.json").read_text())
    assert [row["mode"] for row in report] == ["fixed"] * 3 + ["auto", "auto", "cascade"]
    assert all(row["mean_llm_tokens_processed"] > row["mean_llm_tokens"] for row in report)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "## Adaptive inference" in card and f"{stored['cascade_threshold']:.4g}" in card

    run_isolated(
        f"""
        import json, math
        import numpy as np
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        assert model.generation_config.cascade_threshold == float({str(stored["cascade_threshold"])!r})
        assert model.generation_config.cascade_confidence == {stored["cascade_confidence"]!r}
        inputs = processor(audio=[np.sin(np.arange(16000) / 9).astype("float32")], sampling_rate=16000)
        out = model.generate(**inputs, scale="cascade", return_dict_in_generate=True, max_new_tokens=3)
        assert out.scales[0] in model.config.scales and int(out.llm_tokens[0]) > 0
        """,
        tmp_path,
    )
