# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""Processor of Llama-MTSK: the Whisper feature extractor for audio, a video processor for mouth-ROI clips, and the LLM
tokenizer for transcripts. Files are decoded, and raw waveforms and clips checked, by `media_llama_mtsk.py`.

This file is remote code: it travels with every checkpoint and imports only torch, transformers, numpy and its sibling
`media_llama_mtsk.py`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging
from transformers.video_processing_utils import VideoProcessorMixin

# `align_audio_to_frames`, `load_audiovisual`, `probe_streams` and `SAMPLES_PER_FRAME` are not used here: they are
# re-exported because checkpoints saved before `media_llama_mtsk.py` existed had them in this module, and callers that
# take a checkpoint's processing module (its remote code) find them here whatever the checkpoint's age.
from .configuration_llama_mtsk import SAMPLES_PER_FRAME, SAMPLING_RATE, VIDEO_FPS, WHISPER_FRAMES_PER_SECOND
from .media_llama_mtsk import (
    MediaSource,
    align_audio_to_frames,
    check_finite,
    clip_channels,
    is_media_source,
    load_audio,
    load_audiovisual,
    load_video,
    prepare_audio,
    probe_streams,
    resample_frames,
    rgb_to_gray,
    to_numpy,
)


logger = logging.get_logger(__name__)

STANDARDIZE_EPS = 1e-8
# Video frames converted to float at a time: a large clip never exists as float32 at full size.
FRAMES_PER_CONVERSION = 32
# The mouth ROI of the authors' preprocessing, and the crop AV-HuBERT reads from it.
DEFAULT_ROI_SIDE = 96
DEFAULT_CROP_SIDE = 88


# --------------------------------------------------------------------------------------------------------------------
# Transcripts
# --------------------------------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """
    The one transcript normalisation of Llama-MTSK, for corpus transcripts, training labels, decoded hypotheses and
    WER references alike: lower case; accents of Latin letters folded (`é` -> `e`, `ß` -> `ss`, compatibility forms
    such as full-width letters and ligatures decomposed); letters and digits of every script kept, with the marks
    that belong to them (Devanagari vowel signs, Arabic vowels); punctuation dropped, apostrophes inside a word kept
    (`don't`); single spaces.

    >>> normalize_text("¿Qué tal? CAFÉ NAÏVE, über straße!")
    'que tal cafe naive uber strasse'
    """
    decomposed = unicodedata.normalize("NFKD", text.lower().replace("ß", "ss").replace("’", "'"))
    characters = []
    marks_belong_to_letter = False  # whether the combining marks that follow belong to the last letter
    for character in decomposed:
        if unicodedata.category(character).startswith("M"):
            # An accent on a Latin letter is folded away; a mark of another script is part of its letter.
            characters.append(character if marks_belong_to_letter else "")
        elif character.isalnum() or character == "'":
            characters.append(character)
            marks_belong_to_letter = character.isalpha() and not unicodedata.name(character, "").startswith("LATIN")
        else:
            characters.append(" ")
            marks_belong_to_letter = False
    # Apostrophes inside a word stay; quotes around words go.
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", "".join(characters))
    return " ".join(unicodedata.normalize("NFC", text).split())



# --------------------------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------------------------


def standardize_waveform(waveform: np.ndarray) -> np.ndarray:
    """Per-utterance standardisation (layer norm over the whole waveform, eps 1e-8), as the authors do before
    Whisper."""
    waveform = waveform.astype(np.float64)
    standardized = (waveform - waveform.mean()) / np.sqrt(waveform.var() + STANDARDIZE_EPS)
    return standardized.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Video processor
# --------------------------------------------------------------------------------------------------------------------


def _size_dict(value: int | dict[str, int], name: str) -> dict[str, int]:
    """A side or `{"height", "width"}` -> `{"height": h, "width": w}`, both positive integers."""
    size = {"height": value, "width": value} if isinstance(value, (int, np.integer)) else value
    sides = size.values() if isinstance(size, dict) and set(size) == {"height", "width"} else [None]
    if not all(isinstance(side, (int, np.integer)) and not isinstance(side, bool) and side > 0 for side in sides):
        raise ValueError(f'{name}: expected a positive integer or {{"height": int, "width": int}}, got {value!r}')
    return {"height": int(size["height"]), "width": int(size["width"])}


class LlamaMTSKVideoProcessor(VideoProcessorMixin):
    r"""
    Turns mouth-ROI clips into AV-HuBERT inputs: frames made gray (in float, see [`rgb_to_gray`]) in [0, 1], resized to
    `size` (bilinear, antialiased), centre-cropped to `crop_size`, normalised with `image_mean` / `image_std`, and
    resampled in time to `fps`. A clip already at `crop_size` is used as is (the training collator random-crops
    before calling the processor). Clips are zero-padded in time to the longest, and video files are decoded (see
    [`~LlamaMTSKVideoProcessor.decode`]).

    The parameters have the names and meaning of transformers' `BaseVideoProcessor`, which this class does not
    subclass: that class decodes with torchcodec and processes RGB clips of one length, channels first, with
    torchvision; these are gray mouth ROIs of any length, returned with a frame mask. The layout of a clip is read
    from its number of axes alone: a 3-D array is (T, H, W) gray whatever its sizes, a 4-D array is channels-last
    (T, H, W, C) with C = 1 (gray) or 3 (RGB).

    Args:
        do_resize (`bool`, defaults to `True`): Resize frames to `size` (a clip already at `size` or `crop_size` is
            not resized).
        size (`int` or `dict[str, int]`, defaults to `{"height": 96, "width": 96}`): The mouth-ROI size
            (`video_config.roi_size`).
        do_center_crop (`bool`, defaults to `True`): Crop the centre `crop_size` of the resized frames.
        crop_size (`int` or `dict[str, int]`, defaults to `{"height": 88, "width": 88}`): The crop the video encoder
            reads (`video_config.image_size`).
        do_normalize (`bool`, defaults to `True`): Normalise the [0, 1] gray pixels with `image_mean` and `image_std`.
        image_mean (`float`, defaults to 0.421): Mean of the [0, 1] gray pixels.
        image_std (`float`, defaults to 0.165): Standard deviation of the [0, 1] gray pixels.
        fps (`float`, defaults to 25): The frame rate the encoder expects.
        roi_size (`int`, *optional*), image_size (`int`, *optional*): The names of `size` and `crop_size` in the
            `processor_config.json` of checkpoints saved before this class took `BaseVideoProcessor`'s names; read
            from such files, never written.
    """

    model_input_names = ["pixel_values_videos", "pixel_values_videos_mask"]

    def __init__(
        self,
        do_resize: bool = True,
        size: int | dict[str, int] | None = None,
        do_center_crop: bool = True,
        crop_size: int | dict[str, int] | None = None,
        do_normalize: bool = True,
        image_mean: float = 0.421,
        image_std: float = 0.165,
        fps: float = VIDEO_FPS,
        **kwargs,
    ) -> None:
        for name, legacy_name in (("size", "roi_size"), ("crop_size", "image_size")):
            legacy_value = kwargs.pop(legacy_name, None)
            if legacy_value is not None:
                if (size if name == "size" else crop_size) is not None:
                    raise ValueError(f"Pass {name}= or its former name {legacy_name}=, not both")
                size, crop_size = (legacy_value, crop_size) if name == "size" else (size, legacy_value)
        super().__init__(**kwargs)
        self.do_resize = bool(do_resize)
        self.size = _size_dict(DEFAULT_ROI_SIDE if size is None else size, "size")
        self.do_center_crop = bool(do_center_crop)
        self.crop_size = _size_dict(DEFAULT_CROP_SIDE if crop_size is None else crop_size, "crop_size")
        if self.crop_size["height"] > self.size["height"] or self.crop_size["width"] > self.size["width"]:
            raise ValueError(f"crop_size {self.crop_size} must fit in size {self.size}")
        if image_std <= 0:
            raise ValueError(f"image_std must be positive, got {image_std}")
        self.do_normalize = bool(do_normalize)
        self.image_mean = float(image_mean)
        self.image_std = float(image_std)
        self.fps = fps

    def decode(self, source: MediaSource) -> np.ndarray:
        """
        Decodes a video file as this processor reads it: uint8 RGB frames (T, H, W, 3) resampled to `fps` from their
        timestamps and, with `do_resize`, downscaled in the decoder when their shorter side is longer than `size`'s
        (the resize would shrink them anyway, and a large frame never exists here at full size). RGB, not FFmpeg's
        gray: the luma is taken in float from RGB, as the authors' torchvision Grayscale does (FFmpeg's gray, the
        video's luma plane, differs from it by a gray level or two).
        """
        max_short_side = min(self.size.values()) if self.do_resize else None
        frames, _ = load_video(source, fps=self.fps, max_short_side=max_short_side)
        return frames

    def resize_clip(self, video: Any, name: str = "video") -> torch.Tensor:
        """
        One clip -> float32 (T, H, W) gray in [0, 1], resized to `size` when `do_resize` and the clip is at neither
        `size` nor `crop_size`: what the centre crop, or the training collator's random crop, cuts from. Frames are
        converted to float a few at a time, so a large clip never exists in float at full size.

        Args:
            video: (T, H, W) or (T, H, W, C) with C in {1, 3} (RGB), numpy / torch / nested lists; uint8 in [0, 255]
                or float in [0, 1].
            name: How errors name this input.
        """
        array = to_numpy(video, name)
        channels = clip_channels(array, name)
        if array.shape[0] == 0:
            raise ValueError(f"{name} has zero frames")
        if np.issubdtype(array.dtype, np.floating):
            check_finite(array, name)
            low, high = float(array.min()), float(array.max())
            if low < 0.0 or high > 1.0:
                raise ValueError(
                    f"{name}: float frames must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; pass uint8 "
                    "frames in [0, 255] or divide by 255"
                )
        elif array.dtype != np.uint8:
            raise ValueError(f"{name}: expected uint8 or float frames, got dtype {array.dtype}")
        height, width = array.shape[1:3]
        size = (self.size["height"], self.size["width"])
        crop_size = (self.crop_size["height"], self.crop_size["width"])
        resize = self.do_resize and (height, width) not in (size, crop_size)
        if resize and (height < crop_size[0] or width < crop_size[1]):
            logger.warning_once(
                f"{name}: frames of {height}x{width} are upscaled to {size[0]}x{size[1]}; mouth ROIs are expected at "
                "that size"
            )
        return torch.cat(
            [
                self._gray_pixels(array[start : start + FRAMES_PER_CONVERSION], channels, size if resize else None)
                for start in range(0, array.shape[0], FRAMES_PER_CONVERSION)
            ]
        )

    @staticmethod
    def _gray_pixels(frames: np.ndarray, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
        """A few checked frames -> float32 (t, H, W) gray in [0, 1], resized to `size` unless it is None."""
        pixels = frames.astype(np.float32)
        if frames.dtype == np.uint8:
            pixels /= 255.0
        if channels == 3:
            pixels = rgb_to_gray(pixels)
        elif channels == 1:
            pixels = pixels[..., 0]
        pixels = torch.from_numpy(np.ascontiguousarray(pixels))
        if size is None:
            return pixels
        pixels = F.interpolate(pixels[:, None], size=size, mode="bilinear", antialias=True, align_corners=False)
        return pixels[:, 0].clamp_(0.0, 1.0)

    def preprocess_clip(self, video: Any, fps: float | None = None, name: str = "video") -> torch.Tensor:
        """
        One clip -> float32 (T', H, W): [`resize_clip`], then the centre crop, the resampling in time and the
        normalisation (each as this processor's settings say).

        Args:
            video: See [`resize_clip`].
            fps: The clip's frame rate; `None` means it is already at `self.fps`.
            name: How errors name this input.
        """
        pixels = self.resize_clip(video, name)
        height, width = pixels.shape[1:]
        crop_height, crop_width = self.crop_size["height"], self.crop_size["width"]
        if self.do_center_crop and (height, width) != (crop_height, crop_width):
            if crop_height > height or crop_width > width:
                raise ValueError(f"{name}: cannot crop {crop_height}x{crop_width} from frames of {height}x{width}")
            # torchvision's rounding of the offsets.
            top, left = int(round((height - crop_height) / 2.0)), int(round((width - crop_width) / 2.0))
            pixels = pixels[:, top : top + crop_height, left : left + crop_width]
        if fps is not None and float(fps) != float(self.fps):
            if fps <= 0:
                raise ValueError(f"{name}: fps must be positive, got {fps}")
            pixels = resample_frames(pixels, np.arange(pixels.shape[0]) / float(fps), self.fps)
        if self.do_normalize:
            pixels = (pixels - self.image_mean) / self.image_std
        return pixels.contiguous()

    def __call__(
        self,
        videos: Any,
        fps: float | Sequence[float | None] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Processes one clip or a list of clips (see [`preprocess_clip`]); a video file (path, bytes, file-like) is
        decoded first (see [`~LlamaMTSKVideoProcessor.decode`]), and its `fps` entry is then ignored.

        Returns:
            [`BatchFeature`] with `pixel_values_videos` (B, T, 1, H, W) float32, zero-padded in time, and
            `pixel_values_videos_mask` (B, T) long, 1 on real frames.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments for {type(self).__name__}: {sorted(kwargs)}")
        clips = _as_batch(videos, name="videos")
        rates = list(fps) if isinstance(fps, (list, tuple)) else [fps] * len(clips)
        if len(rates) != len(clips):
            raise ValueError(f"Got {len(rates)} frame rates for {len(clips)} videos")
        for index, clip in enumerate(clips):
            if is_media_source(clip):
                clips[index], rates[index] = self.decode(clip), None
        processed = [
            self.preprocess_clip(clip, rate, name=f"videos[{index}]")
            for index, (clip, rate) in enumerate(zip(clips, rates))
        ]
        if len({clip.shape[1:] for clip in processed}) > 1:
            raise ValueError(
                f"The clips have different frame sizes {sorted({tuple(clip.shape[1:]) for clip in processed})}; "
                "with do_center_crop=False every clip must have the same size"
            )
        length = max(clip.shape[0] for clip in processed)
        pixel_values = torch.zeros(len(processed), length, 1, *processed[0].shape[1:])
        mask = torch.zeros(len(processed), length, dtype=torch.long)
        for index, clip in enumerate(processed):
            pixel_values[index, : clip.shape[0], 0] = clip
            mask[index, : clip.shape[0]] = 1
        return BatchFeature(
            {"pixel_values_videos": pixel_values, "pixel_values_videos_mask": mask}, tensor_type=return_tensors
        )

    def preprocess(self, videos: Any, **kwargs) -> BatchFeature:
        return self(videos, **kwargs)


def _as_batch(value: Any, name: str) -> list:
    """One item or a list/tuple of items -> list of items. An item is an array, a tensor, a media source (path,
    bytes, file-like) or a list; a list whose first element is a number is one waveform, not a batch."""
    if is_media_source(value) or isinstance(value, (np.ndarray, torch.Tensor)):
        return [value]
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} is an empty list")
        if isinstance(value[0], (int, float, np.number)):
            return [value]
        return list(value)
    raise TypeError(f"{name}: expected an array, a tensor, a list, a path or bytes, got {type(value).__name__}")


# --------------------------------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------------------------------


class LlamaMTSKProcessor(ProcessorMixin):
    r"""
    Prepares Llama-MTSK inputs: 16 kHz audio -> per-utterance standardisation -> Whisper log-mel (`input_features`,
    `input_features_mask`); mouth-ROI clips -> `pixel_values_videos`, `pixel_values_videos_mask`; transcripts ->
    `labels`. Inputs can be raw arrays or media files (audio decoded with [`load_audio`], videos by the video
    processor).

    Args:
        feature_extractor ([`WhisperFeatureExtractor`]): Its `chunk_length` is the Whisper window; audio longer than
            the window raises (the automatic-speech-recognition pipeline splits long inputs).
        tokenizer ([`PreTrainedTokenizerBase`]): The LLM tokenizer with the added special tokens.
        video_processor ([`LlamaMTSKVideoProcessor`]): Mouth-ROI clip processing.
        standardize_audio (`bool`, defaults to `True`): Standardise each waveform (zero mean, unit variance) before
            the Whisper features, as the authors do. Off for a Whisper encoder trained from scratch: measured here,
            such an encoder recognised a spoken digit 99 % of the time after 200 steps without it, 38 % with it.
        round_features_to_bfloat16 (`bool`, defaults to `False`): Round the log-mel features to bfloat16 precision
            (returned as float32), as the authors' code does before its Whisper encoder whatever the encoder's dtype:
            on for checkpoints converted from their training, so the encoder sees the inputs it was trained on.
    """

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        video_processor,
        standardize_audio: bool = True,
        round_features_to_bfloat16: bool = False,
    ):
        self.standardize_audio = standardize_audio
        self.round_features_to_bfloat16 = round_features_to_bfloat16
        super().__init__(feature_extractor, tokenizer, video_processor)

    @classmethod
    def from_model_config(
        cls, config, tokenizer, standardize_audio: bool = True, round_features_to_bfloat16: bool = False
    ) -> LlamaMTSKProcessor:
        """
        Builds the processor that matches a [`LlamaMTSKConfig`]: the Whisper window and mel bins from
        `config.audio_config` (`max_source_positions * 2` mel frames), the crop sizes and normalisation from
        `config.video_config`. A modality the config does not use gets the defaults. The other arguments are the
        processor's own.
        """
        feature_extractor_kwargs = {}
        audio_config = getattr(config, "audio_config", None)
        if audio_config is not None:
            window_frames = audio_config.max_source_positions * 2
            hop_length = 160
            chunk_length = window_frames * hop_length / SAMPLING_RATE
            feature_extractor_kwargs = {
                "feature_size": audio_config.num_mel_bins,
                "chunk_length": int(chunk_length) if chunk_length.is_integer() else chunk_length,
            }
        feature_extractor = WhisperFeatureExtractor(**feature_extractor_kwargs, return_attention_mask=True)
        video_config = getattr(config, "video_config", None)
        video_kwargs = {}
        if video_config is not None:
            video_kwargs = {
                "size": video_config.roi_size,
                "crop_size": video_config.image_size,
                "image_mean": video_config.image_mean,
                "image_std": video_config.image_std,
            }
        return cls(
            feature_extractor,
            tokenizer,
            LlamaMTSKVideoProcessor(**video_kwargs),
            standardize_audio=standardize_audio,
            round_features_to_bfloat16=round_features_to_bfloat16,
        )

    @property
    def window_samples(self) -> int:
        """Samples in the Whisper window: the longest audio one call accepts."""
        return int(round(self.feature_extractor.chunk_length * self.feature_extractor.sampling_rate))

    def check_whisper_window(self, config) -> None:
        """Raises a `ValueError` naming both when this processor's Whisper window differs from the model's
        (`2 * config.audio_config.max_source_positions` mel frames); a model without audio has no window to match."""
        if not config.uses_audio:
            return
        model_frames = 2 * config.audio_config.max_source_positions
        processor_frames = self.window_samples // self.feature_extractor.hop_length
        if model_frames != processor_frames:
            raise ValueError(
                f"The processor's Whisper window ({processor_frames} mel frames) differs from the model's "
                f"({model_frames} = 2 x audio_config.max_source_positions); build the processor with "
                "LlamaMTSKProcessor.from_model_config(config, tokenizer)"
            )

    @property
    def model_input_names(self) -> list[str]:
        return ["input_features", "input_features_mask", "pixel_values_videos", "pixel_values_videos_mask"]

    def __call__(
        self,
        audio: Any = None,
        videos: Any = None,
        text: str | list[str] | None = None,
        sampling_rate: int | None = None,
        fps: float | Sequence[float | None] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        Prepares one example or a batch (lists). Any of `audio`, `videos`, `text` may be omitted, but not all.

        Args:
            audio: A waveform (numpy / torch / list; float or integer PCM; mono, or one multi-channel clip as
                (samples, channels) or (channels, samples)), a media file (path, bytes, file-like), or a list of these.
            videos: A mouth-ROI clip (T, H, W) or (T, H, W, C), uint8 or float in [0, 1], a video file, or a list.
            text: Transcript(s) -> `labels`: the tokens of the [`normalize_text`] transcript without special tokens,
                then EOS, right-padded with -100.
            sampling_rate: The rate of raw waveforms (required for them; files carry their own).
            fps: Frame rate of raw clips (a number or one per clip); `None` means 25 fps. Video files are resampled to
                25 fps from their timestamps.
            return_tensors: "pt" (default) or "np".

        Returns:
            [`BatchFeature`] with `input_features` (B, n_mels, window frames) and `input_features_mask` (B, window
            frames) when audio is given, `pixel_values_videos` (B, T, 1, H, W) and `pixel_values_videos_mask` (B, T)
            when videos are given, `labels` (B, L) when text is given.
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments for {type(self).__name__}: {sorted(kwargs)}")
        if audio is None and videos is None and text is None:
            raise ValueError("Pass at least one of audio=, videos= or text=")
        outputs: dict[str, Any] = {}
        batch_sizes = {}
        if audio is not None:
            audio_features = self._process_audio_batch(audio, sampling_rate)
            batch_sizes["audio"] = audio_features["input_features"].shape[0]
            outputs.update(audio_features)
        if videos is not None:
            video_features = self.video_processor(videos, fps=fps, return_tensors="pt")
            batch_sizes["videos"] = video_features["pixel_values_videos"].shape[0]
            outputs.update(video_features)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            batch_sizes["text"] = len(texts)
            outputs["labels"] = self._encode_labels(texts)
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"The inputs have different batch sizes: {batch_sizes}")
        return BatchFeature(outputs, tensor_type=return_tensors)

    def _process_audio_batch(self, audio: Any, sampling_rate: int | None) -> dict[str, torch.Tensor]:
        waveforms = []
        for index, clip in enumerate(_as_batch(audio, name="audio")):
            name = f"audio[{index}]"
            if is_media_source(clip):
                waveform = load_audio(clip, sampling_rate=self.feature_extractor.sampling_rate)
            else:
                if sampling_rate is None:
                    raise ValueError(
                        f"{name} is a raw waveform: pass its sampling_rate= (Hz); it is resampled to "
                        f"{self.feature_extractor.sampling_rate} Hz if needed"
                    )
                waveform = prepare_audio(clip, sampling_rate, self.feature_extractor.sampling_rate, name=name)
            if len(waveform) > self.window_samples:
                raise ValueError(
                    f"{name} is {len(waveform) / SAMPLING_RATE:.2f} s long ({len(waveform)} samples at 16 kHz), "
                    f"longer than the model's Whisper window of {self.window_samples / SAMPLING_RATE:g} s "
                    f"({self.window_samples} samples); split it, or use the automatic-speech-recognition pipeline, "
                    "which transcribes long inputs in chunks"
                )
            waveforms.append(standardize_waveform(waveform) if self.standardize_audio else waveform)
        input_features = self.feature_extractor(
            waveforms,
            sampling_rate=self.feature_extractor.sampling_rate,
            max_length=self.window_samples,
            padding="max_length",
            truncation=False,
            return_tensors="pt",
        )["input_features"].float()
        if self.round_features_to_bfloat16:
            input_features = input_features.to(torch.bfloat16).float()
        # The mask marks two mel frames per Whisper frame the model keeps (it halves the mask's sum). That count is
        # the authors' own float expression, int(samples / 16000 * 50): it is floor(samples / 320), except for a few
        # lengths where the float product falls just under an integer (9,280 samples: 28 frames). The feature
        # extractor's mask would cover ceil(samples / 160) mel frames: one Whisper frame more for a remainder above
        # 160 samples.
        sampling_rate = self.feature_extractor.sampling_rate
        input_features_mask = torch.zeros(input_features.shape[0], input_features.shape[-1], dtype=torch.long)
        for index, waveform in enumerate(waveforms):
            input_features_mask[index, : 2 * int(len(waveform) / sampling_rate * WHISPER_FRAMES_PER_SECOND)] = 1
        return {"input_features": input_features, "input_features_mask": input_features_mask}

    def _encode_labels(self, texts: list[str]) -> torch.Tensor:
        eos_token_id = self.tokenizer.eos_token_id
        if eos_token_id is None:
            raise ValueError("The tokenizer has no eos_token_id; labels end with EOS")
        sequences = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text[{index}]: expected a string, got {type(text).__name__}")
            token_ids = self.tokenizer(normalize_text(text), add_special_tokens=False)["input_ids"]
            sequences.append(list(token_ids) + [eos_token_id])
        labels = torch.full((len(sequences), max(len(sequence) for sequence in sequences)), -100, dtype=torch.long)
        for index, sequence in enumerate(sequences):
            labels[index, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        return labels

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Decodes generated token ids to transcripts normalised as the labels are (special tokens dropped, see
        [`normalize_text`])."""
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.tolist()
        sequences = [[token for token in sequence if token >= 0] for sequence in sequences]  # -100 label padding
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [normalize_text(text) for text in texts]

    def decode(self, token_ids, skip_special_tokens: bool = True, **kwargs) -> str:
        """Decodes one sequence of token ids to a normalised transcript (see [`batch_decode`])."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        return self.batch_decode([token_ids], skip_special_tokens=skip_special_tokens, **kwargs)[0]


LlamaMTSKVideoProcessor.register_for_auto_class("AutoVideoProcessor")
LlamaMTSKProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "SAMPLES_PER_FRAME",
    "LlamaMTSKProcessor",
    "LlamaMTSKVideoProcessor",
    "align_audio_to_frames",
    "load_audio",
    "load_audiovisual",
    "load_video",
    "normalize_text",
    "prepare_audio",
    "probe_streams",
    "resample_frames",
    "standardize_waveform",
]
