"""Fake talking-face corpora in the official LRS3 layout, for testing the preparation commands end to end.

The face is a real photograph that ships offline in a PyPI wheel: scikit-image's ``astronaut`` (Eileen Collins,
NASA, public domain). Its mouth is animated per frame from a lip track (:func:`mtsk_data.visemes.lip_track`): a dark
mouth opening is drawn between the lips, as tall and as wide as the track says, and the head moves a few pixels,
so that a mouth-ROI extractor has to find and follow a real face.
"""

from __future__ import annotations

import numpy as np


FRAME_SIZE = 224  # LRS2/LRS3 face videos are 224x224
# Hand-annotated on the photograph (not from a landmark detector, so tests of the detector can use them):
# the corners of the mouth and the point between the lips, in pixels of the 512x512 image.
ASTRONAUT_MOUTH_CORNERS = ((202.0, 140.0), (245.0, 141.0))
ASTRONAUT_MOUTH_CENTRE = (223.5, 145.5)
# Top-left corner of the 224x224 window that frames the face (face in the middle, as in LRS3).
_WINDOW = (30, 112)


def astronaut() -> np.ndarray:
    """The astronaut photograph, uint8 ``(512, 512, 3)`` RGB (bundled with scikit-image, no download)."""
    try:
        from skimage import data
    except ImportError as error:
        raise ImportError("the fake corpus uses scikit-image's bundled photograph: pip install scikit-image") from error
    return data.astronaut()


def _smooth_walk(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    steps = np.cumsum(rng.standard_normal(n + 8))
    smooth = np.convolve(steps, np.ones(9) / 9, mode="valid")[:n]
    smooth = smooth - smooth.mean()
    scale = np.abs(smooth).max()
    return amplitude * smooth / scale if scale > 0 else smooth


def talking_face(
    opening: np.ndarray, width: np.ndarray, rng: np.random.Generator, motion: float = 3.0
) -> np.ndarray:
    """Frames of the astronaut saying something: uint8 ``(T, 224, 224, 3)``.

    Args:
        opening: ``(T,)`` inner lip opening in pixels of a 96x96 mouth ROI (the ``open`` column of a lip track).
        width: ``(T,)`` mouth width relative to rest (the ``width`` column).
        rng: drives the head motion and sensor noise.
        motion: largest head displacement in pixels.
    """
    photo = astronaut().astype(np.float32)
    n_frames = len(opening)
    (left_x, left_y), (right_x, right_y) = ASTRONAUT_MOUTH_CORNERS
    centre_x, centre_y = ASTRONAUT_MOUTH_CENTRE
    half_width = (right_x - left_x) / 2
    # The photo's mouth is about 44 px wide, a 96x96 ROI's about 50: scale the track's pixels to the photo.
    to_photo = half_width / 25.0
    y, x = np.mgrid[0:512, 0:512].astype(np.float32)
    shift_x, shift_y = _smooth_walk(rng, n_frames, motion), _smooth_walk(rng, n_frames, motion)
    frames = np.empty((n_frames, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    cavity = np.array([70.0, 25.0, 30.0], dtype=np.float32)
    for index in range(n_frames):
        a = 0.8 * half_width * float(width[index])
        b = 0.5 * float(opening[index]) * to_photo
        image = photo
        if b > 0.2:
            rho = np.sqrt(((x - centre_x) / a) ** 2 + ((y - centre_y) / b) ** 2)
            alpha = np.clip(0.5 - (rho - 1.0) * min(a, b), 0.0, 1.0)[..., None]
            image = photo + alpha * (cavity - photo)
        top = _WINDOW[0] + int(round(shift_y[index]))
        left = _WINDOW[1] + int(round(shift_x[index]))
        window = image[top : top + FRAME_SIZE, left : left + FRAME_SIZE]
        noisy = window + 2.0 * rng.standard_normal(window.shape, dtype=np.float32)
        frames[index] = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    return frames


def faceless_frames(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """A plain background without a face (a grey gradient with noise): uint8 ``(T, 224, 224, 3)``."""
    gradient = np.linspace(90.0, 150.0, FRAME_SIZE, dtype=np.float32)[None, :, None, None]
    frames = gradient + 3.0 * rng.standard_normal((n_frames, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.float32)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)
