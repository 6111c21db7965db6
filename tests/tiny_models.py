"""Tiny random Llama-MTSK models, built in code, for the tests (nothing is downloaded).

The shapes are small enough for a CPU test to run in well under a second, while keeping every architectural piece:
a Whisper encoder with a 2-second window, an AV-HuBERT with a narrow ResNet reading 16x16 crops, GQA in the LLM.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast, WhisperConfig

from llama_mtsk import AVHubertConfig, LlamaMTSKConfig, LlamaMTSKForConditionalGeneration
from llama_mtsk.modeling_llama_mtsk import MatryoshkaLoRALinear


SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<audio>", "</audio>", "<video>", "</video>"]
WORDS = (
    "transcribe speech video and to text . "
    "zero one two three four five six seven eight nine "
    "set place move put bin lay red green blue white at by in with now please again soon "
    "alice bob carol dave a b c d e f"
).split()

# Whisper: 8 mel bins, 100 encoder positions = 200 mel frames = 2 s; 50 encoder frames per second as in Whisper.
WHISPER_WINDOW_SECONDS = 2


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with the five tokens Llama-MTSK adds (pad and the modality delimiters)."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<audio>", "</audio>", "<video>", "</video>"]})
    return tokenizer


def tiny_config(
    modality: str = "audiovisual",
    lora_strategy: str = "mss",
    audio_rates: list[int] | None = None,
    video_rates: list[int] | None = None,
    compression: str = "avg_pool",
    **overrides,
) -> LlamaMTSKConfig:
    tokenizer = tiny_tokenizer()
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    audio_config = WhisperConfig(
        d_model=16,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=32,
        num_mel_bins=8,
        max_source_positions=50 * WHISPER_WINDOW_SECONDS,
    )
    video_config = AVHubertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        frontend_channels=4,
        resnet_channels=[4, 4, 8, 8],
        image_size=16,
        roi_size=18,
    )
    uses_audio = modality in ("audio", "audiovisual")
    uses_video = modality in ("video", "audiovisual")
    prompt = {"audio": "transcribe speech to text .", "video": "transcribe video to text ."}.get(
        modality, "transcribe speech and video to text ."
    )
    token_ids = tokenizer.convert_tokens_to_ids
    settings = dict(
        text_config=text_config,
        audio_config=audio_config if uses_audio else None,
        video_config=video_config if uses_video else None,
        modality=modality,
        audio_rates=audio_rates if uses_audio else None,
        video_rates=video_rates if uses_video else None,
        compression=compression,
        projector_hidden_size=24,
        lora_strategy=lora_strategy,
        lora_r=4,
        lora_alpha=8.0,
        prompt=prompt,
        prompt_token_ids=tokenizer(prompt, add_special_tokens=False).input_ids,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        audio_start_token_id=token_ids("<audio>"),
        audio_end_token_id=token_ids("</audio>"),
        video_start_token_id=token_ids("<video>"),
        video_end_token_id=token_ids("</video>"),
    )
    settings.update(overrides)
    return LlamaMTSKConfig(**settings)


def tiny_model(seed: int = 0, **config_kwargs) -> LlamaMTSKForConditionalGeneration:
    """A tiny model in eval mode that looks trained where it matters for tests: LoRA adapters all non-zero and
    different (routing mistakes show), biases, norms and BatchNorm statistics away from their neutral initial values
    (padding leaks show)."""
    torch.manual_seed(seed)
    model = LlamaMTSKForConditionalGeneration(tiny_config(**config_kwargs))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MatryoshkaLoRALinear):
                for name in module.lora_B:
                    module.lora_B[name].weight.normal_(0.0, 0.5, generator=generator)
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(("bias", "running_mean")):
                tensor.normal_(0.0, 0.1, generator=generator)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def tiny_inputs(
    config: LlamaMTSKConfig,
    audio_seconds: list[float] | None = None,
    video_frames: list[int] | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random model inputs of different real lengths per sample (padding marked by the masks)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    if config.uses_audio:
        audio_seconds = audio_seconds or [1.6, 1.0]
        window = 2 * config.audio_config.max_source_positions
        features = torch.randn(len(audio_seconds), config.audio_config.num_mel_bins, window, generator=generator)
        mask = torch.zeros(len(audio_seconds), window, dtype=torch.long)
        for row, seconds in enumerate(audio_seconds):
            mask[row, : int(seconds * 100)] = 1
        inputs.update(input_features=features, input_features_mask=mask)
    if config.uses_video:
        video_frames = video_frames or [40, 25]
        side = config.video_config.image_size
        videos = torch.randn(len(video_frames), max(video_frames), 1, side, side, generator=generator)
        mask = torch.zeros(len(video_frames), max(video_frames), dtype=torch.long)
        for row, frames in enumerate(video_frames):
            mask[row, :frames] = 1  # padded frames stay random: the model must ignore them
        inputs.update(pixel_values_videos=videos, pixel_values_videos_mask=mask)
    return inputs


def single_sample(inputs: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """Row `row` of a batch, with its padding removed (videos cut to their real length)."""
    sample = {name: value[row : row + 1] for name, value in inputs.items()}
    if "pixel_values_videos" in sample:
        frames = int(sample["pixel_values_videos_mask"].sum())
        sample["pixel_values_videos"] = sample["pixel_values_videos"][:, :frames]
        sample["pixel_values_videos_mask"] = sample["pixel_values_videos_mask"][:, :frames]
    return sample


def count_audio_encodings(model: LlamaMTSKForConditionalGeneration, monkeypatch) -> list[int]:
    """The batch size of every `model.encode_audio` call from now on (encoding itself still runs)."""
    calls = []
    encode_audio = model.encode_audio

    def counting_encode_audio(input_features, *args, **kwargs):
        calls.append(input_features.shape[0])
        return encode_audio(input_features, *args, **kwargs)

    monkeypatch.setattr(model, "encode_audio", counting_encode_audio)
    return calls
