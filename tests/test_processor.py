"""The processor: media decoding, audio and video preparation, labels, decoding, errors, save/load."""

import gc
import io
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from transformers import AutoProcessor, WhisperFeatureExtractor

from llama_mtsk.media_llama_mtsk import (
    align_audio_to_frames,
    load_audio,
    load_audiovisual,
    load_video,
    prepare_audio,
    probe_streams,
    resample_frames,
    rgb_to_gray,
)
from llama_mtsk.processing_llama_mtsk import (
    LlamaMTSKProcessor,
    LlamaMTSKVideoProcessor,
    normalize_text,
    standardize_waveform,
)

from media_samples import (
    empty_video_bytes,
    faststart_mp4,
    flac_bytes,
    mouth_frames,
    mp4_bytes,
    signal,
    smooth_frames,
    wav_bytes,
)
from tiny_models import tiny_config, tiny_model, tiny_tokenizer


MEAN, STD = 0.421, 0.165


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    """Follows the tiny config: 8 mel bins, a 2 s Whisper window, 18x18 ROIs cropped to 16x16."""
    return LlamaMTSKProcessor.from_model_config(tiny_config(), tokenizer)


@pytest.fixture(scope="module")
def full_processor(tokenizer):
    """The real sizes: 80 mel bins, 30 s window, 96 -> 88 crops."""
    return LlamaMTSKProcessor(
        WhisperFeatureExtractor(return_attention_mask=True), tokenizer, LlamaMTSKVideoProcessor()
    )


# -- following the model config --------------------------------------------------------------------------------------


def test_processor_follows_the_model_config(processor):
    config = tiny_config()
    assert processor.feature_extractor.feature_size == config.audio_config.num_mel_bins
    assert processor.window_samples == 2 * config.audio_config.max_source_positions * 160
    assert processor.video_processor.crop_size == {"height": config.video_config.image_size, "width": 16}
    assert processor.video_processor.size == {"height": config.video_config.roi_size, "width": 18}


def test_window_that_is_not_whole_seconds(tokenizer):
    config = tiny_config(modality="audio")
    config.audio_config.max_source_positions = 75  # 150 mel frames = 1.5 s
    processor = LlamaMTSKProcessor.from_model_config(config, tokenizer)
    features = processor(audio=signal(1.2), sampling_rate=16000)
    assert features["input_features"].shape == (1, 8, 150)
    assert int(features["input_features_mask"].sum()) == 120


# -- outputs ---------------------------------------------------------------------------------------------------------


def test_batch_outputs_shapes_masks_and_labels(processor, tokenizer):
    audio = [signal(1.5, seed=1), signal(0.7, seed=2)]
    videos = [mouth_frames(30, color=True), mouth_frames(20)]
    out = processor(audio=audio, videos=videos, text=["Set RED now", "  bin   blue "], sampling_rate=16000)

    assert set(out) == {"input_features", "input_features_mask", "pixel_values_videos", "pixel_values_videos_mask", "labels"}
    assert out["input_features"].shape == (2, 8, 200) and out["input_features"].dtype == torch.float32
    assert out["input_features_mask"].dtype == torch.long
    assert out["input_features_mask"].sum(-1).tolist() == [150, 70]
    assert out["input_features_mask"][1, :70].all() and not out["input_features_mask"][1, 70:].any()

    assert out["pixel_values_videos"].shape == (2, 30, 1, 16, 16)
    assert out["pixel_values_videos_mask"].sum(-1).tolist() == [30, 20]
    assert (out["pixel_values_videos"][1, 20:] == 0).all()

    ids = tokenizer.convert_tokens_to_ids
    eos = tokenizer.eos_token_id
    assert out["labels"].tolist() == [
        [ids("set"), ids("red"), ids("now"), eos],
        [ids("bin"), ids("blue"), eos, -100],
    ]


def test_single_inputs_and_numpy_tensors(processor):
    out = processor(audio=signal(1.0), videos=mouth_frames(10), sampling_rate=16000, return_tensors="np")
    assert isinstance(out["input_features"], np.ndarray) and out["input_features"].shape == (1, 8, 200)
    assert out["pixel_values_videos"].shape == (1, 10, 1, 16, 16)


def test_audio_is_standardised_per_utterance_before_whisper(processor):
    wave = signal(1.3)
    out = processor(audio=wave, sampling_rate=16000)
    shifted = processor(audio=3.0 * wave + 0.2, sampling_rate=16000)
    torch.testing.assert_close(out["input_features"], shifted["input_features"], atol=1e-4, rtol=0)

    standardized = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-8)
    torch.testing.assert_close(torch.from_numpy(standardize_waveform(wave)), torch.from_numpy(standardized.astype(np.float32)))
    expected = processor.feature_extractor(
        standardized.astype(np.float32), sampling_rate=16000, return_tensors="pt", return_attention_mask=True
    )
    torch.testing.assert_close(out["input_features"], expected["input_features"])


def test_batched_audio_features_equal_single_ones(processor):
    waves = [signal(1.5, seed=3), signal(0.4, seed=4)]
    batch = processor(audio=waves, sampling_rate=16000)
    for row, wave in enumerate(waves):
        single = processor(audio=wave, sampling_rate=16000)
        torch.testing.assert_close(batch["input_features"][row : row + 1], single["input_features"])


@pytest.fixture(scope="module")
def audio_model():
    return tiny_model(modality="audio")


@pytest.mark.parametrize(
    "samples, whisper_frames",
    [
        (20360, 63),  # remainder 200 samples over 320: the feature extractor's mask, ceil(20360 / 160) = 128, says 64
        (24000, 75),
        (9280, 28),  # floor(9280 / 320) is 29, but 9280 / 16000 * 50 = 28.999999999999996 in floats
        (18560, 57),  # 29 video frames of audio-visual input (29 x 640 samples): 58 by floor, 57 in floats
    ],
)
def test_audio_frame_count_is_the_authors(processor, audio_model, samples, whisper_frames):
    """The authors keep int(samples / 16000 * 50) Whisper frames of a clip; the model keeps half the mel frames the
    mask marks, so the mask marks twice that many."""
    assert int(samples / 16000 * 50) == whisper_frames
    wave = signal(2.0)[:samples]
    inputs = processor(audio=wave, sampling_rate=16000)
    mask = inputs["input_features_mask"]
    assert mask.sum().item() == 2 * whisper_frames and mask[0, : 2 * whisper_frames].all()
    assert audio_model.audio_frame_lengths(inputs["input_features"], mask).tolist() == [whisper_frames]
    extractor_mask = processor.feature_extractor(
        wave, sampling_rate=16000, padding="max_length", max_length=32000, return_attention_mask=True
    )["attention_mask"]
    assert extractor_mask.sum() == -(-samples // 160)  # what the mask held before: ceil(samples / 160) mel frames


def test_features_rounded_to_bfloat16_as_the_authors_do(tmp_path):
    config = tiny_config(modality="audio")
    plain = LlamaMTSKProcessor.from_model_config(config, tiny_tokenizer())
    rounded = LlamaMTSKProcessor.from_model_config(config, tiny_tokenizer(), round_features_to_bfloat16=True)
    wave = signal(1.3)
    features = plain(audio=wave, sampling_rate=16000)
    reference = plain.feature_extractor(
        standardize_waveform(wave), sampling_rate=16000, padding="max_length", max_length=32000, return_tensors="pt"
    )["input_features"]
    assert torch.equal(features["input_features"], reference)  # off: the features are untouched

    rounded_features = rounded(audio=wave, sampling_rate=16000)
    assert rounded_features["input_features"].dtype == torch.float32
    assert torch.equal(rounded_features["input_features"], reference.to(torch.bfloat16).float())
    assert not torch.equal(rounded_features["input_features"], reference)
    assert torch.equal(rounded_features["input_features_mask"], features["input_features_mask"])

    rounded.save_pretrained(tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True).round_features_to_bfloat16 is True
    assert plain.round_features_to_bfloat16 is False


# -- transcripts -----------------------------------------------------------------------------------------------------


def test_one_text_normaliser_keeps_accented_letters_and_other_scripts(processor):
    assert normalize_text("CAFÉ NAÏVE ÜBER straße") == "cafe naive uber strasse"
    assert normalize_text("¿Dónde está el niño? ¡Mañana!") == "donde esta el nino manana"
    assert normalize_text("L’élève a déjà mangé « crème brûlée ».") == "l'eleve a deja mange creme brulee"
    assert normalize_text("Привет, МИР! Ёлка") == "привет мир ёлка"
    assert normalize_text("नमस्ते, दुनिया।") == "नमस्ते दुनिया"  # the vowel signs and the virama are kept
    assert normalize_text("東京へ行く。ガギグ") == "東京へ行く ガギグ"
    assert normalize_text("Ｆｕｌｌｗｉｄｔｈ ﬁne") == "fullwidth fine"
    assert normalize_text("Place BLUE at F-2, now!") == "place blue at f 2 now"
    assert normalize_text("  'Don't'   STOP  ") == "don't stop"
    assert normalize_text("rock 'n' roll") == "rock n roll"

    # Corpus records, WER references and hypotheses, labels and decoded text all use this one function.
    from mtsk_data import records
    from mtsk_train import evaluation

    assert records.normalize_text is normalize_text and evaluation.normalize_text is normalize_text
    record = records.make_record("r1", "cafe привет", "speaker", signal(0.08), mouth_frames(2))
    assert record["text"] == "cafe привет"
    with pytest.raises(ValueError, match="use normalize_text"):
        records.make_record("r2", "Café", "speaker", signal(0.08), mouth_frames(2))
    labels = processor(text=["Set, RED -- now!"])["labels"]
    assert torch.equal(labels, processor(text=["set red now"])["labels"])
    assert processor.batch_decode(labels) == ["set red now"]


# -- audio formats ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proc_name", ["processor", "full_processor"])
def test_44k_stereo_int16_gives_the_features_of_16k_mono_float(proc_name, request):
    processor = request.getfixturevalue(proc_name)
    reference = signal(1.5, 16000)
    high = signal(1.5, 44100)
    stereo = np.stack([high, 0.5 * high], axis=1)
    pcm = np.round(stereo / np.abs(stereo).max() * 0.8 * 32767).astype(np.int16)

    torch.testing.assert_close(
        torch.from_numpy(standardize_waveform(prepare_audio(pcm, 44100))),
        torch.from_numpy(standardize_waveform(reference)),
        atol=1e-2,
        rtol=0,
    )
    expected = processor(audio=reference, sampling_rate=16000)
    resampled = processor(audio=pcm, sampling_rate=44100)
    assert torch.equal(resampled["input_features_mask"], expected["input_features_mask"])
    difference = (resampled["input_features"] - expected["input_features"]).abs()
    assert difference.max() < 0.05 and difference.mean() < 1e-3
    # Without resampling the same samples would be a different signal altogether.
    wrong = processor(audio=pcm[: 24000, 0].astype(np.float32), sampling_rate=16000)
    assert (wrong["input_features"] - expected["input_features"]).abs().mean() > 0.05


def test_integer_pcm_scaling_and_channel_layouts():
    wave = signal(0.5)
    pcm16 = np.round(wave * 32767).astype(np.int16)
    np.testing.assert_allclose(prepare_audio(pcm16, 16000), pcm16 / 32768.0, atol=1e-7)
    pcm32 = pcm16.astype(np.int32) << 16
    np.testing.assert_allclose(prepare_audio(pcm32, 16000), pcm16 / 32768.0, atol=1e-7)
    unsigned = np.array([0, 128, 255], dtype=np.uint8)
    np.testing.assert_allclose(prepare_audio(unsigned, 16000), [-1.0, 0.0, 127 / 128], atol=1e-7)

    left, right = wave, signal(0.5, seed=5)
    mono = (left + right) / 2
    np.testing.assert_allclose(prepare_audio(np.stack([left, right], axis=1), 16000), mono, atol=1e-7)
    np.testing.assert_allclose(prepare_audio(np.stack([left, right], axis=0), 16000), mono, atol=1e-7)
    np.testing.assert_allclose(prepare_audio(torch.from_numpy(mono).to(torch.float64), 16000), mono, atol=1e-7)
    np.testing.assert_allclose(prepare_audio(mono.tolist(), 16000), mono, atol=1e-7)
    assert prepare_audio(signal(1.0, 8000), 8000).shape == (16000,)


def test_load_audio_formats_agree(tmp_path):
    wave = signal(0.8, 22050)
    expected = prepare_audio(wave, 22050)
    (tmp_path / "a.wav").write_bytes(wav_bytes(wave, 22050))
    (tmp_path / "a.flac").write_bytes(flac_bytes(wave, 22050))
    for source in [tmp_path / "a.wav", str(tmp_path / "a.flac"), wav_bytes(wave, 22050), io.BytesIO(flac_bytes(wave, 22050))]:
        decoded = load_audio(source)
        assert decoded.dtype == np.float32 and decoded.shape == expected.shape
        np.testing.assert_allclose(decoded, expected, atol=2e-4)  # 16-bit quantisation
    stereo = np.stack([wave, wave], axis=1)
    buffer = io.BytesIO()
    soundfile.write(buffer, stereo, 22050, format="WAV", subtype="PCM_16")
    np.testing.assert_allclose(load_audio(buffer.getvalue()), expected, atol=2e-4)


def test_truncated_wav_is_refused(processor, tmp_path):
    complete = wav_bytes(signal(3.0))  # 48,000 samples, 96,000 bytes of data
    data_start = complete.index(b"data") + 8
    path = tmp_path / "cut.wav"
    path.write_bytes(complete[: data_start + 32000])  # a third of the data the header declares
    message = r"cut\.wav' is truncated: its header declares 48000 samples \(3\.00 s\) but it holds only 16000 \(1\.00"
    with pytest.raises(ValueError, match=message):
        load_audio(path)
    with pytest.raises(ValueError, match=message):
        processor(audio=str(path))
    assert load_audio(complete).shape == (48000,)

    # The header is walked chunk by chunk: an odd-sized chunk (with its padding byte) before the data.
    odd_chunk = b"LIST" + (5).to_bytes(4, "little") + b"INFO1\0"
    chunks = complete[12 : data_start - 8] + odd_chunk + complete[data_start - 8 :]
    with_list = b"RIFF" + (len(chunks) + 4).to_bytes(4, "little") + b"WAVE" + chunks
    assert load_audio(with_list).shape == (48000,)
    with pytest.raises(ValueError, match="declares 48000 samples .* holds only 16000"):
        load_audio(with_list[: len(with_list) - 64000])


def test_processor_reads_files(processor, tmp_path):
    wave = signal(1.0)
    path = tmp_path / "a.wav"
    path.write_bytes(wav_bytes(wave))
    from_file = processor(audio=str(path))
    from_array = processor(audio=load_audio(path), sampling_rate=16000)
    torch.testing.assert_close(from_file["input_features"], from_array["input_features"])

    frames = mouth_frames(12)
    clip = processor(videos=mp4_bytes(frames))
    assert clip["pixel_values_videos"].shape == (1, 12, 1, 16, 16)


# -- video -----------------------------------------------------------------------------------------------------------


def test_video_grayscale_resize_crop_and_normalisation():
    video_processor = LlamaMTSKVideoProcessor(size=18, crop_size=16)
    red = np.zeros((2, 18, 18, 3), dtype=np.uint8)
    red[..., 0] = 255
    out = video_processor.preprocess_clip(red)
    torch.testing.assert_close(out, torch.full((2, 16, 16), (0.299 - MEAN) / STD))

    frames = mouth_frames(3, side=96)
    pixels = torch.from_numpy(frames).float()[:, None] / 255
    resized = F.interpolate(pixels, size=(18, 18), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    expected = (resized[:, 0, 1:17, 1:17] - MEAN) / STD
    torch.testing.assert_close(video_processor.preprocess_clip(frames), expected)
    # (T, H, W, 1) and float [0, 1] inputs are the same clip.
    torch.testing.assert_close(video_processor.preprocess_clip(frames[..., None]), expected)
    torch.testing.assert_close(video_processor.preprocess_clip(frames.astype(np.float32) / 255), expected, atol=1e-6, rtol=0)

    roi = mouth_frames(2, side=18)
    expected_crop = (torch.from_numpy(roi[:, 1:17, 1:17]).float() / 255 - MEAN) / STD
    torch.testing.assert_close(video_processor.preprocess_clip(roi), expected_crop)


def test_rgb_to_gray_is_bt601_luma_in_float():
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
    gray = rgb_to_gray(rgb)
    assert gray.dtype == np.float32
    np.testing.assert_allclose(gray, [0.299 * 255, 0.587 * 255, 0.114 * 255, 0.299 * 10 + 0.587 * 20 + 0.114 * 30], rtol=1e-6)


def test_video_processor_options_follow_base_video_processor():
    frames = mouth_frames(3, side=24)
    pixels = torch.from_numpy(frames).float() / 255
    resized = F.interpolate(pixels[:, None], size=(18, 20), mode="bilinear", antialias=True, align_corners=False)
    resized = resized[:, 0].clamp(0, 1)
    rectangular = LlamaMTSKVideoProcessor(size={"height": 18, "width": 20}, crop_size={"height": 16, "width": 12})
    torch.testing.assert_close(rectangular.preprocess_clip(frames), (resized[:, 1:17, 4:16] - MEAN) / STD)
    no_crop = LlamaMTSKVideoProcessor(size={"height": 18, "width": 20}, crop_size=16, do_center_crop=False)
    torch.testing.assert_close(no_crop.preprocess_clip(frames), (resized - MEAN) / STD)
    no_resize = LlamaMTSKVideoProcessor(size=18, crop_size=16, do_resize=False, do_normalize=False)
    torch.testing.assert_close(no_resize.preprocess_clip(frames), pixels[:, 4:20, 4:20])
    assert no_resize(frames)["pixel_values_videos"].shape == (1, 3, 1, 16, 16)
    with pytest.raises(ValueError, match=r"crop_size \{'height': 16, 'width': 16\} must fit in size"):
        LlamaMTSKVideoProcessor(size=12, crop_size=16)
    with pytest.raises(ValueError, match=r'size: expected a positive integer or \{"height": int, "width": int\}'):
        LlamaMTSKVideoProcessor(size={"shortest_edge": 96})
    with pytest.raises(ValueError, match="cannot crop 16x16 from frames of 8x8"):
        no_resize.preprocess_clip(mouth_frames(2, side=8))
    with pytest.raises(ValueError, match="with do_center_crop=False every clip must have the same size"):
        LlamaMTSKVideoProcessor(do_resize=False, do_center_crop=False)([mouth_frames(2, side=8), mouth_frames(2, side=9)])


def test_video_processor_saves_base_video_processor_names_and_reads_the_former_ones(tmp_path):
    video_processor = LlamaMTSKVideoProcessor(size=18, crop_size=16, image_mean=0.5)
    saved = video_processor.to_dict()
    assert saved["size"] == {"height": 18, "width": 18} and saved["crop_size"] == {"height": 16, "width": 16}
    assert saved["do_resize"] and saved["do_center_crop"] and saved["do_normalize"]
    assert "roi_size" not in saved and "image_size" not in saved
    reloaded = LlamaMTSKVideoProcessor.from_dict(saved)
    assert reloaded.to_dict() == saved
    # processor_config.json of a checkpoint saved before these names (tests/fixtures/checkpoint_5a62781 is one).
    former = LlamaMTSKVideoProcessor.from_dict({"roi_size": 18, "image_size": 16, "image_mean": 0.5, "fps": 25})
    assert former.to_dict() == saved
    frames = mouth_frames(4, side=30)
    torch.testing.assert_close(former.preprocess_clip(frames), video_processor.preprocess_clip(frames))
    with pytest.raises(ValueError, match="Pass size= or its former name roi_size=, not both"):
        LlamaMTSKVideoProcessor(size=18, roi_size=18)


def test_video_files_are_decoded_rgb_and_made_gray_in_float(processor):
    """The luma is taken in float from RGB, as the authors' torchvision Grayscale does, not from FFmpeg's gray (the
    video's luma plane, whereas the RGB of a colour frame is rebuilt with its subsampled chroma)."""
    data = mp4_bytes(smooth_frames(10), fps=25)
    decoded = processor.video_processor.decode(data)
    assert decoded.shape == (10, 18, 18, 3) and decoded.dtype == np.uint8  # downscaled to the ROI size while decoding
    from_file = processor(videos=data)["pixel_values_videos"]
    torch.testing.assert_close(from_file, processor(videos=decoded)["pixel_values_videos"], rtol=0, atol=0)
    roi_sized = mp4_bytes(smooth_frames(10, side=18), fps=25)  # decoded without rescaling
    ffmpeg_gray, _ = load_video(roi_sized, gray=True)
    from_rgb = processor(videos=roi_sized)["pixel_values_videos"]
    difference = (processor(videos=ffmpeg_gray)["pixel_values_videos"] - from_rgb).abs() * STD * 255
    assert 0 < difference.max() < 3  # gray levels: close, not the same


def test_whisper_window_check_names_both_windows(processor):
    config = tiny_config()
    processor.check_whisper_window(config)
    config.audio_config.max_source_positions = 75
    with pytest.raises(ValueError, match=r"Whisper window \(200 mel frames\) differs from the model's \(150 = 2"):
        processor.check_whisper_window(config)
    processor.check_whisper_window(tiny_config(modality="video"))  # nothing to match


def test_clip_layout_is_read_from_its_axes(processor):
    """A 3-D clip is (T, H, W) gray whatever its sizes (W = 1 or 3 included); a 4-D one is (T, H, W, C)."""
    video_processor = processor.video_processor  # 18 -> 16
    for side in (3, 1):
        gray = mouth_frames(5, side=side)  # (5, 3, 3) and (5, 1, 1)
        expected = video_processor.preprocess_clip(gray)
        assert expected.shape == (5, 16, 16)
        torch.testing.assert_close(video_processor.preprocess_clip(gray[..., None]), expected)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        torch.testing.assert_close(video_processor.preprocess_clip(rgb), expected, atol=1e-5, rtol=0)
    narrow = mouth_frames(5, side=6)[:, :, :1]  # (5, 6, 1): five 6x1 gray frames
    assert video_processor.preprocess_clip(narrow).shape == (5, 16, 16)

    # Frames are converted a few at a time: a long clip gives what its parts give.
    long_clip = mouth_frames(70, side=40, color=True)
    torch.testing.assert_close(
        video_processor.preprocess_clip(long_clip),
        torch.cat([video_processor.preprocess_clip(long_clip[:35]), video_processor.preprocess_clip(long_clip[35:])]),
    )


def _peak_rss_growth(function) -> tuple[int, object]:
    """Bytes the process's peak resident memory grew by while `function` ran (Linux: the peak mark is reset first)."""

    def status(key: str) -> int:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    result = function()
    return status("VmHWM") - before, result


def test_high_resolution_video_is_downscaled_while_decoding(full_processor):
    """A 4K clip costs a few megabytes, not 5.5 GB per second: frames become gray at the ROI size in the decoder."""
    width, height, n_frames = 3840, 2160, 8
    gradient = np.add.outer(np.linspace(0, 100, height), np.linspace(0, 100, width)).astype(np.uint8)
    source = np.stack([gradient + np.uint8(9 * index) for index in range(n_frames)])
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in source:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode())
    full_processor(videos=mp4_bytes(mouth_frames(2)))  # warm up: first-call allocations are not the clip's

    growth, features = _peak_rss_growth(lambda: full_processor(videos=buffer.getvalue()))
    # Full-size RGB frames, stacked, then made float32 took 1.8 GB for these eight frames (0.32 s of video).
    assert growth < 512 * 2**20, f"peak memory grew by {growth / 2**20:.0f} MiB"
    pixels = features["pixel_values_videos"][0, :, 0]
    assert pixels.shape == (n_frames, 88, 88)
    # The picture is the one resizing the full-size frames gives.
    expected = full_processor.video_processor.preprocess_clip(source[:2])
    difference = (pixels[:2] - expected).abs() * full_processor.video_processor.image_std
    assert difference.max() < 3 / 255, f"largest difference {difference.max() * 255:.2f} / 255"


def test_clips_already_cropped_are_not_cropped_again():
    video_processor = LlamaMTSKVideoProcessor()  # 96 -> 88
    crop = mouth_frames(4, side=88)
    expected = (torch.from_numpy(crop).float() / 255 - MEAN) / STD
    torch.testing.assert_close(video_processor.preprocess_clip(crop), expected)
    out = video_processor(mouth_frames(4, side=96))
    assert out["pixel_values_videos"].shape == (1, 4, 1, 88, 88)


def test_video_time_resampling():
    video_processor = LlamaMTSKVideoProcessor(size=18, crop_size=16)
    frames = np.stack([np.full((18, 18), index, dtype=np.uint8) for index in range(60)])
    at_50 = video_processor.preprocess_clip(frames, fps=50)
    assert at_50.shape[0] == 30
    torch.testing.assert_close(at_50[:, 0, 0] * STD + MEAN, torch.arange(0, 60, 2).float() / 255)
    assert video_processor.preprocess_clip(frames, fps=30).shape[0] == 50
    assert video_processor.preprocess_clip(frames, fps=25).shape[0] == 60

    # Variable frame rate: the frame on screen at each 25 fps tick.
    times = np.array([0.0, 0.01, 0.05, 0.13, 0.17])
    picked = resample_frames(np.arange(5), times, fps=25)
    assert picked.tolist() == [0, 1, 2, 2, 3]  # ticks at 0, 40, 80, 120, 160 ms


def test_load_video_and_audiovisual(tmp_path):
    frames = smooth_frames(40)
    audio = signal(40 / 25)
    data = mp4_bytes(frames, audio)
    decoded, fps = load_video(data)
    assert decoded.shape == (40, 96, 96, 3) and decoded.dtype == np.uint8 and fps == 25
    assert np.abs(decoded.astype(int) - frames).mean() < 3  # lossy H.264
    gray, _ = load_video(data, gray=True)
    assert gray.shape == (40, 96, 96)
    assert probe_streams(data) == (True, True) and probe_streams(wav_bytes(audio)) == (True, False)
    assert probe_streams(mp4_bytes(frames)) == (False, True)

    wave, clip = load_audiovisual(data)
    assert clip.shape[0] == 40 and wave.shape == (40 * 640,)
    np.testing.assert_allclose(wave[: len(audio) - 2000], load_audio(data)[: len(audio) - 2000])

    faster, fps = load_video(mp4_bytes(mouth_frames(30), fps=30), fps=25)
    assert fps == 25 and faster.shape[0] == 25
    wave, clip = load_audiovisual(mp4_bytes(mouth_frames(30), audio=signal(1.0), fps=30))
    assert clip.shape[0] == 25 and wave.shape == (25 * 640,)


def test_audio_video_alignment(caplog):
    audio = np.ones(10 * 640 + 300, dtype=np.float32)
    assert align_audio_to_frames(audio, 10).shape == (6400,)
    assert align_audio_to_frames(audio[:6000], 10)[6000:].tolist() == [0.0] * 400
    with caplog.at_level(logging.WARNING):
        aligned = align_audio_to_frames(np.ones(8000, dtype=np.float32), 10, name="clip.mp4")
    assert aligned.shape == (6400,)
    assert "clip.mp4" in caplog.text and "8000 samples" in caplog.text and "10 frames" in caplog.text



def test_audio_and_video_far_apart_are_refused():
    """2.1 s of audio with 3 video frames (0.12 s): aligning would throw away 94 % of the audio."""
    with pytest.raises(ValueError, match=r"clip: the audio lasts 2\.100 s \(33600 samples\) but the video 0\.120 s"):
        align_audio_to_frames(signal(2.1), 3, name="clip")
    with pytest.raises(ValueError, match=r"audio lasts 2\.1\d\d s .* but the video 0\.120 s"):
        load_audiovisual(mp4_bytes(mouth_frames(3), audio=signal(2.1)))
    with pytest.raises(ValueError, match=r"audio lasts 1\.0\d\d s .* but the video 2\.000 s"):
        load_audiovisual(mp4_bytes(mouth_frames(50), audio=signal(1.0)))  # half the video without sound
    # The bound is the larger of 0.1 s and 1 % of the video: 0.3 s of 40 s is aligned, 0.5 s is not.
    assert align_audio_to_frames(np.zeros(1000 * 640 + 4800, dtype=np.float32), 1000).shape == (640000,)
    with pytest.raises(ValueError, match=r"at most 0\.400 s"):
        align_audio_to_frames(np.zeros(1000 * 640 + 8000, dtype=np.float32), 1000)


# -- decoding and batch_decode ---------------------------------------------------------------------------------------


def test_batch_decode_gives_clean_lower_case_text(processor, tokenizer):
    ids = tokenizer.convert_tokens_to_ids
    sequences = torch.tensor(
        [
            [ids("set"), ids("red"), tokenizer.eos_token_id, tokenizer.pad_token_id],
            [ids("<audio>"), ids("bin"), ids("</video>"), tokenizer.pad_token_id],
        ]
    )
    assert processor.batch_decode(sequences) == ["set red", "bin"]
    assert processor.decode(sequences[0]) == "set red"
    labels = processor(text=["Set  RED"])["labels"]
    assert processor.batch_decode(labels) == ["set red"]


# -- errors ----------------------------------------------------------------------------------------------------------


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"Unsupported media type '\.txt'.*\.wav"):
        load_audio(tmp_path / "notes.txt")
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video")
    with pytest.raises(ValueError, match="broken.mp4"):
        load_video(tmp_path / "broken.mp4")
    with pytest.raises(ValueError, match="Could not read"):
        load_audio(b"\x00\x01 random bytes that are no media at all")
    (tmp_path / "broken.wav").write_bytes(wav_bytes(signal(0.1))[:30])
    with pytest.raises(ValueError, match="broken.wav"):
        load_audio(tmp_path / "broken.wav")

    empty_wav = io.BytesIO()
    soundfile.write(empty_wav, np.zeros(0, dtype=np.float32), 16000, format="WAV")
    with pytest.raises(ValueError, match="no audio samples"):
        load_audio(empty_wav.getvalue())
    with pytest.raises(ValueError, match="zero frames"):
        load_video(empty_video_bytes())
    with pytest.raises(ValueError, match="no audio stream"):
        load_audio(mp4_bytes(mouth_frames(5)))
    with pytest.raises(ValueError, match="audio file"):
        load_video(wav_bytes(signal(0.2)))


def test_truncated_video_is_refused(tmp_path):
    frames = mouth_frames(50)
    full = faststart_mp4(tmp_path / "full.mp4", frames, signal(2.0))
    assert load_audiovisual(full)[1].shape[0] == 50
    for fraction in (0.5, 0.9):
        with pytest.raises(ValueError, match="truncated"):
            load_audiovisual(full[: int(len(full) * fraction)])
    cut = mp4_bytes(frames, signal(2.0))
    with pytest.raises(ValueError, match="Could not read"):
        load_video(cut[: len(cut) // 2])  # index at the end: unreadable


def test_array_errors(processor):
    with pytest.raises(ValueError, match=r"audio\[0\] holds 1 NaN"):
        processor(audio=np.array([0.1, np.nan, 0.2], dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="NaN or infinite"):
        processor(audio=np.array([0.1, np.inf], dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="no audio samples"):
        processor(audio=np.zeros(0, dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="sampling_rate"):
        processor(audio=signal(0.5))
    with pytest.raises(ValueError, match="shape"):
        processor(audio=np.zeros((2, 3, 100), dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="at most 8 channels"):
        processor(audio=np.zeros((20, 100), dtype=np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match=r"2\.50 s long .* Whisper window of 2 s"):
        processor(audio=signal(2.5), sampling_rate=16000)
    with pytest.raises(ValueError, match=r"videos\[0\] has zero frames"):
        processor(videos=np.zeros((0, 96, 96), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(T, H, W\) \(gray\) or \(T, H, W, C\) with C = 1 \(gray\) or 3"):
        processor(videos=np.zeros((96, 96), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"C = 1 \(gray\) or 3 \(RGB\), got shape \(4, 16, 16, 5\)"):
        processor(videos=np.zeros((4, 16, 16, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"float frames must be in \[0, 1\]"):
        processor(videos=np.full((2, 96, 96), 200.0, dtype=np.float32))
    with pytest.raises(ValueError, match="different batch sizes"):
        processor(audio=[signal(0.5), signal(0.5)], videos=mouth_frames(5), sampling_rate=16000)
    with pytest.raises(ValueError, match="at least one"):
        processor()


# -- save / load -----------------------------------------------------------------------------------------------------


def test_round_trip_through_auto_processor(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "LlamaMTSKProcessor"
    assert type(loaded.video_processor).__name__ == "LlamaMTSKVideoProcessor"
    inputs = dict(audio=signal(1.1), videos=mouth_frames(9), text="set red", sampling_rate=16000)
    expected, actual = processor(**inputs), loaded(**inputs)
    assert set(expected) == set(actual)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name])


def test_outputs_feed_the_model_forward_and_generate(tokenizer):
    from tiny_models import tiny_model

    model = tiny_model(modality="audiovisual", lora_strategy="mss")
    processor = LlamaMTSKProcessor.from_model_config(model.config, tokenizer)
    inputs = processor(
        audio=[signal(1.5, seed=1), signal(0.8, seed=2)],
        videos=[mouth_frames(37, seed=1), mouth_frames(20, seed=2)],
        text=["set red at b now", "bin blue"],
        sampling_rate=16000,
    )
    with torch.no_grad():
        matryoshka = model(**inputs)
        single_scale = model(**inputs, scale=(16, 5))
        generated = model.generate(**{k: v for k, v in inputs.items() if k != "labels"}, scale=(4, 2), max_new_tokens=4)
    assert torch.isfinite(matryoshka.loss) and matryoshka.scale_losses.shape == (4,)
    assert torch.isfinite(single_scale.loss)
    assert generated.shape[0] == 2 and generated.shape[1] <= 4
    assert all(isinstance(text, str) for text in processor.batch_decode(generated))


def test_standardisation_can_be_turned_off_and_the_choice_is_saved(tmp_path):
    config = tiny_config(modality="audio")
    plain = LlamaMTSKProcessor.from_model_config(config, tiny_tokenizer(), standardize_audio=False)
    wave = 0.05 * signal(1.0)
    reference = WhisperFeatureExtractor(feature_size=8, chunk_length=2)(
        wave, sampling_rate=16000, return_tensors="pt", padding="max_length", max_length=32000
    )["input_features"]
    torch.testing.assert_close(plain(audio=wave, sampling_rate=16000)["input_features"], reference)
    standardized = LlamaMTSKProcessor.from_model_config(config, tiny_tokenizer())
    assert not torch.allclose(standardized(audio=wave, sampling_rate=16000)["input_features"], reference)

    plain.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert reloaded.standardize_audio is False
