"""A checkpoint saved before the refactoring of issue 12 (commit 5a62781, see fixtures/checkpoint_5a62781/README.md)
loads with the current code and gives the outputs the old code gave: the processor's features, and per scale the
logits, the loss and the greedy tokens. Checked in this process with our classes, and in a fresh process that cannot
import the repository, through `AutoModel` / `AutoProcessor` and the current remote code."""

import inspect
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

import llama_mtsk
from llama_mtsk import LlamaMTSKForConditionalGeneration
from llama_mtsk.modeling_llama_mtsk import SIBLING_MODULES
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor, LlamaMTSKVideoProcessor

from isolated import run_isolated
from media_samples import signal, wav_bytes


FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_5a62781"


def reproduce_outputs(model, processor, folder: Path) -> dict[str, torch.Tensor]:
    """What the fixture's `expected_outputs.safetensors` holds, computed by `model` and `processor` (sent as source
    to the fresh process too, which imports what it uses). The model reads the stored features, so
    that its outputs are checked apart from the processor's."""
    raw = np.load(folder / "raw_inputs.npz")
    features = processor(
        audio=[str(folder / "speech.wav"), raw["audio"]],
        videos=[str(folder / "mouth.mp4"), raw["video"]],
        text=["set red at b now", "place blue in c two please"],
        sampling_rate=16000,
        fps=[None, 30],
    )
    outputs = {name: value.contiguous() for name, value in features.items()}
    stored = load_file(folder / "expected_outputs.safetensors")
    inputs = {name: stored[name] for name in features}
    generation_inputs = {name: value for name, value in inputs.items() if name != "labels"}
    for audio_rate, video_rate in model.config.scales:
        label = f"a{audio_rate}_v{video_rate}"
        with torch.no_grad():
            forward = model(**inputs, scale=(audio_rate, video_rate))
            generated = model.generate(
                **generation_inputs, scale=(audio_rate, video_rate), max_new_tokens=6, min_new_tokens=6
            )
        outputs[f"logits.{label}"] = forward.logits
        outputs[f"loss.{label}"] = forward.loss.reshape(1)
        outputs[f"generated.{label}"] = generated
    return outputs


def assert_matches_fixture(outputs: dict[str, torch.Tensor]) -> None:
    expected = load_file(FIXTURE / "expected_outputs.safetensors")
    assert sorted(outputs) == sorted(expected)
    assert len([name for name in expected if name.startswith("generated.")]) == 4
    for name, reference in expected.items():
        if reference.is_floating_point():
            torch.testing.assert_close(outputs[name], reference, rtol=0.0, atol=1e-5, msg=name)
        else:
            assert torch.equal(outputs[name], reference), name


@pytest.fixture
def fixture_folder(tmp_path) -> Path:
    """The fixture's files plus `speech.wav`, the generated signal the old code read (written here, byte for byte the
    file it read, rather than kept in the repository)."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(FIXTURE, folder)
    (folder / "speech.wav").write_bytes(wav_bytes(signal(0.8, seed=1)))
    return folder


@pytest.fixture
def checkpoint_with_current_code(fixture_folder) -> Path:
    """The fixture's files with the current remote-code modules beside them, as in a checkpoint saved today."""
    folder = fixture_folder
    package = Path(llama_mtsk.__file__).parent
    for module_file in ("configuration_llama_mtsk.py", "modeling_llama_mtsk.py", *SIBLING_MODULES):
        shutil.copyfile(package / module_file, folder / module_file)
    return folder


def test_fixture_inputs_are_what_the_readme_says():
    raw = np.load(FIXTURE / "raw_inputs.npz")
    assert raw["audio"].dtype == np.float32 and raw["audio"].shape == (9600,)
    assert raw["video"].dtype == np.uint8 and raw["video"].shape == (18, 32, 32, 3)
    expected = load_file(FIXTURE / "expected_outputs.safetensors")
    # Whole 640-sample video frames: 12,800 and 9,600 samples keep 40 and 30 Whisper frames (two mel frames each).
    assert expected["input_features_mask"].sum(dim=1).tolist() == [80, 60]
    assert expected["pixel_values_videos_mask"].sum(dim=1).tolist() == [20, 15]


def test_our_classes_reproduce_the_old_outputs(fixture_folder):
    model = LlamaMTSKForConditionalGeneration.from_pretrained(FIXTURE).eval()
    # What `LlamaMTSKProcessor.from_pretrained` does, with the sub-processors resolved to their classes rather than
    # through the auto classes (which would ask to run the checkpoint's remote code).
    processor_dict, _ = LlamaMTSKProcessor.get_processor_dict(FIXTURE)
    sub_processors = [
        WhisperFeatureExtractor.from_pretrained(FIXTURE),
        PreTrainedTokenizerFast.from_pretrained(FIXTURE),
        LlamaMTSKVideoProcessor.from_pretrained(FIXTURE),
    ]
    processor = LlamaMTSKProcessor.from_args_and_dict(sub_processors, processor_dict)
    assert_matches_fixture(reproduce_outputs(model, processor, fixture_folder))


def test_fresh_process_reproduces_the_old_outputs_through_remote_code(checkpoint_with_current_code, tmp_path):
    loading = f"""
        folder = Path({str(checkpoint_with_current_code)!r})
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        for loaded in (model, processor, processor.video_processor):
            assert type(loaded).__module__.startswith("transformers_modules."), type(loaded).__module__
        save_file(reproduce_outputs(model, processor, folder), "outputs.safetensors")
        """
    imports = """
        from pathlib import Path

        import numpy as np
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel, AutoProcessor
        """
    code = textwrap.dedent(imports) + inspect.getsource(reproduce_outputs) + textwrap.dedent(loading)
    run_isolated(code, tmp_path)
    assert_matches_fixture(load_file(tmp_path / "outputs.safetensors"))
