"""The authors' Llama-AVSR / Llama-MTSK checkpoints -> Llama-MTSK: synthetic checkpoints with their key names and
LoRA layout convert, and the converted model's logits equal a direct recomputation of their formulation."""

import math

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperModel,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from llama_mtsk import LlamaMTSKForConditionalGeneration
from mtsk_convert import llama_avsr

from convert_fixtures import (
    TINY,
    avhubert_state_dict,
    fairseq_checkpoint,
    fairseq_config,
    reference_video_features,
    save_fairseq_checkpoint,
)


WORDS = "transcribe speech video and to text . zero one two three four five six seven eight nine".split()
LLM_HIDDEN, LLM_LAYERS, KV_SIZE = 64, 2, 16  # 8 heads, 2 KV heads: GQA 4:1 as in Llama 3 (their IS_LLAMA3)
WHISPER_WIDTH, PROJECTOR_HIDDEN = 16, 24
AVHUBERT_LORA_SCALING = 2.0
ASR_PROMPT, AVSR_PROMPT = "transcribe speech to text .", "transcribe speech and video to text ."


def base_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Tiny base LLMs (tied and untied embeddings), a tiny Whisper, saved as the Hub would serve them."""
    root = tmp_path_factory.mktemp("parts")
    tokenizer = base_tokenizer()
    folders = {}
    for tie in (False, True):
        torch.manual_seed(10 + tie)
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=LLM_HIDDEN, intermediate_size=128, num_hidden_layers=LLM_LAYERS,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tie,
            bos_token_id=1, eos_token_id=2,
        )
        folder = root / f"tiny-llama-{'tied' if tie else 'untied'}"
        LlamaForCausalLM(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders["llm_tied" if tie else "llm"] = folder
    torch.manual_seed(12)
    whisper_config = WhisperConfig(
        vocab_size=64, d_model=WHISPER_WIDTH, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=100,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        begin_suppress_tokens=None, suppress_tokens=None,
    )
    WhisperModel(whisper_config).save_pretrained(root / "tiny-whisper")
    folders["whisper"] = root / "tiny-whisper"
    avhubert = avhubert_state_dict(**TINY, seed=13)
    save_fairseq_checkpoint(fairseq_checkpoint(avhubert, fairseq_config(**TINY, image_crop_size=16)), root / "avhubert.pt")
    folders["avhubert"] = root / "avhubert.pt"
    folders["avhubert_state"] = avhubert
    return folders


def their_state_dict(
    parts, *, tied=False, audio_rates=(), video_rates=(), compression="stack", matryoshka=False, layer_norm=False,
    reduction=8, avhubert_lora=False, seed=0,
) -> dict[str, torch.Tensor]:
    """`AVSR_LLMs.state_dict()` as their code builds it (models/modeling_AVSRLLM.py, Omni_AVSR/modeling_LlamaAVSR.py),
    with values that look trained. LoRA matrices are drawn N(0, 0.02), the initialisation their runs actually start
    from (from_pretrained re-initialises the adapters it does not find)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, std=0.1):
        return torch.randn(*shape, generator=generator) * std

    llm = LlamaForCausalLM.from_pretrained(parts["llm_tied" if tied else "llm"])
    llm.resize_token_embeddings(len(base_tokenizer()) + 5)
    with torch.no_grad():
        llm.model.embed_tokens.weight[-5:] = randn(5, LLM_HIDDEN, std=0.02)
    state = {f"llm.{key}": tensor.clone() for key, tensor in llm.state_dict().items()}
    if tied:
        state["llm.lm_head.weight"] = state["llm.model.embed_tokens.weight"]  # one storage, two keys, as torch saves it
    bottleneck = round(LLM_HIDDEN / reduction)
    for layer in range(LLM_LAYERS):
        prefix = f"llm.model.layers.{layer}.self_attn"
        state[f"{prefix}.lora_down_Q.weight"] = randn(bottleneck, LLM_HIDDEN, std=0.02)
        state[f"{prefix}.lora_up_Q.weight"] = randn(LLM_HIDDEN, bottleneck, std=0.02)
        state[f"{prefix}.lora_down_V.weight"] = randn(bottleneck, LLM_HIDDEN, std=0.02)
        state[f"{prefix}.lora_up_V.weight"] = randn(KV_SIZE, bottleneck, std=0.02)

    def projectors(modality, width, rates):
        for index, rate in enumerate(rates):
            prefix = f"{modality}_proj." + (f"{index}." if matryoshka else "")
            inputs = width * rate if compression == "stack" else width
            state[f"{prefix}0.weight"] = randn(PROJECTOR_HIDDEN, inputs, std=1 / math.sqrt(inputs))
            state[f"{prefix}0.bias"] = randn(PROJECTOR_HIDDEN)
            state[f"{prefix}2.weight"] = randn(LLM_HIDDEN, PROJECTOR_HIDDEN, std=1 / math.sqrt(PROJECTOR_HIDDEN))
            state[f"{prefix}2.bias"] = randn(LLM_HIDDEN)
            if layer_norm:
                state[f"{prefix}3.weight"] = 1 + randn(LLM_HIDDEN)
                state[f"{prefix}3.bias"] = randn(LLM_HIDDEN)

    if audio_rates:
        encoder = WhisperModel.from_pretrained(parts["whisper"]).encoder.state_dict()
        # Shifted, so a converter that read the weights from the Whisper folder instead would be caught.
        state.update({f"audio_encoder.{key}": tensor + randn(*tensor.shape, std=0.01) for key, tensor in encoder.items()})
        projectors("audio", WHISPER_WIDTH, audio_rates)
    if video_rates:
        state.update({f"video_encoder.{key}": tensor for key, tensor in parts["avhubert_state"].items()})
        if avhubert_lora:  # their AV-HuBERT LoRA: bottleneck width / 16, on q and v of every layer
            for layer in range(TINY["layers"]):
                prefix = f"video_encoder.encoder.layers.{layer}.self_attn"
                for target in "QV":
                    state[f"{prefix}.lora_down_{target}.weight"] = randn(TINY["hidden"] // 16, TINY["hidden"])
                    state[f"{prefix}.lora_up_{target}.weight"] = randn(TINY["hidden"], TINY["hidden"] // 16)
        projectors("video", TINY["hidden"], video_rates)
    return state


def their_logits(
    state, parts, *, tied=False, audio=None, audio_rate=None, video=None, video_rate=None, compression, matryoshka,
    audio_rates=(), video_rates=(), reduction, alpha, prompt, lora=True,
) -> torch.Tensor:
    """Their forward pass, recomputed from their state dict: Whisper cut to the clip, compression, the rate's
    projector, `[BOS] <audio> A </audio> <video> V </video> PROMPT`, and a plain Llama whose q/v add
    `(alpha / reduction) * up(down(x))`."""
    tokenizer = base_tokenizer()
    tokenizer.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<audio>", "</audio>", "<video>", "</video>"]})
    embed = state["llm.model.embed_tokens.weight"]

    def compress(features, rate):
        if compression == "stack":
            chunks = [features[:, x : x + rate].reshape(features.shape[0], 1, -1) for x in range(0, features.shape[1], rate)]
            return torch.cat(chunks if features.shape[1] % rate == 0 else chunks[:-1], dim=1)
        return F.avg_pool1d(features.transpose(1, 2), rate).transpose(1, 2)

    def project(modality, tokens, rate, rates):
        prefix = f"{modality}_proj." + (f"{list(rates).index(rate)}." if matryoshka else "")
        hidden = F.relu(tokens @ state[f"{prefix}0.weight"].T + state[f"{prefix}0.bias"])
        out = hidden @ state[f"{prefix}2.weight"].T + state[f"{prefix}2.bias"]
        if f"{prefix}3.weight" in state:
            out = F.layer_norm(out, out.shape[-1:], state[f"{prefix}3.weight"], state[f"{prefix}3.bias"])
        return out

    def token(name):
        return embed[tokenizer.convert_tokens_to_ids(name)][None, None]

    pieces = [embed[tokenizer.bos_token_id][None, None]]
    if audio is not None:
        whisper = WhisperEncoder(WhisperConfig.from_pretrained(parts["whisper"])).eval()
        whisper.load_state_dict({key[len("audio_encoder.") :]: v for key, v in state.items() if key.startswith("audio_encoder.")})
        features, samples = audio
        encoded = whisper(features).last_hidden_state[:, : max(int(samples / 16000 * 50), 25)]
        pieces += [token("<audio>"), project("audio", compress(encoded, audio_rate), audio_rate, audio_rates), token("</audio>")]
    if video is not None:
        avhubert = {key[len("video_encoder.") :]: v for key, v in state.items() if key.startswith("video_encoder.")}
        has_lora = any("lora_down" in key for key in avhubert)
        encoded = reference_video_features(avhubert, video, TINY["heads"], lora_scaling=AVHUBERT_LORA_SCALING if has_lora else None)
        pieces += [token("<video>"), project("video", compress(encoded, video_rate), video_rate, video_rates), token("</video>")]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    pieces.append(embed[prompt_ids][None])

    llm = LlamaForCausalLM(LlamaConfig.from_pretrained(parts["llm_tied" if tied else "llm"], vocab_size=embed.shape[0])).eval()
    llm.load_state_dict({key[len("llm.") :]: v for key, v in state.items() if key.startswith("llm.") and "lora" not in key})
    if lora:
        scaling = alpha / reduction
        for index, layer in enumerate(llm.model.layers):
            prefix = f"llm.model.layers.{index}.self_attn"
            for target, projection in (("Q", layer.self_attn.q_proj), ("V", layer.self_attn.v_proj)):
                down, up = state[f"{prefix}.lora_down_{target}.weight"], state[f"{prefix}.lora_up_{target}.weight"]
                projection.register_forward_hook(
                    lambda module, inputs, output, down=down, up=up: output + scaling * (inputs[0] @ down.T @ up.T)
                )
    with torch.no_grad():
        return llm(inputs_embeds=torch.cat(pieces, dim=1)).logits


def whisper_inputs(seconds=2.0, seed=0):
    features = torch.randn(1, 8, 200, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(1, 200, dtype=torch.long)
    mask[:, : int(seconds * 100)] = 1
    return features, mask, int(seconds * 16000)


def test_asr_model_zoo_layout_matches_their_formulation(parts, tmp_path, capsys):
    """Llama-AVSR ASR as in their model zoo: stacking (rate 3), no projector LayerNorm, untied LLM, averaged .pth."""
    state = their_state_dict(parts, audio_rates=[3], reduction=8)
    path = tmp_path / "ASR_model_avg_4.pth"
    torch.save(state, path)
    out = tmp_path / "converted"
    llama_avsr.main([
        str(path), str(out), "--llm", str(parts["llm"]), "--whisper", str(parts["whisper"]), "--compression", "stack",
        "--downsample-ratio-audio", "3", "--reduction_lora", "8", "--alpha", "4", "--prompt", ASR_PROMPT,
    ])
    printed = capsys.readouterr().out
    assert "bottleneck 8 = round(64 / 8), scaling 4/8 -> lora_r 8, lora_alpha 4" in printed

    model = LlamaMTSKForConditionalGeneration.from_pretrained(out).eval()
    config = model.config
    assert (config.modality, config.compression, config.audio_rates, config.lora_strategy) == ("audio", "stack", [3], "ms")
    assert (config.lora_r, config.lora_alpha, config.projector_layer_norm, config.projector_hidden_size) == (8, 4.0, False, 24)
    features, mask, samples = whisper_inputs()
    with torch.no_grad():
        logits = model(input_features=features, input_features_mask=mask, scale=3).logits
    kwargs = dict(audio=(features, samples), audio_rate=3, compression="stack", matryoshka=False, reduction=8, alpha=4, prompt=ASR_PROMPT)
    expected = their_logits(state, parts, **kwargs)
    assert logits.shape == expected.shape == (1, 1 + 1 + 33 + 1 + 5, 25)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    # Their LoRA, at their initialisation, changes the logits far beyond the tolerance: it was not ignored.
    assert (expected - their_logits(state, parts, lora=False, **kwargs)).abs().max() > 1e-3
    card = (out / "README.md").read_text()
    assert "## Conversion" in card and "lora_r=8" in card
    # Their code rounds the log-mels to bf16 before Whisper: the converted processor does too.
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert processor.round_features_to_bfloat16 is True
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(0)).numpy()
    rounded = processor(audio=wave, sampling_rate=16000)["input_features"]
    assert torch.equal(rounded, rounded.to(torch.bfloat16).float())


def test_avsr_matryoshka_lightning_checkpoint_matches_at_every_scale(parts, tmp_path):
    """Llama-MTSK (MS) AVSR from the Omni-AVSR code: per-rate projectors with LayerNorm, average pooling, rates given in
    a non-sorted training order, tied LLM, AV-HuBERT LoRA; a Lightning .ckpt whose hyper_parameters carry the flags."""
    audio_rates, video_rates = [16, 4], [5, 2]  # their --downsample-ratio-*: projector index follows this order
    state = their_state_dict(
        parts, tied=True, audio_rates=audio_rates, video_rates=video_rates, compression="avg-pooling", matryoshka=True,
        layer_norm=True, reduction=16, avhubert_lora=True, seed=1,
    )
    hyper_parameters = {
        "modality": "audiovisual", "llm_model": str(parts["llm_tied"]), "audio_encoder_name": str(parts["whisper"]),
        "compression_mode": "avg-pooling", "downsample_ratio_audio": audio_rates, "downsample_ratio_video": video_rates,
        "rank": 16, "alpha": 2, "prompt_audiovisual": AVSR_PROMPT, "is_matryoshka": True, "use_lora_avhubert": True,
        "intermediate_size": PROJECTOR_HIDDEN,
    }
    lightning = {
        "epoch": 7, "global_step": 7000, "pytorch-lightning_version": "2.2.1", "hparams_name": "args",
        "state_dict": {f"model.{key}": tensor for key, tensor in state.items()},
        "hyper_parameters": hyper_parameters,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.98)}]}],
        "lr_schedulers": [{"_last_lr": [1e-3], "last_epoch": 7000}],
    }
    path = tmp_path / "epoch=7.ckpt"
    torch.save(lightning, path)
    out = tmp_path / "converted"
    llama_avsr.main([str(path), str(out), "--avhubert", str(parts["avhubert"])])

    model = LlamaMTSKForConditionalGeneration.from_pretrained(out).eval()
    assert model.config.scales == [(4, 2), (4, 5), (16, 2), (16, 5)]
    assert (model.config.lora_r, model.config.lora_alpha) == (4, 0.5)
    features, mask, samples = whisper_inputs(seed=1)
    video = torch.randn(1, 10, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    for audio_rate, video_rate in model.config.scales:
        with torch.no_grad():
            logits = model(
                input_features=features, input_features_mask=mask, pixel_values_videos=video, scale=(audio_rate, video_rate)
            ).logits
        expected = their_logits(
            state, parts, tied=True, audio=(features, samples), audio_rate=audio_rate, video=video, video_rate=video_rate,
            compression="avg-pooling", matryoshka=True, audio_rates=audio_rates, video_rates=video_rates, reduction=16,
            alpha=2, prompt=AVSR_PROMPT,
        )
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5, msg=f"scale {(audio_rate, video_rate)}")


def test_video_architecture_inferred_without_the_original_avhubert(parts, tmp_path):
    """Without --avhubert the AV-HuBERT config comes from the weights (heads = width / 64)."""
    state = their_state_dict(parts, video_rates=[2], seed=3)
    wide = avhubert_state_dict(**{**TINY, "hidden": 64, "conv_pos_groups": 4}, seed=4)
    state = {key: value for key, value in state.items() if not key.startswith(("video_encoder.", "video_proj."))}
    state.update({f"video_encoder.{key}": tensor for key, tensor in wide.items()})
    state["video_proj.0.weight"] = torch.randn(PROJECTOR_HIDDEN, 128)
    state["video_proj.0.bias"] = torch.zeros(PROJECTOR_HIDDEN)
    state["video_proj.2.weight"] = torch.randn(LLM_HIDDEN, PROJECTOR_HIDDEN) / 5
    state["video_proj.2.bias"] = torch.zeros(LLM_HIDDEN)
    path = tmp_path / "VSR.pth"
    torch.save(state, path)
    model, _, report = llama_avsr.convert(
        path, {"llm": str(parts["llm"]), "compression": "stack", "reduction": 8, "alpha": 4}  # rate read from the shapes
    )
    assert model.config.video_rates == [2] and model.config.video_config.num_attention_heads == 1
    assert report["dropped"]["video_encoder.mask_emb"].startswith("pre-training")
    video = torch.randn(1, 6, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        features = model.video_encoder(video).last_hidden_state
    torch.testing.assert_close(features, reference_video_features(wide, video, heads=1), atol=1e-5, rtol=1e-5)


def test_checkpoint_without_llm_lora_converts_without_adapters(parts, tmp_path):
    """Trained with `--add_PETF_LLM None`: projectors only, the LLM untouched."""
    state = {key: value for key, value in their_state_dict(parts, audio_rates=[4], seed=6).items() if "lora" not in key}
    path = tmp_path / "ASR_noLoRA.pth"
    torch.save(state, path)
    model, _, _ = llama_avsr.convert(
        path, {"llm": str(parts["llm"]), "whisper": str(parts["whisper"]), "compression": "stack", "prompt": ASR_PROMPT}
    )
    assert model.config.lora_strategy == "none" and not any("lora" in key for key in model.state_dict())
    features, mask, samples = whisper_inputs(seed=2)
    with torch.no_grad():
        logits = model(input_features=features, input_features_mask=mask, scale=4).logits
    expected = their_logits(
        state, parts, audio=(features, samples), audio_rate=4, compression="stack", matryoshka=False, reduction=8,
        alpha=4, prompt=ASR_PROMPT, lora=False,
    )
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_projector_shape_mismatch_names_shapes_and_cause(parts, tmp_path):
    state = their_state_dict(parts, audio_rates=[2])  # trained with rate 2 stacking: 32 inputs
    path = tmp_path / "ASR.pth"
    torch.save(state, path)
    settings = {"llm": str(parts["llm"]), "whisper": str(parts["whisper"]), "compression": "stack", "reduction": 8, "alpha": 4}
    with pytest.raises(ValueError) as error:
        llama_avsr.convert(path, {**settings, "audio_rates": [3]})  # the README says 3
    message = str(error.value)
    assert "rate 3 stacking with Whisper tiny-whisper (width 16) expects 48 inputs" in message
    assert "audio_proj.0.weight is [24, 32] (32 inputs)" in message
    assert "was it trained with stacking at rate 2 with Whisper tiny-whisper?" in message

    with pytest.raises(ValueError, match=r"rate 2 average pooling .* expects 16 inputs .* \[24, 32\].*stacking at rate 2"):
        llama_avsr.convert(path, {**settings, "compression": "avg-pooling", "audio_rates": [2]})
    with pytest.raises(ValueError, match=r"lists 2 rate\(s\) \[2, 4\] but the checkpoint has one projector"):
        llama_avsr.convert(path, {**settings, "audio_rates": [2, 4]})
    with pytest.raises(ValueError, match="Average-pooling checkpoints do not record their rates"):
        llama_avsr.convert(path, {**settings, "compression": "avg-pooling"})


def test_settings_that_disagree_with_the_checkpoint(parts, tmp_path):
    state = their_state_dict(parts, audio_rates=[3])
    path = tmp_path / "ASR.pth"
    torch.save(state, path)
    settings = {"llm": str(parts["llm"]), "whisper": str(parts["whisper"]), "compression": "stack", "audio_rates": [3]}
    with pytest.raises(ValueError, match=r"bottleneck is 8 .* round\(hidden 64 / --reduction-lora 16\) = 4.*here 8"):
        llama_avsr.convert(path, {**settings, "reduction": 16, "alpha": 4})
    with pytest.raises(ValueError, match="pass --reduction-lora and --alpha"):
        llama_avsr.convert(path, settings)
    with pytest.raises(ValueError, match=r"embedding has 25 rows, but the tokenizer of .* has 26"):
        big_vocab = tmp_path / "other-llm"
        tokenizer = base_tokenizer()
        tokenizer.add_tokens(["extra"])
        tokenizer.save_pretrained(big_vocab)
        LlamaConfig.from_pretrained(parts["llm"]).save_pretrained(big_vocab)
        llama_avsr.convert(path, {**settings, "llm": str(big_vocab), "reduction": 8, "alpha": 4})
    with pytest.raises(ValueError, match="--modality video disagrees with the checkpoint, which is 'audio'"):
        llama_avsr.convert(path, {**settings, "modality": "video", "reduction": 8, "alpha": 4})


def test_whisper_weights_come_from_the_folder_when_the_checkpoint_lacks_them(parts, tmp_path):
    state = their_state_dict(parts, audio_rates=[3])
    state = {key: value for key, value in state.items() if not key.startswith("audio_encoder.")}
    path = tmp_path / "ASR_trimmed.pth"
    torch.save(state, path)
    model, _, report = llama_avsr.convert(
        path, {"llm": str(parts["llm"]), "whisper": str(parts["whisper"]), "compression": "stack", "reduction": 8, "alpha": 4}
    )
    assert report["sources"]["whisper"] == str(parts["whisper"])
    reference = WhisperModel.from_pretrained(parts["whisper"]).encoder.state_dict()
    for key, tensor in model.audio_encoder.state_dict().items():
        assert torch.equal(tensor, reference[key]), key


def test_unsupported_checkpoints_are_explained(parts, tmp_path):
    path = tmp_path / "avhubert_av.pth"
    torch.save({"audiovisual_encoder.encoder.layer_norm.weight": torch.ones(4), "audiovisual_proj.0.weight": torch.ones(2, 2)}, path)
    with pytest.raises(ValueError, match="AV-HuBERT as an audio-visual encoder"):
        llama_avsr.convert(path, {"llm": str(parts["llm"])})
    path = tmp_path / "not_a_state_dict.pth"
    torch.save({"model": {"w": torch.ones(1)}, "note": "fairseq"}, path)
    with pytest.raises(ValueError, match="expected a state dict of tensors"):
        llama_avsr.convert(path, {"llm": str(parts["llm"])})


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        llama_avsr.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--downsample-ratio-audio" in help_text and "--push_to_hub" in help_text


def test_push_to_hub_uploads_the_checkpoint_folder(parts, tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, exist_ok))
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload_folder", repo_id, folder_path))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    path = tmp_path / "ASR.pth"
    torch.save(their_state_dict(parts, audio_rates=[3]), path)
    out = tmp_path / "converted"
    llama_avsr.main([
        str(path), str(out), "--llm", str(parts["llm"]), "--whisper", str(parts["whisper"]), "--compression", "stack",
        "--audio-rates", "3", "--reduction-lora", "8", "--alpha", "4", "--push_to_hub", "someone/llama-avsr-asr",
    ])
    assert calls == [("create_repo", "someone/llama-avsr-asr", True), ("upload_folder", "someone/llama-avsr-asr", str(out))]
    for name in ("config.json", "model.safetensors", "processor_config.json", "README.md", "modeling_llama_mtsk.py"):
        assert (out / name).is_file(), name
