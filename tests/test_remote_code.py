"""Saved checkpoints load through transformers' remote-code machinery in a process that cannot import this repo."""

import pytest
import torch

from isolated import run_isolated
from tiny_models import tiny_inputs, tiny_model


COMBINATIONS = [(modality, strategy) for modality in ("audio", "video", "audiovisual") for strategy in ("ms", "ss", "mss")]


@pytest.fixture(scope="module")
def saved_checkpoints(tmp_path_factory):
    """One saved tiny checkpoint per modality x strategy, with the logits and greedy outputs computed here."""
    root = tmp_path_factory.mktemp("remote_code")
    expected = {}
    # One intra-op thread, as in the fresh process (tests/isolated.py): with more, matrix products may sum in another
    # order and the last bits of the logits differ.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _save_and_compute(root, expected)
    finally:
        torch.set_num_threads(threads)
    return root, expected


def _save_and_compute(root, expected: dict) -> None:
    for modality, strategy in COMBINATIONS:
        model = tiny_model(modality=modality, lora_strategy=strategy)
        folder = root / f"{modality}-{strategy}"
        model.save_pretrained(folder)
        inputs = tiny_inputs(model.config)
        torch.save(inputs, folder / "inputs.pt")
        for scale in model.config.scales:
            key = f"{modality}-{strategy}-{scale}"
            with torch.no_grad():
                expected[key] = {
                    "logits": model(**inputs, scale=scale).logits,
                    "generated": model.generate(**inputs, scale=scale, max_new_tokens=6, min_new_tokens=6),
                }


def test_fresh_process_loads_identical_models(saved_checkpoints, tmp_path):
    root, expected = saved_checkpoints
    torch.save(expected, tmp_path / "expected.pt")
    run_isolated(
        f"""
        import torch
        from pathlib import Path
        from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq

        expected = torch.load("expected.pt")
        root = Path({str(root)!r})
        for folder in sorted(root.iterdir()):
            modality, strategy = folder.name.split("-")
            model = AutoModel.from_pretrained(folder, trust_remote_code=True)
            assert type(model).__name__ == "LlamaMTSKForConditionalGeneration", type(model)
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            assert type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__ == "LlamaMTSKConfig"
            inputs = torch.load(folder / "inputs.pt")
            for scale in model.config.scales:
                reference = expected[f"{{modality}}-{{strategy}}-{{scale}}"]
                with torch.no_grad():
                    logits = model(**inputs, scale=scale).logits
                    generated = model.generate(**inputs, scale=scale, max_new_tokens=6, min_new_tokens=6)
                assert torch.equal(logits, reference["logits"]), (folder.name, scale)
                assert torch.equal(generated, reference["generated"]), (folder.name, scale)
        seq2seq = AutoModelForSpeechSeq2Seq.from_pretrained(root / "audio-ms", trust_remote_code=True)
        assert type(seq2seq).__name__ == "LlamaMTSKForConditionalGeneration"
        print("checked", len(expected), "scales")
        """,
        tmp_path,
    )


def test_resaving_a_remote_code_model_keeps_every_module(saved_checkpoints, tmp_path):
    root, _ = saved_checkpoints
    run_isolated(
        f"""
        from pathlib import Path
        from transformers import AutoModel

        model = AutoModel.from_pretrained({str(root / "audio-ms")!r}, trust_remote_code=True)
        model.save_pretrained("resaved")
        names = sorted(path.name for path in Path("resaved").glob("*.py"))
        assert "pipeline_llama_mtsk.py" in names and "processing_llama_mtsk.py" in names, names
        reloaded = AutoModel.from_pretrained("resaved", trust_remote_code=True)
        assert reloaded.config.scales == model.config.scales
        """,
        tmp_path,
    )
