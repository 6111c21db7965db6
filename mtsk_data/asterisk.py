"""The Asterisk core sound prompts in English: real recorded speech with transcripts, from two Debian packages.

About 560 telephone prompts ("Please enter your password followed by the pound key.", "seventeen", "Goodbye!") read
by one professional speaker, Allison Smith: the audio in ``asterisk-core-sounds-en-g722`` (16 kHz G.722, one file per
prompt under ``usr/share/asterisk/sounds/en_US_f_Allison/``, some in subfolders such as ``digits/``), the transcripts
in ``asterisk-core-sounds-en`` (``usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz``, lines
``name: text``, ``;`` comment lines). ``python -m mtsk_data.prepare asterisk --out DIR`` fetches both packages with
``apt-get download`` and unpacks them with ``dpkg-deb -x`` (neither needs root), pairs audio and transcripts, and
splits the prompts by their text (:func:`split_by_text`) so that no test sentence is heard in training.

License: the recordings and their transcripts are CC-BY-SA-3.0 (Copyright 2003-2010 Allison Smith; financial
contributions by Digium, Inc.; https://creativecommons.org/licenses/by-sa/3.0/). A prepared corpus is a derivative
work under the same license: the command writes a ``LICENSE`` file with the attribution and the license text into
the output folder. Keep the audio out of this repository (``data/`` is git-ignored).
"""

from __future__ import annotations

import glob
import gzip
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterable

import numpy as np

from mtsk_data.records import normalize_text


PACKAGES = ("asterisk-core-sounds-en-g722", "asterisk-core-sounds-en")
SOUNDS_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
AUDIO_EXTENSION = ".g722"
TRANSCRIPTS_FILE = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
COPYRIGHT_FILE = "usr/share/doc/asterisk-core-sounds-en-g722/copyright"
SPEAKER = "allison"
LICENSE_ID = "cc-by-sa-3.0"

# Sound descriptions, not speech: "[this is a simple beep tone]", "<beep ascending>", "(10 seconds of silence)",
# and annotations inside a prompt: "at [@]", "IAX (note: does not say "2")".
_DESCRIPTION = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Keypad symbols as the speaker reads them ("press * to toggle pause, press # to enter ...").
_SPOKEN_SYMBOLS = {"*": "star", "#": "pound"}
# Misspellings in core-sounds-en.txt: the label is the word spoken.
_SPELLING_FIXES = {
    "exclaimation": "exclamation",
    "fourtieth": "fortieth",
    "indentified": "identified",
    "represenatives": "representatives",
    "umute": "unmute",
    "witheld": "withheld",
}


class FetchError(RuntimeError):
    """The Debian packages could not be downloaded or unpacked."""


class NotSpeechError(ValueError):
    """A transcript that describes a sound (a beep, silence) instead of words."""


def _find_deb(debs_dir: str, package: str) -> str | None:
    found = sorted(glob.glob(os.path.join(glob.escape(debs_dir), f"{package}_*.deb")))
    if len(found) > 1:
        raise FetchError(f"several .deb files of {package} in {debs_dir}: {found}; keep one")
    return found[0] if found else None


def fetch_packages(work_dir: str, debs_dir: str | None = None, packages: tuple[str, ...] = PACKAGES) -> str:
    """Unpack Debian packages (by default the two of the prompts) into ``work_dir/extracted``; returns that folder.

    Args:
        work_dir: the folder to work in; the downloaded ``.deb`` files go to ``work_dir/debs`` (and are reused when a
            later run finds them there).
        debs_dir: a folder that already holds ``<package>_<version>_all.deb`` for every package (nothing is
            downloaded).
        packages: the Debian packages to fetch.

    Raises:
        FetchError: apt-get or dpkg-deb is missing, the download fails, or a package file is missing.
    """
    if debs_dir is None:
        debs_dir = os.path.join(work_dir, "debs")
        os.makedirs(debs_dir, exist_ok=True)
        missing = [package for package in packages if _find_deb(debs_dir, package) is None]
        if missing:
            if shutil.which("apt-get") is None:
                raise FetchError(
                    f"apt-get not found: download the Debian packages {', '.join(packages)} yourself and pass the "
                    "folder holding the .deb files with --debs DIR"
                )
            result = subprocess.run(
                ["apt-get", "download", *missing], cwd=debs_dir, capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise FetchError(
                    f"'apt-get download {' '.join(missing)}' failed (exit {result.returncode}): "
                    f"{result.stderr.strip() or result.stdout.strip()}; is the Debian 'main' archive in the apt "
                    "sources, and has 'apt-get update' run? Or pass already downloaded .deb files with --debs DIR"
                )
    if shutil.which("dpkg-deb") is None:
        raise FetchError("dpkg-deb not found: unpack the packages yourself and pass the folder with --extracted ROOT")
    extracted = os.path.join(work_dir, "extracted")
    os.makedirs(extracted, exist_ok=True)
    for package in packages:
        deb = _find_deb(debs_dir, package)
        if deb is None:
            raise FetchError(f"no {package}_*.deb in {debs_dir}")
        result = subprocess.run(["dpkg-deb", "-x", deb, extracted], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise FetchError(f"'dpkg-deb -x {deb}' failed (exit {result.returncode}): {result.stderr.strip()}")
    return extracted


def read_transcripts(path: str) -> dict[str, str]:
    """The prompts of ``core-sounds-en.txt.gz`` as ``{name: text}``; names may have a subfolder (``digits/1``).

    Raises:
        ValueError: a line that is neither blank, a ``;`` comment nor ``name: text``, or a name given twice.
    """
    transcripts: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip() or line.startswith(";"):
                continue
            name, separator, text = line.partition(":")
            name = name.strip()
            if not separator or not name or " " in name:
                raise ValueError(f"{path}, line {number}: expected 'name: text', got {line.rstrip()!r}")
            if name in transcripts:
                raise ValueError(f"{path}, line {number}: the prompt {name!r} is listed twice")
            transcripts[name] = text.strip()
    return transcripts


def spoken_text(transcript: str) -> str:
    """The words a prompt's transcript says, normalised as every corpus here is (lower-case, no punctuation).

    Sound descriptions and annotations in brackets are dropped, single digits and the keypad symbols ``*`` and ``#``
    are spelled as they are read ("press 1" -> "press one"), and the file's misspellings are corrected.

    Raises:
        NotSpeechError: the transcript only describes a sound (``[this is a simple beep tone]``).
        ValueError: the transcript is empty, or holds a number of several digits, which can be read in several ways
            ("500", "1234", "H.323").
    """
    has_words = re.compile(r"[A-Za-z0-9*#]")
    if not has_words.search(transcript):
        raise ValueError(f"the transcript is empty: {transcript!r}")
    spoken = _DESCRIPTION.sub(" ", transcript)
    if not has_words.search(spoken):
        raise NotSpeechError(f"not speech: the transcript describes a sound, {transcript!r}")
    numbers = re.findall(r"\d{2,}", spoken)
    if numbers:
        raise ValueError(f"the transcript holds numbers of several digits, which read several ways: {numbers}")
    spoken = re.sub(r"\d", lambda digit: f" {_DIGIT_WORDS[int(digit.group())]} ", spoken)
    spoken = re.sub(r"[*#]", lambda symbol: f" {_SPOKEN_SYMBOLS[symbol.group()]} ", spoken)
    return " ".join(_SPELLING_FIXES.get(word, word) for word in normalize_text(spoken).split())


def split_by_text(
    texts: Iterable[str], seed: int = 0, validation_fraction: float = 0.1, test_fraction: float = 0.1
) -> dict[str, str]:
    """Assign each distinct text to train, validation or test: ``{text: split}``.

    Prompts that say the same words (the corpus has several takes of some) land in the same split, so no test
    sentence is heard in training. The distinct texts are shuffled with ``seed`` and the first
    ``ceil(test_fraction * n)`` go to test, the next ``ceil(validation_fraction * n)`` to validation, the rest to
    train: the same texts and seed always give the same split.
    """
    if not (0 <= validation_fraction and 0 <= test_fraction and validation_fraction + test_fraction < 1):
        raise ValueError(
            f"split_by_text: expected fractions >= 0 that leave some training data, got validation_fraction="
            f"{validation_fraction}, test_fraction={test_fraction}"
        )
    distinct = sorted(set(texts))
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_test = math.ceil(test_fraction * len(distinct))
    n_validation = math.ceil(validation_fraction * len(distinct))
    splits = {}
    for rank, index in enumerate(order):
        splits[distinct[index]] = "test" if rank < n_test else "validation" if rank < n_test + n_validation else "train"
    return splits


def license_notice(copyright_text: str | None) -> str:
    """The ``LICENSE`` file of a prepared corpus: the attribution, what was changed, and the package's own copyright
    file (``COPYRIGHT_FILE``, which holds the full license text) when there is one."""
    notice = [
        "Asterisk core sound prompts in English, recorded by Allison Smith (http://www.theivrvoice.com),",
        "Copyright 2003-2010 Allison Smith, financial contributions by Digium, Inc. (http://www.digium.com).",
        "Licensed under the Creative Commons Attribution-ShareAlike 3.0 license (CC-BY-SA-3.0),",
        "https://creativecommons.org/licenses/by-sa/3.0/; this prepared corpus is shared under the same license.",
        "",
        "Source: the Debian packages asterisk-core-sounds-en-g722 (audio) and asterisk-core-sounds-en (transcripts).",
        "Changes: the G.722 audio was decoded and stored as 16 kHz 16-bit WAV; the transcripts were lower-cased, their",
        "punctuation and sound descriptions removed, digits spelled out and misspellings corrected; prompts that are",
        "not speech were left out.",
        "",
    ]
    if copyright_text is not None:
        notice += ["The package's copyright file follows.", "", copyright_text]
    return "\n".join(notice)
