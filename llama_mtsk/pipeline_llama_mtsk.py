# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""The automatic-speech-recognition pipeline of Llama-MTSK (remote code, declared in `config.custom_pipelines`).

`pipeline("automatic-speech-recognition", model=folder_or_hub_id, trust_remote_code=True)` returns
[`LlamaMTSKPipeline`]: it decodes files, bytes, arrays or dicts, crops the mouth of a talking-face video, transcribes
inputs longer than the model's window in overlapping chunks and merges the chunk transcripts.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers.pipelines.base import ChunkPipeline, no_collate_fn
from transformers.pipelines.pt_utils import PipelineChunkIterator, PipelineIterator, PipelinePackIterator

from .configuration_llama_mtsk import SAMPLES_PER_FRAME, SAMPLING_RATE, VIDEO_FPS
from .media_llama_mtsk import (
    align_audio_to_frames,
    clip_channels,
    is_media_source,
    load_audio,
    load_audiovisual,
    load_video,
    prepare_audio,
    probe_streams,
    resample_frames,
)


# Chunk length for models without a Whisper window (lip reading only); the paper tests clips of up to 24 s.
DEFAULT_VIDEO_CHUNK_SECONDS = 24.0
# Default overlap of consecutive chunks, as a fraction of the chunk length.
DEFAULT_OVERLAP_FRACTION = 0.2
# Shorter chunks hold two or three words at speaking rate (so most words would be cut at a seam), and each chunk costs
# a whole encoder pass (Whisper pads every chunk to its window) and a generate call.
MIN_CHUNK_SECONDS = 1.0
# Video files are decoded gray (what the video encoder reads) with their shorter side at most this long: a face that
# fills the frame keeps its mouth far wider than the 96-pixel crop (LRS3's 224-pixel frames hold faces about 150
# pixels wide), while a 4K video takes a ninth of its full-size memory.
MAX_VIDEO_SHORT_SIDE = 720
# Chunks decoded together on a GPU unless the caller says otherwise: one chunk leaves the GPU idle, each decoding step
# being bound by reading the LLM's weights, which a batch shares.
DEFAULT_GPU_BATCH_SIZE = 8

_ACCEPTED_INPUTS = (
    "a path or the bytes of a .wav/.flac file or a video container (.mp4, .mkv, .avi, .webm, .mov); a numpy array or "
    'torch tensor of 16 kHz audio; {"raw": array, "sampling_rate": int}; or {"audio": ..., "video": ...} with a '
    'waveform (and "sampling_rate"), a clip (T, H, W) gray or (T, H, W, C) with C = 1 or 3 (and "fps", default 25), '
    "files or bytes"
)


# --------------------------------------------------------------------------------------------------------------------
# Merging the transcripts of overlapping chunks
# --------------------------------------------------------------------------------------------------------------------


def _longest_common_run(tail: list[str], head: list[str]) -> tuple[int, int, int]:
    """Longest run of equal consecutive words shared by `tail` and `head`: returns `(length, i, j)` with
    `tail[i:i + length] == head[j:j + length]`. Among runs of the same length, the one that discards the fewest
    words (tail words after it plus head words before it) wins."""
    best = (0, len(tail), 0)
    best_discarded = math.inf
    previous = [0] * (len(head) + 1)
    for i in range(1, len(tail) + 1):
        current = [0] * (len(head) + 1)
        for j in range(1, len(head) + 1):
            if tail[i - 1] == head[j - 1]:
                current[j] = previous[j - 1] + 1
                length = current[j]
                discarded = (len(tail) - i) + (j - length)
                if length > best[0] or (length == best[0] and discarded < best_discarded):
                    best, best_discarded = (length, i - length, j - length), discarded
        previous = current
    return best


def merge_chunk_transcripts(texts: list[str], overlaps: list[float]) -> str:
    """
    Joins the transcripts of consecutive overlapping chunks without repeating the words spoken in the overlaps.

    For each seam, the words the overlap can hold (its share of each chunk's words, with some margin) at the end of
    the text so far and at the start of the next chunk are aligned: their longest common run of words marks the same
    speech in both, so the text keeps the previous chunk up to the end of that run and continues with the next chunk
    after it. When the two disagree entirely, the overlap is split in the middle, each side dropping half of its
    estimated overlap words (the words nearest a chunk edge are the least reliable).

    Args:
        texts: The transcript of every chunk, in time order.
        overlaps: For each seam (`len(texts) - 1` values), the overlap as a fraction of each of the two chunks' length
            (the chunks have equal length, so one fraction serves both).
    """
    if len(overlaps) != max(len(texts) - 1, 0):
        raise ValueError(f"Got {len(texts)} chunk transcripts but {len(overlaps)} overlaps (expected one per seam)")
    if not texts:
        return ""
    merged = texts[0].split()
    previous_chunk = len(merged)  # words at the end of `merged` that came from the previous chunk
    for text, overlap in zip(texts[1:], overlaps):
        words = text.split()
        # The overlap holds about `overlap * n` of a chunk's `n` words; search a little more on each side.
        tail_size = min(previous_chunk, math.ceil(previous_chunk * overlap * 1.5) + 2)
        head_size = min(len(words), math.ceil(len(words) * overlap * 1.5) + 2)
        tail = merged[len(merged) - tail_size :]
        length, i, j = _longest_common_run(tail, words[:head_size])
        if length > 0:
            merged = merged[: len(merged) - tail_size + i + length] + words[j + length :]
        else:
            drop_tail = round(previous_chunk * overlap / 2)
            drop_head = round(len(words) * overlap / 2)
            merged = merged[: len(merged) - drop_tail] + words[drop_head:]
        previous_chunk = len(words)
    return " ".join(merged)


def chunk_starts(total: int, window: int, overlap: int) -> list[int]:
    """Start offsets of chunks of length `window` covering `[0, total)` with at least `overlap` shared between
    neighbours, spread evenly so that the last chunk ends at `total` and is full length too."""
    if total <= window:
        return [0]
    if not 0 <= overlap < window:
        raise ValueError(f"The overlap ({overlap}) must be at least 0 and shorter than the chunk ({window})")
    count = 1 + math.ceil((total - window) / (window - overlap))
    return [round(index * (total - window) / (count - 1)) for index in range(count)]


# --------------------------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------------------------


class LlamaMTSKPipeline(ChunkPipeline):
    r"""
    Speech recognition from audio, lips or both with a Llama-MTSK checkpoint, at the scale the caller chooses.

    Inputs (one, or a list for a batch):
        - a path, or the bytes, of a `.wav`/`.flac` file or a video container (`.mp4`, `.mkv`, `.avi`, `.webm`, `.mov`):
          the streams the model uses are decoded (audio and video for an audio-visual model);
        - a numpy array / torch tensor of 16 kHz audio, or `{"raw": array, "sampling_rate": sr}` (`"array"` also works);
        - `{"audio": ..., "video": ..., "sampling_rate": sr, "fps": fps}`: each stream an array, a file or bytes (or a
          `{"bytes", "path"}` record); a clip is uint8 or float in [0, 1], at `fps` (default 25), its layout read from
          its number of axes alone: (T, H, W) is gray whatever its sizes, (T, H, W, C) is channels-last with C = 1
          (gray) or 3 (RGB).
        A video that is not already a mouth ROI (a talking-face video) is cropped around the mouth first.

    Call arguments:
        scale: `(audio_rate, video_rate)`, or an int for a single-modality model; default: the finest trained scale.
            One scale serves the whole call (a list of scales, one per input, is refused: call once per scale).
            `"auto"` with `max_llm_tokens=N`: each input (each chunk of a long one) at the finest scale whose LLM
            input fits N tokens. `"cascade"`: the coarsest scale first, finer ones only where the transcript's
            confidence is below `cascade_threshold` (default: the checkpoint's calibrated threshold).
        generate_kwargs: `dict` passed to `model.generate` (e.g. `{"num_beams": 15, "max_new_tokens": 32}`); generation
            parameters can also be given directly (`max_new_tokens=...`). On a GPU, `cache_implementation="static"`
            decodes with a static KV cache and the LLM's decoding step compiled (greedy decoding).
        batch_size: Chunks decoded together; default 8 on a GPU, 1 otherwise.
        chunk_length_s: Chunk length for long inputs; default and maximum: the Whisper window (24 s for lip reading);
            minimum 1 s.
        stride_length_s: Overlap of consecutive chunks, default 20 % of the chunk length.
        crop_mouth: `None` (default) crops the mouth when the video does not look like a mouth ROI; `True` always,
            `False` never.

    Returns:
        `{"text": transcript, "scale": the scale it was decoded at, "llm_tokens": the LLM tokens it cost}` per input:
        the transcript in lower case; a long input's chunks may end at different scales ("scale" is then the list of
        each chunk's); LLM tokens count input and generated tokens of every pass over every chunk.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False
    _pipeline_calls_generate = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._batch_size is None and self.device.type == "cuda":
            self._batch_size = DEFAULT_GPU_BATCH_SIZE
        if self.processor is None:
            raise ValueError("LlamaMTSKPipeline needs the checkpoint's processor (processor_config.json)")
        self.processor.check_whisper_window(self.model.config)
        self._mouth_roi_extractor = None

    def _sanitize_parameters(
        self,
        scale: int | tuple | list | None = None,
        generate_kwargs: dict | None = None,
        chunk_length_s: float | None = None,
        stride_length_s: float | None = None,
        crop_mouth: bool | None = None,
        max_llm_tokens: int | None = None,
        cascade_threshold: float | None = None,
        cascade_confidence: str | None = None,
        **generation_parameters,
    ):
        preprocess_params, forward_params = {}, {}
        if chunk_length_s is not None:
            preprocess_params["chunk_length_s"] = chunk_length_s
        if stride_length_s is not None:
            preprocess_params["stride_length_s"] = stride_length_s
        if crop_mouth is not None:
            preprocess_params["crop_mouth"] = crop_mouth
        if isinstance(scale, str):
            if scale not in ("auto", "cascade"):
                raise ValueError(f'scale {scale!r} is not a choice: a trained scale, "auto" or "cascade"')
            forward_params["scale"] = scale
        elif scale is not None:
            forward_params["scale"] = self.model.config.normalize_scale(scale)
        adaptive = {
            "max_llm_tokens": max_llm_tokens,
            "cascade_threshold": cascade_threshold,
            "cascade_confidence": cascade_confidence,
        }
        adaptive = {name: value for name, value in adaptive.items() if value is not None}
        if adaptive:
            forward_params["adaptive"] = adaptive
        if generate_kwargs is not None or generation_parameters:
            duplicated = set(generate_kwargs or {}) & set(generation_parameters)
            if duplicated:
                raise ValueError(f"{sorted(duplicated)} given both in generate_kwargs and as arguments")
            forward_params["generate_kwargs"] = {**(generate_kwargs or {}), **generation_parameters}
        return preprocess_params, forward_params, {}

    # -- decoding the input ------------------------------------------------------------------------------------------

    def _decode_file(self, source: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        config = self.model.config
        has_audio, has_video = probe_streams(source)
        use_audio = config.uses_audio and has_audio
        use_video = config.uses_video and has_video
        if use_audio and use_video:
            return load_audiovisual(source, gray=True, max_short_side=MAX_VIDEO_SHORT_SIDE)
        if use_video:
            return None, load_video(source, fps=VIDEO_FPS, gray=True, max_short_side=MAX_VIDEO_SHORT_SIDE)[0]
        if use_audio:
            return load_audio(source), None
        return None, None  # the modality check explains what is missing

    @staticmethod
    def _unwrap_record(value: Any) -> Any:
        """A datasets media record `{"bytes": ..., "path": ...}` -> its bytes, or its path when it has no bytes."""
        if isinstance(value, dict) and (value.get("bytes") is not None or value.get("path") is not None):
            return value["bytes"] if value.get("bytes") is not None else value["path"]
        return value

    def _decode_audio_stream(self, value: Any, sampling_rate: int | None) -> np.ndarray:
        """The `"audio"` of an `{"audio": ..., "video": ...}` input -> 16 kHz float32 waveform."""
        value = self._unwrap_record(value)
        if isinstance(value, dict):
            if "raw" not in value and "array" not in value:
                raise ValueError(f'input["audio"] is a dict with keys {sorted(value)}; expected {_ACCEPTED_INPUTS}')
            sampling_rate = value.get("sampling_rate", sampling_rate)
            value = value["raw"] if "raw" in value else value["array"]
        if is_media_source(value):
            return load_audio(value)
        if sampling_rate is None:
            raise ValueError('input["audio"] is a raw waveform: give its rate as input["sampling_rate"]')
        return prepare_audio(value, sampling_rate, name='input["audio"]')

    def _decode_video_stream(self, value: Any, fps: float | None) -> np.ndarray:
        """The `"video"` of an `{"audio": ..., "video": ...}` input -> frames (T, H, W) gray or (T, H, W, 3) RGB at
        25 fps (values are checked by the video processor)."""
        value = self._unwrap_record(value)
        if isinstance(value, dict):
            raise ValueError(f'input["video"] is a dict with keys {sorted(value)}; expected {_ACCEPTED_INPUTS}')
        if is_media_source(value):
            return load_video(value, fps=VIDEO_FPS, gray=True, max_short_side=MAX_VIDEO_SHORT_SIDE)[0]
        frames = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if clip_channels(frames, name='input["video"]') == 1:
            frames = frames[..., 0]
        if len(frames) == 0:
            raise ValueError('input["video"] has zero frames')
        fps = float(VIDEO_FPS if fps is None else fps)
        if fps <= 0:
            raise ValueError(f'input["fps"] must be positive, got {fps}')
        if fps != VIDEO_FPS:
            frames = resample_frames(frames, np.arange(len(frames)) / fps, VIDEO_FPS)
        return frames

    def _decode(self, inputs: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Any accepted input -> (16 kHz float32 waveform or None, 25 fps frames or None)."""
        if is_media_source(inputs):
            return self._decode_file(inputs)
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            return prepare_audio(inputs, SAMPLING_RATE, name="input audio"), None
        if not isinstance(inputs, dict):
            raise TypeError(f"Unsupported input of type {type(inputs).__name__}; expected {_ACCEPTED_INPUTS}")
        if "raw" in inputs or "array" in inputs:
            if "sampling_rate" not in inputs:
                raise ValueError('A {"raw": ...} input needs its "sampling_rate"')
            waveform = inputs["raw"] if "raw" in inputs else inputs["array"]
            return prepare_audio(waveform, inputs["sampling_rate"], name="input audio"), None
        if inputs.get("bytes") is not None or inputs.get("path") is not None:
            return self._decode_file(self._unwrap_record(inputs))
        if "audio" not in inputs and "video" not in inputs:
            raise ValueError(f"Unsupported input dict with keys {sorted(inputs)}; expected {_ACCEPTED_INPUTS}")
        config = self.model.config
        audio = video = None
        if inputs.get("audio") is not None and config.uses_audio:
            audio = self._decode_audio_stream(inputs["audio"], inputs.get("sampling_rate"))
        if inputs.get("video") is not None and config.uses_video:
            video = self._decode_video_stream(inputs["video"], inputs.get("fps"))
        if audio is not None and video is not None:
            audio = align_audio_to_frames(audio, len(video), name="input")
        return audio, video

    def _check_modalities(self, audio: np.ndarray | None, video: np.ndarray | None) -> None:
        config = self.model.config
        missing = [
            name for name, needed, value in (("audio", config.uses_audio, audio), ("video", config.uses_video, video))
            if needed and value is None
        ]
        if missing:
            needs = {
                "audio": "an audio (speech recognition) model: it needs audio, e.g. a .wav/.flac file, a video with sound or a waveform",
                "video": "a video-only (lip-reading) model: it needs a video of the speaker's mouth or face (a video file, or {'video': frames})",
                "audiovisual": "an audio-visual model: it needs audio and video, e.g. a video with sound, or {'audio': waveform, 'sampling_rate': sr, 'video': frames}",
            }[config.modality]
            raise ValueError(f"The input has no {' and no '.join(missing)}, but this is {needs}")

    def _crop_mouth(self, frames: np.ndarray, crop_mouth: bool | None) -> np.ndarray:
        from .mouth_roi import MouthROIExtractor, looks_like_mouth_roi

        # One frame's shape: (H, W) or (H, W, 3) is unambiguous, where a whole gray clip (T, H, 3) would not be.
        if crop_mouth is False or (crop_mouth is None and looks_like_mouth_roi(frames[0])):
            return frames
        if frames.dtype != np.uint8:
            raise ValueError(
                f"The video ({frames.shape[1]}x{frames.shape[2]}) is not a mouth ROI, and cropping the mouth needs uint8 "
                f"frames, got {frames.dtype}"
            )
        if self._mouth_roi_extractor is None:
            self._mouth_roi_extractor = MouthROIExtractor()
        try:
            return self._mouth_roi_extractor.extract(frames, fps=VIDEO_FPS)
        except ImportError as error:
            raise ImportError(
                f"The video ({frames.shape[1]}x{frames.shape[2]} pixels) looks like a talking-face video, not a mouth "
                f"ROI, and cropping the mouth needs a face-landmark library: {error}. Alternatively pass 96x96 mouth "
                "crops, or crop_mouth=False to use the frames as they are."
            ) from error

    # -- the pipeline steps ------------------------------------------------------------------------------------------

    def preprocess(
        self,
        inputs: Any,
        chunk_length_s: float | None = None,
        stride_length_s: float | None = None,
        crop_mouth: bool | None = None,
    ):
        audio, video = self._decode(inputs)
        self._check_modalities(audio, video)
        if video is not None:
            video = self._crop_mouth(video, crop_mouth)

        window_s = self.processor.window_samples / SAMPLING_RATE if audio is not None else DEFAULT_VIDEO_CHUNK_SECONDS
        if chunk_length_s is not None:
            if isinstance(chunk_length_s, bool) or not isinstance(chunk_length_s, (int, float)):
                raise TypeError(f"chunk_length_s must be a number of seconds, got {type(chunk_length_s).__name__}")
            if not MIN_CHUNK_SECONDS <= chunk_length_s <= window_s:
                raise ValueError(
                    f"chunk_length_s must be in [{MIN_CHUNK_SECONDS:g}, {window_s:g}] s for this model, got "
                    f"{chunk_length_s}: the maximum is the encoder's window; a chunk shorter than "
                    f"{MIN_CHUNK_SECONDS:g} s holds two or three words, so most words would be cut at a seam, and "
                    "every chunk costs a whole encoder pass and a generate call"
                )
            window_s = chunk_length_s
        overlap_s = DEFAULT_OVERLAP_FRACTION * window_s if stride_length_s is None else stride_length_s
        if not 0 <= overlap_s < window_s / 2:
            raise ValueError(f"stride_length_s must be at least 0 and under half the chunk ({window_s / 2:g} s), got {overlap_s}")

        # Chunks are cut on the video frame grid when there is video, so that both streams stay aligned.
        rate, unit = (VIDEO_FPS, SAMPLES_PER_FRAME) if video is not None else (SAMPLING_RATE, 1)
        total = len(video) if video is not None else len(audio)
        window = max(1, int(window_s * rate))  # rounded down: a chunk's audio must fit the Whisper window
        overlap = int(round(overlap_s * rate))
        starts = chunk_starts(total, window, overlap)
        for index, start in enumerate(starts):
            end = min(start + window, total)
            chunk_inputs = self.processor(
                audio=None if audio is None else [audio[start * unit : end * unit]],
                videos=None if video is None else [video[start:end]],
                sampling_rate=SAMPLING_RATE,
                return_tensors="pt",
            )
            # The overlap with the next chunk, as a fraction of the chunk length, for merging the transcripts.
            next_overlap = (start + window - starts[index + 1]) / window if index + 1 < len(starts) else 0.0
            yield {
                **chunk_inputs,
                "overlap": torch.tensor([next_overlap], dtype=torch.float64),
                "is_last": index == len(starts) - 1,
            }

    def _forward(
        self,
        model_inputs: dict,
        scale: tuple | str | None = None,
        generate_kwargs: dict | None = None,
        adaptive: dict | None = None,
    ) -> dict:
        is_last = model_inputs.pop("is_last")
        overlap = model_inputs.pop("overlap")
        generate_kwargs = {**self._prepare_generate_kwargs(generate_kwargs or {}), "return_dict_in_generate": True}
        output = self.model.generate(**model_inputs, scale=scale, **(adaptive or {}), **generate_kwargs)
        scales = self.model.config.scales
        return {
            "tokens": output.sequences,
            # Tensors, so that a batch of chunks splits back into its items.
            "scale_index": torch.tensor([scales.index(row_scale) for row_scale in output.scales]),
            "llm_tokens": output.llm_tokens.cpu(),
            "overlap": overlap,
            "is_last": is_last,
        }

    def postprocess(self, model_outputs: list[dict]) -> dict:
        texts = [self.processor.batch_decode(output["tokens"])[0] for output in model_outputs]
        overlaps = [float(output["overlap"].reshape(-1)[0]) for output in model_outputs[:-1]]
        scales = [self.model.config.scales[int(output["scale_index"].reshape(-1)[0])] for output in model_outputs]
        if not self.model.config.uses_video or not self.model.config.uses_audio:
            scales = [audio_rate if video_rate is None else video_rate for audio_rate, video_rate in scales]
        return {
            "text": merge_chunk_transcripts(texts, overlaps),
            "scale": scales[0] if len(set(scales)) == 1 else scales,
            "llm_tokens": sum(int(output["llm_tokens"].reshape(-1)[0]) for output in model_outputs),
        }

    # -- batching ----------------------------------------------------------------------------------------------------

    @staticmethod
    def _collate(items: list[dict]) -> dict:
        """Stacks chunks of different inputs: Whisper features all have the window's length; videos are right-padded
        with zeros in time (their masks mark the real frames)."""
        batch = {"is_last": [item["is_last"] for item in items]}
        for key in items[0]:
            if key == "is_last":
                continue
            tensors = [item[key] for item in items]
            if key in ("pixel_values_videos", "pixel_values_videos_mask"):
                length = max(tensor.shape[1] for tensor in tensors)
                tensors = [
                    torch.nn.functional.pad(tensor, [0, 0] * (tensor.dim() - 2) + [0, length - tensor.shape[1]])
                    for tensor in tensors
                ]
            batch[key] = torch.cat(tensors, dim=0)
        return batch

    def get_iterator(self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params):
        # As ChunkPipeline.get_iterator, with a collate function that knows how to pad this model's inputs.
        if "TOKENIZERS_PARALLELISM" not in os.environ:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        dataset = PipelineChunkIterator(inputs, self.preprocess, preprocess_params)
        collate_fn = no_collate_fn if batch_size == 1 else self._collate
        dataloader = DataLoader(dataset, num_workers=min(num_workers, 1), batch_size=batch_size, collate_fn=collate_fn)
        model_iterator = PipelinePackIterator(dataloader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


__all__ = ["LlamaMTSKPipeline", "chunk_starts", "merge_chunk_transcripts"]
