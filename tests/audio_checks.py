"""Measurements of generated audio that tests assert on: the SNR of a noisy mixture, and whether a synthesized clip
sounds like speech with its phoneme timing."""

from __future__ import annotations

import numpy as np

from llama_mtsk.configuration_llama_mtsk import SAMPLING_RATE
from mtsk_data.synthetic.visemes import Phoneme, is_vowel


def measure_snr_db(signal: np.ndarray, mixture: np.ndarray) -> float:
    """The SNR in dB of ``mixture`` = ``signal`` + noise: signal power over the power of ``mixture - signal``."""
    signal64 = signal.astype(np.float64)
    noise_power = np.mean((mixture.astype(np.float64) - signal64) ** 2)
    return float(10.0 * np.log10(np.mean(signal64**2) / noise_power))


_VOICELESS = {"p", "t", "k", "f", "T", "s", "S", "tS", "h"}  # eSpeak names of voiceless obstruents


def intelligibility_problems(
    audio: np.ndarray, phonemes: list[Phoneme], sample_rate: int = SAMPLING_RATE
) -> list[str]:
    """Check that ``audio`` sounds like speech with the given phoneme timing; returns what is wrong (empty if fine).

    The checks fail on noise and on silence. Phoneme durations must be plausible for speech (none over 0.5 s,
    30-250 ms on average over the spoken span) and lie inside the clip; the clip must be audible; vowels must be
    clearly louder than the pauses around the speech and than voiceless consonants, be voiced (strongly periodic
    at a pitch between 60 and 400 Hz) and carry most of their energy below 4 kHz.
    """
    problems: list[str] = []
    audio = np.asarray(audio, dtype=np.float64)
    total = audio.size / sample_rate
    spoken = [p for p in phonemes if not p.name.startswith("_") and p.end > p.start]
    vowels = [p for p in spoken if is_vowel(p.name) and p.end - p.start >= 0.04]
    if not vowels:
        return ["no vowel of 40 ms or more in the phonemes"]

    longest = max(p.end - p.start for p in spoken)
    if longest > 0.5:
        problems.append(f"a phoneme lasts {longest:.3f} s (speech sounds last under 0.5 s)")
    per_phoneme = (spoken[-1].end - spoken[0].start) / len(spoken)
    if not 0.03 <= per_phoneme <= 0.25:
        problems.append(f"{per_phoneme * 1000:.0f} ms per phoneme on average (speech: 30-250 ms)")
    if spoken[-1].end > total + 1e-3 or spoken[0].start < 0:
        problems.append(f"phonemes span {spoken[0].start:.2f}-{spoken[-1].end:.2f} s, outside the {total:.2f} s clip")
        return problems  # the segments cannot be measured

    def segment(start: float, end: float) -> np.ndarray:
        return audio[int(start * sample_rate) : int(end * sample_rate)]

    def level(samples: np.ndarray) -> float:
        return 10.0 * np.log10(max(float(np.mean(samples**2)), 1e-20))

    if level(audio) < -50.0:
        problems.append(f"the clip is silent ({level(audio):.1f} dBFS)")
    vowel_level = float(np.mean([level(segment(p.start, p.end)) for p in vowels]))

    pauses = np.concatenate([segment(0.0, spoken[0].start), segment(spoken[-1].end, total)])
    if pauses.size < int(0.05 * sample_rate):
        problems.append("less than 50 ms of pause around the speech to compare with")
    elif vowel_level - level(pauses) < 10.0:
        contrast = vowel_level - level(pauses)
        problems.append(f"vowels are only {contrast:.1f} dB louder than the pauses (speech: 10 dB or more)")

    voiceless = [p for p in spoken if p.name.replace("'", "").rstrip("#") in _VOICELESS and p.end - p.start >= 0.02]
    if voiceless:
        contrast = vowel_level - float(np.mean([level(segment(p.start, p.end)) for p in voiceless]))
        if contrast < 3.0:
            problems.append(
                f"vowels are only {contrast:.1f} dB louder than voiceless consonants (speech: 3 dB or more)"
            )

    periodicity, low_band = [], []
    lags = slice(int(sample_rate / 400), int(sample_rate / 60))
    for p in vowels:
        x = segment(p.start, p.end)
        x = x - x.mean()
        power = np.abs(np.fft.rfft(x * np.hanning(x.size), n=2 * x.size)) ** 2
        autocorrelation = np.fft.irfft(power)[: x.size]
        periodicity.append(float(np.max(autocorrelation[lags]) / max(autocorrelation[0], 1e-20)))
        frequencies = np.fft.rfftfreq(2 * x.size, 1.0 / sample_rate)
        low_band.append(float(power[frequencies < 4000].sum() / max(power.sum(), 1e-20)))
    if np.median(periodicity) < 0.4:
        problems.append(
            f"vowels are not voiced (median periodicity {np.median(periodicity):.2f}, speech: 0.4 or more)"
        )
    if np.median(low_band) < 0.8:
        problems.append(f"vowels hold {np.median(low_band):.0%} of their energy below 4 kHz (speech: 80 % or more)")
    return problems
