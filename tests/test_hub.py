"""Checkpoints that travel: saved folders load in a fresh process through remote code only (as from the Hub), the
pipeline there matches processor + generate + batch_decode, and the folder carries everything a Hub repo needs."""

import json

import numpy as np
import pytest
from huggingface_hub import HfApi, ModelCard

from llama_mtsk.modeling_llama_mtsk import CUSTOM_PIPELINES
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_train.hub import save_checkpoint

from isolated import run_isolated
from media_samples import mouth_frames, mp4_bytes, signal, wav_bytes
from tiny_models import tiny_model, tiny_tokenizer


WER_TABLE = {"LRS3 test": {(4, 2): 12.5, (16, 5): 20.25}, "LRS2 test": {(4, 2): 15.0}}
REMOTE_CODE = [
    "configuration_llama_mtsk.py",
    "modeling_llama_mtsk.py",
    "processing_llama_mtsk.py",
    "media_llama_mtsk.py",
    "pipeline_llama_mtsk.py",
    "mouth_roi.py",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Two checkpoints (audio-visual and audio-only) and the media the isolated process transcribes."""
    root = tmp_path_factory.mktemp("hub")
    tokenizer = tiny_tokenizer()
    # A seed whose random model says something on every clip and scale: equal empty transcripts would prove nothing.
    av_model = tiny_model(modality="audiovisual", lora_strategy="mss", seed=6)
    save_checkpoint(root / "avsr", av_model, LlamaMTSKProcessor.from_model_config(av_model.config, tokenizer), wer_table=WER_TABLE)
    audio_model = tiny_model(modality="audio", lora_strategy="ss", audio_rates=[4, 16])
    save_checkpoint(root / "asr", audio_model, LlamaMTSKProcessor.from_model_config(audio_model.config, tokenizer))

    (root / "speech.wav").write_bytes(wav_bytes(signal(1.6, 22050, seed=1), 22050))
    np.save(root / "speech.npy", signal(1.3, seed=2))
    (root / "talk.mp4").write_bytes(mp4_bytes(mouth_frames(40, seed=3), audio=signal(1.6, seed=3)))
    np.savez(root / "av.npz", audio=signal(1.2, seed=4), video=mouth_frames(30, seed=4, color=True))
    return root


ISOLATED_CODE = """
import json
import numpy as np
import torch
from transformers import AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline

try:
    import llama_mtsk
    raise SystemExit("the repository is importable")
except ImportError:
    pass

GEN = {"max_new_tokens": 5}
results = {"modules": []}

def by_hand(model, processor, scale, audio=None, video=None, sampling_rate=16000):
    inputs = processor(audio=audio, videos=video, sampling_rate=sampling_rate)
    with torch.no_grad():
        ids = model.generate(**inputs, scale=scale, **GEN)
    return processor.batch_decode(ids)[0]

for name, scales in [("asr", [4, 16]), ("avsr", [[4, 2], [16, 5]])]:
    model = AutoModel.from_pretrained(name, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    asr = pipeline("automatic-speech-recognition", model=name, trust_remote_code=True, device=-1)
    seq2seq = AutoModelForSpeechSeq2Seq.from_pretrained(name, trust_remote_code=True)
    inferred = pipeline(model=name, trust_remote_code=True, device=-1)
    results["modules"] += [type(obj).__module__ for obj in (model, processor, asr, seq2seq, inferred)]
    results[name] = []
    for scale in scales:
        scale = tuple(scale) if isinstance(scale, list) else scale
        if name == "asr":
            speech = np.load("speech.npy")
            cases = [
                ("wav", "speech.wav", dict(audio="speech.wav")),
                ("numpy", speech, dict(audio=speech)),
                ("dict", {"raw": speech, "sampling_rate": 16000}, dict(audio=speech)),
                ("mp4 sound", "talk.mp4", dict(audio="talk.mp4")),
            ]
        else:
            arrays = np.load("av.npz")
            decode = __import__(type(processor).__module__, fromlist=["load_audiovisual"]).load_audiovisual
            audio, video = decode("talk.mp4")
            cases = [
                ("mp4", "talk.mp4", dict(audio=audio, video=video)),
                ("dict", {"audio": arrays["audio"], "sampling_rate": 16000, "video": arrays["video"]},
                 dict(audio=arrays["audio"], video=arrays["video"][: len(arrays["audio"]) // 640])),
            ]
        for case, inputs, manual in cases:
            text = asr(inputs, scale=scale, generate_kwargs=GEN)["text"]
            results[name].append([case, str(scale), text, by_hand(model, processor, scale, **manual)])
    results[name + "_inferred"] = inferred("talk.mp4", generate_kwargs=GEN)["text"] == asr("talk.mp4", generate_kwargs=GEN)["text"]
print("RESULTS" + json.dumps(results))
"""


def test_fresh_process_loads_and_transcribes_through_remote_code(workdir):
    completed = run_isolated(ISOLATED_CODE, workdir)
    results = json.loads(completed.stdout.split("RESULTS", 1)[1])
    assert all(module.startswith("transformers_modules.") for module in results["modules"] if "llama_mtsk" in module)
    assert sum("pipeline_llama_mtsk" in module for module in results["modules"]) == 4
    for name, expected_cases in [("asr", 8), ("avsr", 4)]:
        assert len(results[name]) == expected_cases
        for case, scale, pipeline_text, manual_text in results[name]:
            assert pipeline_text == manual_text, (name, case, scale)
            assert pipeline_text, (name, case, scale)
        assert results[name + "_inferred"]


def test_checkpoint_folder_has_what_the_hub_needs(workdir):
    folder = workdir / "avsr"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_llama_mtsk.LlamaMTSKConfig",
        "AutoModel": "modeling_llama_mtsk.LlamaMTSKForConditionalGeneration",
        "AutoModelForSpeechSeq2Seq": "modeling_llama_mtsk.LlamaMTSKForConditionalGeneration",
        "AutoProcessor": "processing_llama_mtsk.LlamaMTSKProcessor",
    }
    assert config["custom_pipelines"] == CUSTOM_PIPELINES
    for name in REMOTE_CODE + ["model.safetensors", "generation_config.json", "processor_config.json", "tokenizer.json", "README.md"]:
        assert (folder / name).is_file(), name
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_llama_mtsk.LlamaMTSKProcessor"
    assert processor_config["video_processor"]["auto_map"]["AutoVideoProcessor"] == "processing_llama_mtsk.LlamaMTSKVideoProcessor"
    assert processor_config["feature_extractor"]["chunk_length"] == 2  # the tiny model's Whisper window

    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "automatic-speech-recognition"
    assert card.data.library_name == "transformers"
    assert "custom_code" in card.data.tags and "audio-visual-speech-recognition" in card.data.tags
    assert card.data.llama_mtsk == {
        "modality": "audiovisual",
        "scales": [[4, 2], [4, 5], [16, 2], [16, 5]],
        "lora_strategy": "mss",
        "compression": "avg_pool",
    }
    results = {(result.dataset_name, result.metric_name): result.metric_value for result in card.data.eval_results}
    assert results == {
        ("LRS3 test", "WER at scale (4, 2)"): 12.5,
        ("LRS3 test", "WER at scale (16, 5)"): 20.25,
        ("LRS2 test", "WER at scale (4, 2)"): 15.0,
    }
    assert all(result.metric_type == "wer" for result in card.data.eval_results)
    assert "| `(16, 5)` | 20.25 | - |" in card.text
    assert 'scale=(16, 5)' in card.text  # the usage example uses a trained scale

    audio_card = ModelCard.load(workdir / "asr" / "README.md")
    assert audio_card.data.eval_results is None and audio_card.data.llama_mtsk["scales"] == [[4, None], [16, None]]
    assert "scale=16" in audio_card.text


def test_push_to_hub_uploads_the_complete_folder(monkeypatch, tmp_path):
    calls = {}

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        calls["create"] = (repo_id, private, exist_ok)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kwargs):
        calls["upload"] = (repo_id, sorted(path.name for path in __import__("pathlib").Path(folder_path).iterdir()), commit_message)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model = tiny_model(modality="video", lora_strategy="ms", video_rates=[1, 3])
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    save_checkpoint(tmp_path / "vsr", model, processor, push_to_hub=True, repo_id="someone/llama-mtsk-vsr", private=True)
    assert calls["create"] == ("someone/llama-mtsk-vsr", True, True)
    repo_id, files, message = calls["upload"]
    assert repo_id == "someone/llama-mtsk-vsr" and message
    assert set(REMOTE_CODE + ["config.json", "model.safetensors", "processor_config.json", "README.md"]) <= set(files)
    assert ModelCard.load(tmp_path / "vsr" / "README.md").data.model_name == "someone/llama-mtsk-vsr"

    with pytest.raises(ValueError, match="repo_id"):
        save_checkpoint(tmp_path / "other", model, processor, push_to_hub=True)


def test_save_checkpoint_checks_before_writing(tmp_path):
    model = tiny_model(modality="audio", lora_strategy="ms", audio_rates=[4])
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    with pytest.raises(ValueError, match=r"scale \(8, None\) was not trained"):
        save_checkpoint(tmp_path / "a", model, processor, wer_table={"test": {(8, None): 3.0}})
    assert not (tmp_path / "a").exists()
    processor.feature_extractor = type(processor.feature_extractor)(feature_size=8, chunk_length=30, return_attention_mask=True)
    with pytest.raises(ValueError, match="Whisper window"):
        save_checkpoint(tmp_path / "b", model, processor)
