"""Mouth-ROI extraction: landmarks on a real photograph, alignment, following a moving talking face, missing faces."""

import builtins
import importlib.util
import pickle

import numpy as np
import pytest
from skimage.transform import SimilarityTransform, warp

from llama_mtsk.media_llama_mtsk import rgb_to_gray
from llama_mtsk.mouth_roi import (
    REFERENCE_STABLE_POINTS,
    STABLE_LANDMARKS,
    MouthROIExtractor,
    NoFaceFoundError,
    fit_similarity,
    interpolate_missing,
    looks_like_mouth_roi,
    smooth_landmarks,
)

from fake_corpus import (
    ASTRONAUT_MOUTH_CENTRE,
    ASTRONAUT_MOUTH_CORNERS,
    astronaut,
    faceless_frames,
    talking_face,
)


@pytest.fixture(scope="module")
def extractor() -> MouthROIExtractor:
    return MouthROIExtractor()


@pytest.fixture(scope="module")
def photo_landmarks(extractor) -> np.ndarray:
    return extractor.detect_landmarks(astronaut()[None])[0]


def test_finds_the_mouth_on_a_real_photograph(photo_landmarks):
    # Compared with corners annotated by hand on the photograph.
    (left, right), centre = np.array(ASTRONAUT_MOUTH_CORNERS), np.array(ASTRONAUT_MOUTH_CENTRE)
    assert np.linalg.norm(photo_landmarks[48] - left) < 4
    assert np.linalg.norm(photo_landmarks[54] - right) < 4
    assert np.linalg.norm(photo_landmarks[48:68].mean(axis=0) - centre) < 4


def test_reference_face_is_derived_from_the_photograph(photo_landmarks):
    # The derivation the constant's comment describes: mirror-average, level the eyes, 80 px between the outer eye
    # corners, origin at the mouth centre.
    mirror = (
        list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30, 35, 34, 33, 32, 31]
        + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
        + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
    )
    points = photo_landmarks.astype(np.float64)
    mirrored = points[mirror] * [-1.0, 1.0]
    scale, rotation, translation = fit_similarity(mirrored, points)
    symmetric = (points + scale * mirrored @ rotation.T + translation) / 2
    eye_line = symmetric[45] - symmetric[36]
    angle = -np.arctan2(eye_line[1], eye_line[0])
    level = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    reference = (symmetric - symmetric[48:68].mean(axis=0)) @ level.T * (80.0 / np.linalg.norm(eye_line))
    # Within two pixels: the landmarks move by one or two with the detector's box or the grayscale conversion (the
    # nose tip lies 1.4 px from the constant with an 8-bit fixed-point BT.601 gray, 1.7 px with the float one the
    # extractor uses), while another face or scale would differ by several.
    np.testing.assert_allclose(reference[list(STABLE_LANDMARKS)], REFERENCE_STABLE_POINTS, atol=2.0)


def _similarity_warp(image: np.ndarray, angle_degrees: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """``image`` rotated about its centre, scaled and shifted (a different head pose and camera distance)."""
    centre = np.array(image.shape[1::-1]) / 2
    transform = (
        SimilarityTransform(translation=-centre)
        + SimilarityTransform(rotation=np.deg2rad(angle_degrees), scale=scale)
        + SimilarityTransform(translation=centre + np.array(shift))
    )
    warped = warp(image, transform.inverse, output_shape=image.shape[:2], mode="edge", order=1)
    return np.clip(np.rint(warped * 255), 0, 255).astype(np.uint8)


def test_alignment_removes_head_pose_and_scale(extractor):
    photo = astronaut()
    reference = extractor.extract(photo[None], fps=25.0)[0].astype(np.float64)
    # A pose the HOG detector still finds as the best face (it scores strongly rotated faces lower, and this photo
    # has a face-like emblem on the suit).
    posed = _similarity_warp(photo, angle_degrees=8.0, scale=1.25, shift=(-30.0, 20.0))
    aligned = extractor.extract(posed[None], fps=25.0)[0].astype(np.float64)
    difference = np.abs(aligned - reference).mean()
    # A crop misplaced by 6 pixels differs far more than the realigned one.
    misplaced = np.abs(np.roll(reference, 6, axis=0) - reference)[6:].mean()
    assert difference < 8.0
    assert difference < 0.5 * misplaced


def test_follows_a_moving_talking_face_in_generated_frames(extractor):
    rng = np.random.default_rng(0)
    opening = 19.0 * np.abs(np.sin(np.arange(40) / 3.0))
    frames = talking_face(opening, np.ones(40), rng, motion=4.0)
    assert not np.isnan(extractor.detect_landmarks(frames)).any()
    rois = extractor.extract(frames, fps=25.0)
    assert rois.shape == (40, 96, 96, 3) and rois.dtype == np.uint8
    # The head moves by up to 4 px, yet the middle of every crop is dark exactly when the generated mouth is open.
    darkness = -rois[:, 40:56, 32:64].mean(axis=(1, 2, 3))
    assert np.corrcoef(darkness, opening)[0, 1] > 0.95


def test_clip_without_a_face_raises(extractor):
    with pytest.raises(NoFaceFoundError, match="no face found in any of the 5 frames"):
        extractor.extract(faceless_frames(5, np.random.default_rng(0)), fps=25.0)


def test_frames_without_a_face_are_interpolated(extractor):
    rng = np.random.default_rng(1)
    frames = talking_face(np.zeros(10), np.ones(10), rng, motion=0.0)
    frames[3:6] = faceless_frames(3, rng)
    landmarks = extractor.detect_landmarks(frames)
    missing = np.isnan(landmarks).any(axis=(1, 2))
    assert missing.tolist() == [False] * 3 + [True] * 3 + [False] * 4
    assert extractor.extract(frames, fps=25.0).shape == (10, 96, 96, 3)


def test_interpolate_missing_is_linear_inside_and_nearest_at_the_edges():
    landmarks = np.full((6, 68, 2), np.nan, dtype=np.float32)
    landmarks[1], landmarks[4] = 10.0, 40.0
    filled = interpolate_missing(landmarks)
    np.testing.assert_allclose(filled[:, 0, 0], [10.0, 10.0, 20.0, 30.0, 40.0, 40.0])
    with pytest.raises(NoFaceFoundError):
        interpolate_missing(np.full((3, 68, 2), np.nan))


def test_smoothing_keeps_steady_motion_and_damps_jitter():
    times = np.arange(30, dtype=np.float64)
    ramp = np.repeat(times[:, None, None], 68, axis=1).repeat(2, axis=2)
    np.testing.assert_allclose(smooth_landmarks(ramp, 12), ramp)  # centred: no lag, also at the ends
    jitter = ramp + np.where(times % 2 == 0, 1.0, -1.0)[:, None, None]
    residual = smooth_landmarks(jitter, 12) - ramp
    assert np.abs(residual[6:-6]).max() < 0.1


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    source = rng.uniform(-50, 50, size=(8, 2))
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = 1.7 * source @ rotation.T + [5.0, -3.0]
    scale, fitted_rotation, translation = fit_similarity(source, target)
    assert scale == pytest.approx(1.7)
    np.testing.assert_allclose(fitted_rotation, rotation, atol=1e-9)
    np.testing.assert_allclose(translation, [5.0, -3.0], atol=1e-9)


def test_other_frame_rates_are_resampled_to_25_fps(extractor):
    frames = np.repeat(astronaut()[None], 6, axis=0)
    assert extractor.extract(frames, fps=50.0).shape == (3, 96, 96, 3)
    for fps in (0.0, -25.0, float("nan")):
        with pytest.raises(ValueError, match="fps must be a positive number"):
            extractor.extract(frames, fps=fps)


def test_grayscale_video_gives_grayscale_crops(extractor):
    photo = astronaut()
    # The gray frame the extractor detects the face in, so that both find the same face box.
    gray = np.rint(rgb_to_gray(photo)).astype(np.uint8)
    color_roi = extractor.extract(photo[None], fps=25.0)[0].astype(np.float64)
    gray_roi = extractor.extract(gray[None], fps=25.0)[0]
    assert gray_roi.shape == (96, 96)
    assert np.abs(gray_roi - color_roi @ np.array([0.299, 0.587, 0.114])).mean() < 1.0


def test_looks_like_mouth_roi():
    assert looks_like_mouth_roi(np.zeros((5, 96, 96, 3), np.uint8))
    assert looks_like_mouth_roi(np.zeros((5, 88, 88), np.uint8))
    assert not looks_like_mouth_roi(np.zeros((5, 224, 224, 3), np.uint8))  # an LRS3 face video
    assert not looks_like_mouth_roi(np.zeros((5, 96, 160), np.uint8))  # not square
    with pytest.raises(ValueError, match="expected"):
        looks_like_mouth_roi(np.zeros((2, 2, 2, 2, 2)))


def test_bad_inputs_are_rejected(extractor):
    with pytest.raises(ValueError, match="uint8"):
        extractor.extract(np.zeros((2, 64, 64, 3), np.float32), fps=25.0)
    with pytest.raises(ValueError, match="fps"):
        extractor.extract(np.zeros((2, 64, 64, 3), np.uint8), fps=0.0)
    with pytest.raises(ValueError, match="without NaN"):
        extractor.crop(np.zeros((2, 64, 64, 3), np.uint8), np.full((2, 68, 2), np.nan))


def test_extractor_pickles_after_use_for_worker_processes(extractor, photo_landmarks):
    copy = pickle.loads(pickle.dumps(extractor))
    np.testing.assert_array_equal(copy.detect_landmarks(astronaut()[None])[0], photo_landmarks)


def test_missing_landmark_library_names_the_packages(monkeypatch):
    real_import = builtins.__import__

    def without_dlib(name, *args, **kwargs):
        if name == "dlib":
            raise ImportError("No module named 'dlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_dlib)
    with pytest.raises(ImportError, match="pip install dlib-bin face-recognition-models"):
        MouthROIExtractor().extract(astronaut()[None], fps=25.0)
    monkeypatch.setattr(builtins, "__import__", real_import)

    real_find_spec = importlib.util.find_spec

    def without_model(name, *args):
        return None if name == "face_recognition_models" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_model)
    with pytest.raises(ImportError, match="68-point landmark model: pip install dlib-bin face-recognition-models"):
        MouthROIExtractor().extract(astronaut()[None], fps=25.0)
