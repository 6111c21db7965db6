"""Mouth video from phoneme timing: phoneme -> viseme -> lip parameters -> 96x96 grayscale mouth-ROI frames.

Each eSpeak phoneme maps to one viseme (two for a diphthong). A viseme is a target for six lip parameters
(:data:`PARAMETERS`): inner lip opening, mouth width, lip rounding, teeth and tongue visibility, and the lower
lip tucked under the upper teeth (f, v). Targets are held over the middle of each phoneme, interpolated between
phonemes, and averaged over each 40 ms video frame, so short closures (p, b, m) still show. The frames are drawn
with vectorised numpy: skin, lips as filled curves, a dark mouth interior, teeth and tongue, per-speaker geometry
(:class:`MouthGeometry`) and small per-frame head motion and brightness change.

The visemes differ in coarse shape (how tall, how wide, how dark the opening is), so they stay distinct after the
96 -> 36 -> 32 pixel resize and crop that a small lip-reading model reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from llama_mtsk.configuration_llama_mtsk import VIDEO_FPS


ROI_SIZE = 96
PARAMETERS = ("open", "width", "round", "teeth", "tongue", "tuck")

# Lip targets per viseme: opening in pixels (scaled per speaker), width relative to the speaker's mouth, and
# rounding / teeth / tongue / lower-lip tuck in [0, 1].
VISEMES: dict[str, tuple[float, float, float, float, float, float]] = {
    "rest": (1.0, 1.00, 0.0, 0.0, 0.0, 0.0),
    "bilabial": (0.0, 0.95, 0.0, 0.0, 0.0, 0.0),  # p b m: lips pressed together
    "labiodental": (2.0, 1.00, 0.0, 1.0, 0.0, 1.0),  # f v: lower lip under the upper teeth
    "dental": (6.0, 1.00, 0.0, 0.9, 1.0, 0.0),  # th: tongue tip between the teeth
    "alveolar": (5.0, 1.00, 0.0, 0.7, 0.3, 0.0),  # t d n l
    "sibilant": (3.0, 1.08, 0.0, 1.0, 0.0, 0.0),  # s z: teeth almost together
    "postalveolar": (6.0, 0.78, 0.6, 1.0, 0.0, 0.0),  # sh zh ch j: protruded, teeth showing
    "velar": (8.0, 1.00, 0.0, 0.4, 0.2, 0.0),  # k g ng h
    "r": (4.0, 0.82, 0.5, 0.3, 0.0, 0.0),
    "w": (2.0, 0.58, 1.0, 0.0, 0.0, 0.0),
    "open": (19.0, 1.05, 0.0, 0.5, 0.5, 0.0),  # a, aa, uh
    "mid": (10.0, 1.00, 0.0, 0.4, 0.3, 0.0),  # schwa, er
    "spread_mid": (11.0, 1.15, 0.0, 0.8, 0.2, 0.0),  # e
    "spread": (5.0, 1.28, 0.0, 1.0, 0.0, 0.0),  # i, ee, y
    "round_open": (13.0, 0.74, 0.8, 0.2, 0.0, 0.0),  # o, aw
    "round": (4.0, 0.60, 1.0, 0.0, 0.0, 0.0),  # u, oo
}

_CONSONANTS = {
    **dict.fromkeys(("p", "b", "m"), "bilabial"),
    **dict.fromkeys(("f", "v"), "labiodental"),
    **dict.fromkeys(("T", "D"), "dental"),
    **dict.fromkeys(("t", "d", "n", "l", "?"), "alveolar"),
    **dict.fromkeys(("s", "z"), "sibilant"),
    **dict.fromkeys(("S", "Z", "tS", "dZ"), "postalveolar"),
    **dict.fromkeys(("k", "g", "N", "h", "x"), "velar"),
    "r": "r",
    "w": "w",
    "j": "spread",
}
# eSpeak vowel mnemonics start with one of these letters; a second vowel letter marks a diphthong (aI, oU, i@).
_VOWELS = {
    **dict.fromkeys("aAV", "open"),
    **dict.fromkeys("@3", "mid"),
    **dict.fromkeys("eE", "spread_mid"),
    **dict.fromkeys("iIy", "spread"),
    **dict.fromkeys("0Oo", "round_open"),
    **dict.fromkeys("uU", "round"),
}


class Phoneme(NamedTuple):
    """One phoneme of an utterance: its eSpeak name and its start and end in seconds."""

    name: str
    start: float
    end: float


def phoneme_visemes(name: str) -> tuple[str, ...]:
    """The viseme(s) of an eSpeak phoneme name (stress marks ignored); ``()`` for a zero-length modifier.

    Raises ``ValueError`` for a name it does not know, so a new voice cannot silently produce wrong lips.
    """
    base = name.replace("'", "").replace(",", "")
    if base.startswith("_"):
        return ("rest",)  # pauses
    if base in (";", ""):
        return ()  # palatalisation modifier, no articulation of its own
    stripped = base.rstrip("#/[-;:2R")  # variant markers: t#, l/, t[, n-, i:, I2, VR
    for candidate in (base, stripped):
        if candidate in _CONSONANTS:
            return (_CONSONANTS[candidate],)
    if stripped and stripped[0] in _VOWELS:
        visemes = [_VOWELS[stripped[0]]]
        offglide = next((char for char in stripped[1:] if char in _VOWELS or char == "L"), None)
        if offglide is not None:
            visemes.append("alveolar" if offglide == "L" else _VOWELS[offglide])
        return tuple(visemes)
    raise ValueError(f"phoneme_visemes: unknown eSpeak phoneme {name!r}; add it to mtsk_data/synthetic/visemes.py")


def is_vowel(name: str) -> bool:
    """Whether an eSpeak phoneme name is a vowel (or diphthong)."""
    base = name.replace("'", "").replace(",", "").rstrip("#/[-;:2R")
    return bool(base) and base not in _CONSONANTS and base[0] in _VOWELS


def lip_track(phonemes: list[Phoneme], n_frames: int, articulation: float = 1.0, fps: int = VIDEO_FPS) -> np.ndarray:
    """Lip parameters per video frame, shape ``(n_frames, len(PARAMETERS))``.

    Each viseme's target is held over the middle of its phoneme (a diphthong's two targets over its halves),
    targets are joined linearly, the mouth rests outside the phonemes, and every frame averages its 40 ms.
    ``articulation`` scales how far the lips move from rest (a speaker who mumbles or exaggerates).
    """
    if n_frames < 1:
        raise ValueError(f"lip_track: n_frames must be positive, got {n_frames}")
    rest = np.asarray(VISEMES["rest"])
    # At rest until shortly (100 ms) before the first phoneme and from shortly after the last one.
    times, targets = [0.0], [rest]
    if phonemes:
        times.append(max(phonemes[0].start - 0.1, 0.0))
        targets.append(rest)
    for phoneme in phonemes:
        visemes = phoneme_visemes(phoneme.name)
        length = phoneme.end - phoneme.start
        if not visemes or length <= 0:
            continue
        part = length / len(visemes)
        for index, viseme in enumerate(visemes):
            target = rest + articulation * (np.asarray(VISEMES[viseme]) - rest)
            start = phoneme.start + index * part
            times += [start + 0.2 * part, start + 0.8 * part]
            targets += [target, target]
    if phonemes:
        times.append(phonemes[-1].end + 0.1)
        targets.append(rest)
    times.append(max(n_frames / fps, times[-1]))
    targets.append(rest)

    # 5 ms steps; each frame is the mean over its own 40 ms window.
    steps_per_frame = 8
    grid = (np.arange(n_frames * steps_per_frame) + 0.5) / (fps * steps_per_frame)
    order = np.argsort(times, kind="stable")
    times_sorted = np.asarray(times)[order]
    targets_sorted = np.stack(targets)[order]
    fine = np.stack([np.interp(grid, times_sorted, targets_sorted[:, k]) for k in range(len(PARAMETERS))], axis=1)
    return fine.reshape(n_frames, steps_per_frame, len(PARAMETERS)).mean(axis=1).astype(np.float32)


@dataclass(frozen=True)
class MouthGeometry:
    """A speaker's face around the mouth (pixel sizes for a 96x96 ROI, gray levels in 0-255)."""

    half_width: float = 27.0  # half the mouth width at rest
    open_scale: float = 1.0  # multiplies every viseme's opening
    upper_lip: float = 6.5  # lip thickness
    lower_lip: float = 8.5
    centre_x: float = 48.0
    centre_y: float = 52.0
    tilt: float = 0.0  # degrees
    skin: float = 160.0
    lip_contrast: float = 45.0  # how much darker the lips are than the skin
    interior: float = 28.0  # mouth cavity
    teeth: float = 215.0
    motion: float = 0.8  # head motion, pixels
    articulation: float = 1.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> MouthGeometry:
        """A random plausible speaker."""
        return cls(
            half_width=float(rng.uniform(24.0, 30.0)),
            open_scale=float(rng.uniform(0.85, 1.15)),
            upper_lip=float(rng.uniform(5.5, 8.0)),
            lower_lip=float(rng.uniform(7.0, 10.0)),
            centre_x=float(rng.uniform(45.0, 51.0)),
            centre_y=float(rng.uniform(48.0, 55.0)),
            tilt=float(rng.uniform(-5.0, 5.0)),
            skin=float(rng.uniform(135.0, 190.0)),  # lips stay brighter than the mouth cavity
            lip_contrast=float(rng.uniform(35.0, 55.0)),
            interior=float(rng.uniform(15.0, 40.0)),
            teeth=float(rng.uniform(200.0, 235.0)),
            motion=float(rng.uniform(0.4, 1.2)),
            articulation=float(rng.uniform(0.85, 1.15)),
        )


def _smooth_noise(rng: np.random.Generator, n: int, width: int = 5) -> np.ndarray:
    """Zero-mean noise of unit scale that varies smoothly over ``width`` frames."""
    raw = rng.standard_normal(n + 2 * width)
    kernel = np.hanning(2 * width + 1)
    smooth = np.convolve(raw, kernel / np.sqrt(np.sum(kernel**2)), mode="same")[width : width + n]
    return smooth.astype(np.float32)


def _ellipse_alpha(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of the ellipse with semi-axes ``a`` (along u) and ``b`` (along v)."""
    a, b = np.maximum(a, 1e-3), np.maximum(b, 1e-3)
    ua, vb = u / a, v / b
    rho = np.sqrt(ua * ua + vb * vb)
    # Distance to the outline to first order, (rho - 1) / |grad rho|, so thin ellipses do not smear at their tips;
    # far outside, that estimate can fall short of the distance to the bounding box, which is a true lower bound.
    ua /= a
    vb /= b
    distance = (rho - 1.0) * rho / np.maximum(np.sqrt(ua * ua + vb * vb), 1e-6)
    distance = np.maximum(distance, np.maximum(np.abs(u) - a, np.abs(v) - b))
    return np.clip(0.5 - distance, 0.0, 1.0)


def _skin(geometry: MouthGeometry) -> np.ndarray:
    """The face around the mouth, lit from above: darker towards the nose, the chin fold and the cheeks."""
    y, x = np.mgrid[0:ROI_SIZE, 0:ROI_SIZE].astype(np.float32)
    angle = np.deg2rad(geometry.tilt)
    dx, dy = x - geometry.centre_x, y - geometry.centre_y
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    image = geometry.skin * (1.0 - 0.10 * (u / 48.0) ** 2 - 0.06 * (v / 40.0))
    image -= 22.0 * np.exp(-(((v + 40.0) / 8.0) ** 2)) * np.exp(-((u / 18.0) ** 2))  # shadow under the nose
    image -= 10.0 * np.exp(-(((v - 36.0) / 10.0) ** 2))  # chin fold
    image -= 5.0 * np.exp(-((u / 4.0) ** 2)) * np.exp(-(((v + 16.0) / 7.0) ** 2))  # philtrum
    return image


def render_mouth(track: np.ndarray, geometry: MouthGeometry, rng: np.random.Generator) -> np.ndarray:
    """Draw frames for a lip track (from :func:`lip_track`): uint8 array ``(T, 96, 96)``.

    ``rng`` drives the per-frame jitter (head motion, tilt, brightness); the same track, geometry and
    generator state give the same frames.
    """
    n_frames = track.shape[0]
    opening, width, rounding, teeth, tongue, tuck = (track[:, k, None, None] for k in range(len(PARAMETERS)))
    g = geometry

    # Head motion and lighting: smooth in time, a fraction of a pixel to a pixel or so.
    shift_x = g.motion * _smooth_noise(rng, n_frames)[:, None, None]
    shift_y = g.motion * _smooth_noise(rng, n_frames)[:, None, None]
    angle = np.deg2rad(g.tilt + 1.0 * _smooth_noise(rng, n_frames))[:, None, None]
    gain = 1.0 + 0.03 * _smooth_noise(rng, n_frames, width=8)[:, None, None]

    # Mouth size per frame, (T, 1, 1) each.
    half_width = g.half_width * width
    opening_px = opening * g.open_scale
    upper_inner, lower_inner = 0.4 * opening_px, 0.6 * opening_px  # the jaw moves the lower lip more
    upper_lip = g.upper_lip * (1.0 + 0.5 * rounding)
    lower_lip = g.lower_lip * (1.0 + 0.4 * rounding) * (1.0 - 0.3 * tuck)

    # The skin hardly changes under a pixel of motion, so it is drawn once; the lips are drawn per frame, only
    # inside the box the mouth reaches in this clip (with its motion, tilt and a pixel of anti-aliasing).
    frames = np.broadcast_to(_skin(g), (n_frames, ROI_SIZE, ROI_SIZE)).copy()
    sin_tilt = np.abs(np.sin(angle))
    lip_height = np.maximum(upper_inner + upper_lip, lower_inner + lower_lip)
    reach_x = float(np.max(half_width + sin_tilt * lip_height + np.abs(shift_x))) + 2.0
    reach_up = float(np.max(upper_inner + upper_lip + sin_tilt * half_width - shift_y)) + 2.0
    reach_down = float(np.max(lower_inner + lower_lip + sin_tilt * half_width + shift_y)) + 2.0
    rows = slice(max(int(g.centre_y - reach_up), 0), min(int(np.ceil(g.centre_y + reach_down)) + 1, ROI_SIZE))
    cols = slice(max(int(g.centre_x - reach_x), 0), min(int(np.ceil(g.centre_x + reach_x)) + 1, ROI_SIZE))
    y, x = np.mgrid[rows, cols].astype(np.float32)
    dx, dy = x[None] - (g.centre_x + shift_x), y[None] - (g.centre_y + shift_y)
    cos, sin = np.cos(angle), np.sin(angle)
    u = cos * dx + sin * dy  # along the mouth
    v = -sin * dx + cos * dy  # down the face
    upper = v < 0
    image = frames[:, rows, cols]  # a view: drawing on it draws on the frames

    # Lips: an upper and a lower half-ellipse around the opening; protrusion makes them look fuller.
    bow = 1.0 - 0.15 * np.exp(-((u / (0.15 * g.half_width)) ** 2))  # cupid's bow dip in the upper lip
    outer = _ellipse_alpha(u, v, half_width, np.where(upper, (upper_inner + upper_lip) * bow, lower_inner + lower_lip))
    lip_shade = np.where(upper, np.float32(g.skin - g.lip_contrast), np.float32(g.skin - 0.75 * g.lip_contrast))
    seam = np.exp(-(v**2) / 0.8) * np.clip(1.0 - np.abs(u) / half_width, 0.0, 1.0)  # where the lips meet
    image += outer * (lip_shade - 0.5 * g.lip_contrast * seam - image)

    # Mouth opening: dark cavity, upper and lower teeth, tongue. Coverage fades out as the lips close.
    inner_half_width = half_width * (0.78 - 0.2 * rounding)
    inner = _ellipse_alpha(u, v, inner_half_width, np.where(upper, upper_inner, lower_inner))
    inner *= np.clip(opening_px, 0.0, 1.0)
    teeth_across = np.clip(0.75 * inner_half_width - np.abs(u), 0.0, 1.0)
    upper_teeth = np.clip(np.minimum(3.5, 0.45 * opening_px) - upper_inner - v + 0.5, 0.0, 1.0)
    lower_teeth = 0.6 * np.clip(v - lower_inner + np.minimum(2.0, 0.25 * opening_px) + 0.5, 0.0, 1.0)
    teeth_alpha = teeth * teeth_across * np.maximum(upper_teeth, lower_teeth)
    tongue_alpha = 0.9 * tongue * _ellipse_alpha(
        u, v - (lower_inner - 0.45 * opening_px * tongue), 0.5 * inner_half_width, (0.2 + 0.3 * tongue) * opening_px
    )
    cavity = g.interior + 75.0 * tongue_alpha
    cavity += teeth_alpha * (g.teeth - cavity)
    image += inner * (cavity - image)

    # f, v: the upper teeth rest on the lower lip.
    tucked = tuck * np.clip(0.55 * half_width - np.abs(u), 0.0, 1.0) * np.clip(1.0 - np.abs(v - 1.0) / 2.0, 0.0, 1.0)
    image += tucked * (g.teeth - image)

    frames *= gain
    np.clip(frames, 0.0, 255.0, out=frames)
    frames += 0.5  # round half up when truncating to uint8
    return frames.astype(np.uint8)
