"""Export of one Matryoshka scale to a standard peft LoRA adapter, a plain base LLM and a merged LLM."""

import json
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from mtsk_convert import export_peft as export_module
from mtsk_convert.export_peft import export_peft

from tiny_models import tiny_model, tiny_tokenizer


def llm_logits(model, input_ids, scale):
    with torch.no_grad():
        return model(input_ids=input_ids, scale=scale).logits


@pytest.mark.parametrize("strategy, adapters", [("ms", 1), ("ss", 1), ("mss", 2)])
def test_exported_adapter_reproduces_the_scale(strategy, adapters, tmp_path):
    model = tiny_model(modality="audiovisual", lora_strategy=strategy)
    input_ids = torch.randint(8, len(tiny_tokenizer()), (2, 11), generator=torch.Generator().manual_seed(0))
    for scale in [(4, 5), (16, 2)]:
        paths = export_peft(model, scale, tmp_path / str(scale), tokenizer=tiny_tokenizer())
        adapter_config = json.loads((paths["adapter"] / "adapter_config.json").read_text())
        assert adapter_config["r"] == adapters * model.config.lora_r
        assert adapter_config["lora_alpha"] / adapter_config["r"] == pytest.approx(model.config.lora_alpha / model.config.lora_r)
        assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]

        expected = llm_logits(model, input_ids, scale)
        plain = AutoModelForCausalLM.from_pretrained(paths["base"]).eval()
        with torch.no_grad():
            assert (plain(input_ids).logits - expected).abs().max() > 1e-2  # the adapter matters
            adapted = PeftModel.from_pretrained(plain, paths["adapter"]).eval()
            torch.testing.assert_close(adapted(input_ids).logits, expected, atol=1e-4, rtol=0)
            merged = AutoModelForCausalLM.from_pretrained(paths["merged"]).eval()
            assert type(merged).__name__ == "LlamaForCausalLM"
            torch.testing.assert_close(merged(input_ids).logits, expected, atol=1e-4, rtol=0)
        if strategy != "ms":  # scale-specific adapters: another scale's logits differ
            other = (16, 5)
            assert (llm_logits(model, input_ids, other) - expected).abs().max() > 1e-2


def test_command_line_exports_a_checkpoint_loaded_through_remote_code(tmp_path, monkeypatch, capsys):
    from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
    from mtsk_train.hub import save_checkpoint

    model = tiny_model(modality="audio", lora_strategy="mss", audio_rates=[4, 16])
    save_checkpoint(tmp_path / "asr", model, LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer()))
    monkeypatch.setattr(sys, "argv", ["export_peft", str(tmp_path / "asr"), str(tmp_path / "out"), "--scale", "16"])
    export_module.main()
    assert "adapter:" in capsys.readouterr().out
    input_ids = torch.randint(8, 40, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "base"), tmp_path / "out" / "adapter")
        torch.testing.assert_close(adapted(input_ids).logits, llm_logits(model, input_ids, 16), atol=1e-4, rtol=0)
    assert (tmp_path / "out" / "merged" / "tokenizer.json").is_file()


def test_model_without_lora_has_nothing_to_export(tmp_path):
    with pytest.raises(ValueError, match="no LoRA adapters"):
        export_peft(tiny_model(modality="audio", lora_strategy="none", audio_rates=[4]), 4, tmp_path)
    with pytest.raises(ValueError, match="not trained"):
        export_peft(tiny_model(modality="audio", lora_strategy="ms", audio_rates=[4]), 8, tmp_path)
