"""The embedded audio-visual corpus: eSpeak NG speech and a phoneme-driven mouth video, generated, not downloaded.

For every sentence of the grammar (:mod:`mtsk_data.synthetic.grammar`) a speaker says it through eSpeak NG, driven
through its C API from the library and voices that the ``espeakng-loader`` wheel ships. The synthesis callback gives
the audio and a phoneme event with its time for every phoneme; the audio is resampled to 16 kHz, padded with a little
silence and mixed with noise at a moderate SNR, and the same phoneme timing drives a 25 fps 96x96 mouth video
(:mod:`mtsk_data.synthetic.visemes`). Speakers differ in voice, speed, pitch and mouth geometry.

The corpus is written in the shared record schema (:mod:`mtsk_data.records`) and can be exported to the auto_avsr
file layout, so it doubles as a fake LRS3 in tests::

    python -m mtsk_data.synthetic --out data/embedded                      # 3000 / 200 / 300 clips
    python -m mtsk_data.synthetic --out data/embedded --export-auto-avsr data/embedded_auto_avsr

Generation is deterministic given the seed and resumable: rerunning skips utterances already in finished shards.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pyarrow.parquet as pq
import soxr

from llama_mtsk.configuration_llama_mtsk import SAMPLES_PER_FRAME, SAMPLING_RATE
from mtsk_data.prepare import write_auto_avsr_tree
from mtsk_data.records import SPLITS, ShardWriter, make_record, normalize_text, shard_paths
from mtsk_data.synthetic.grammar import VOCABULARY, make_splits
from mtsk_data.synthetic.visemes import MouthGeometry, Phoneme, lip_track, render_mouth


# ----------------------------------------------------------------------------------------------------------------
# eSpeak NG through its C API (speak_lib.h)
# ----------------------------------------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4  # espeak_PARAMETER


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds from the start of the output
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


def _steady_data_root(source: str) -> str:
    """A folder holding ``espeak-ng-data``: the wheel's files (symlinked) plus room for our own voice variants.

    Built once per eSpeak data version under the user's cache folder and shared by every process.
    """
    stamp = f"{os.path.realpath(source)}:{os.stat(os.path.join(source, 'phondata')).st_mtime_ns}"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(cache, "llama-mtsk", f"espeak-ng-{hashlib.sha1(stamp.encode()).hexdigest()[:12]}")
    if os.path.isdir(root):
        return root
    os.makedirs(os.path.dirname(root), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=os.path.dirname(root))
    data = os.path.join(staging, "espeak-ng-data")
    os.makedirs(os.path.join(data, "voices", "!v"))
    for name in os.listdir(source):
        if name != "voices":
            os.symlink(os.path.join(source, name), os.path.join(data, name))
    for name in os.listdir(os.path.join(source, "voices")):
        if name != "!v":
            os.symlink(os.path.join(source, "voices", name), os.path.join(data, "voices", name))
    try:
        os.rename(staging, root)
    except OSError:  # another process finished first
        shutil.rmtree(staging)
    return root


class Espeak:
    """eSpeak NG in synchronous mode, returning audio and timed phonemes, deterministically.

    eSpeak keeps its pitch-flutter and voice-roughness counters in static variables that no API call resets, so
    the same text comes out a few samples longer or shorter depending on what was said before. Every voice is
    therefore used through a variant of our own that turns those two effects off (``flutter 0``, ``roughness 8``)
    on top of the requested variant, and the noise generator is reseeded before each call: the same arguments
    then give the same samples and phoneme times in any order. The C library keeps global state and is not
    reentrant: create one per process (:func:`espeak`), and use processes, not threads, to synthesise in parallel.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as error:
            raise ImportError("The embedded corpus needs eSpeak NG: pip install espeakng-loader") from error
        self._source_data = espeakng_loader.get_data_path()
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self._data_root = _steady_data_root(self._source_data)
        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            0,
            self._data_root.encode(),
            _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT,
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with the data from {self._source_data}")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _SynthCallback(self._on_synth)  # kept referenced: the C library holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _steady_voice(self, voice: str) -> str:
        """``language+variant`` -> ``language+mtsk-variant``, writing that variant file on first use."""
        language, _, variant = voice.partition("+")
        name = f"mtsk-{variant or 'plain'}"
        folder = os.path.join(self._data_root, "espeak-ng-data", "voices", "!v")
        if not os.path.exists(os.path.join(folder, name)):
            base = "language variant\n"
            if variant:
                original = os.path.join(self._source_data, "voices", "!v", variant)
                if not os.path.isfile(original):
                    raise ValueError(f"Espeak.synthesize: unknown eSpeak voice variant {variant!r} in {voice!r}")
                with open(original) as file:
                    base = file.read()
            # Written aside and renamed, as other worker processes may write the same file at the same time.
            descriptor, staging = tempfile.mkstemp(dir=folder, prefix=".")
            with os.fdopen(descriptor, "w") as file:
                file.write(f"{base}\nflutter 0\nroughness 8\n")
            os.replace(staging, os.path.join(folder, name))
        return f"{language}+{name}"

    def _on_synth(self, wav, num_samples, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_PHONEME:
                self._events.append((event.audio_position, event.id.string.decode("utf-8", errors="replace")))
            index += 1
        return 0  # continue

    def synthesize(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int
    ) -> tuple[np.ndarray, list[Phoneme]]:
        """Speak ``text``; returns float32 samples at :attr:`sample_rate` (22050 Hz) and the timed phonemes.

        ``voice`` is an eSpeak voice name with an optional variant (``"en-us"``, ``"en-gb-scotland+f1"``);
        ``rate`` is in words per minute (80-450), ``pitch`` and ``pitch_range`` in 0-100 (50 is the default).
        """
        with self._lock:
            if self._lib.espeak_SetVoiceByName(self._steady_voice(voice).encode()) != 0:
                raise ValueError(f"Espeak.synthesize: unknown eSpeak voice {voice!r}")
            # Volume 60 keeps eSpeak clear of its own clipping limiter (whose gain state also carries over).
            settings = {_RATE: rate, _VOLUME: 60, _PITCH: pitch, _RANGE: pitch_range}
            for parameter, value in settings.items():
                self._lib.espeak_SetParameter(parameter, int(value), 0)
            self._lib.espeak_ng_SetRandSeed(1)
            self._chunks, self._events = [], []
            encoded = text.encode("utf-8")
            status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status} for {text!r}")
            chunks, events = self._chunks, self._events
        if not chunks:
            raise RuntimeError(f"Espeak.synthesize: no audio for {text!r} with voice {voice!r}")
        samples = np.concatenate(chunks).astype(np.float32) / 32768.0
        total = samples.size / self.sample_rate
        starts = [position / 1000.0 for position, _ in events]
        phonemes = [
            Phoneme(name, start, min(starts[i + 1] if i + 1 < len(starts) else total, total))
            for i, ((_, name), start) in enumerate(zip(events, starts))
        ]
        return samples, phonemes


_ENGINE: Espeak | None = None


def espeak() -> Espeak:
    """This process's eSpeak NG engine, initialised on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE


# ----------------------------------------------------------------------------------------------------------------
# Speakers and utterances
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: an eSpeak voice (language + variant), speed, pitch and a mouth."""

    name: str
    voice: str
    rate: int  # words per minute
    pitch: int  # 0-100
    pitch_range: int  # 0-100
    mouth: MouthGeometry


_VOICES = (  # voice, rate, pitch, pitch range
    ("en-us", 140, 50, 50),
    ("en-us+f3", 145, 62, 60),
    ("en+m3", 130, 40, 45),
    ("en-gb-scotland", 135, 48, 50),
    ("en-gb-x-rp+f2", 140, 66, 55),
    ("en-029", 130, 50, 55),
    ("en-us-nyc+m1", 150, 42, 40),
    ("en+f4", 140, 70, 60),
    ("en-us+m5", 135, 35, 45),
    ("en-gb-x-gbclan+f1", 145, 60, 50),
    ("en-gb-x-rp+m2", 130, 45, 50),
    ("en-us+f5", 140, 58, 65),
    ("en+m7", 145, 38, 40),
    ("en-gb-x-gbcwmd+f3", 135, 64, 55),
    ("en-us+m4", 150, 46, 50),
    ("en-gb-scotland+f1", 135, 62, 50),
)
# Each speaker's mouth is drawn once from a fixed seed, so speakers are the same in every corpus.
SPEAKERS: tuple[Speaker, ...] = tuple(
    Speaker(
        f"spk{index:02d}", voice, rate, pitch, pitch_range, MouthGeometry.sample(np.random.default_rng([7, index]))
    )
    for index, (voice, rate, pitch, pitch_range) in enumerate(_VOICES)
)
_SPEAKERS_BY_NAME = {speaker.name: speaker for speaker in SPEAKERS}


def get_speaker(name: str) -> Speaker:
    """The speaker called ``name`` (``spk00`` ... ``spk15``)."""
    if name not in _SPEAKERS_BY_NAME:
        raise KeyError(f"get_speaker: unknown speaker {name!r}; known: {sorted(_SPEAKERS_BY_NAME)}")
    return _SPEAKERS_BY_NAME[name]


@dataclass
class Utterance:
    """One generated clip: 16 kHz audio and 25 fps mouth frames of equal length (640 samples per frame)."""

    text: str
    speaker: str
    audio: np.ndarray  # float32 (n_frames * 640,)
    frames: np.ndarray  # uint8 (n_frames, 96, 96)
    phonemes: list[Phoneme]  # times in seconds on the 16 kHz audio
    snr_db: float

    @property
    def duration(self) -> float:
        return self.audio.size / SAMPLING_RATE


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-power Gaussian noise with a random spectral tilt, from white to a low-frequency rumble."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n, 1.0 / SAMPLING_RATE)
    tilt = rng.uniform(0.0, 1.0)  # 0: white; 1: falling 6 dB per octave above 300 Hz
    noise = np.fft.irfft(spectrum * (1.0 + (frequencies / 300.0) ** 2) ** (-tilt / 2), n).astype(np.float32)
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-8)


def synthesize_speech(
    text: str, speaker: Speaker | str, rng: np.random.Generator
) -> tuple[np.ndarray, list[Phoneme], float]:
    """``speaker`` says ``text``: 16 kHz audio padded to whole 25 fps frames, its timed phonemes and its SNR (dB).

    ``rng`` sets the small per-utterance variation: speed (+-8 %), pitch (+-4), leading and trailing silence
    (0.2-0.4 s each), loudness, noise colour and SNR (15-30 dB).
    """
    if isinstance(speaker, str):
        speaker = get_speaker(speaker)
    if not text or normalize_text(text) != text:
        raise ValueError(f"synthesize_speech: text must be normalised (lower-case, no punctuation), got {text!r}")
    rate = int(round(speaker.rate * rng.uniform(0.92, 1.08)))
    pitch = int(np.clip(speaker.pitch + rng.integers(-4, 5), 0, 100))
    lead, tail = rng.uniform(0.2, 0.4, size=2)
    level_db = rng.uniform(-23.0, -17.0)
    snr_db = float(rng.uniform(15.0, 30.0))

    engine = espeak()
    speech, phonemes = engine.synthesize(text, speaker.voice, rate, pitch, speaker.pitch_range)
    speech = soxr.resample(speech, engine.sample_rate, SAMPLING_RATE).astype(np.float32)
    speech *= 10 ** (level_db / 20) / max(float(np.sqrt(np.mean(speech**2))), 1e-8)

    lead_samples = int(round(lead * SAMPLING_RATE))
    n_frames = int(np.ceil((lead_samples + speech.size + tail * SAMPLING_RATE) / SAMPLES_PER_FRAME))
    audio = np.zeros(n_frames * SAMPLES_PER_FRAME, dtype=np.float32)
    audio[lead_samples : lead_samples + speech.size] = speech
    speech_power = float(np.mean(speech**2))
    audio += np.sqrt(speech_power / 10 ** (snr_db / 10)) * _noise(rng, audio.size)
    peak = float(np.max(np.abs(audio)))
    if peak > 0.99:  # keep headroom for 16-bit PCM instead of clipping
        audio *= 0.99 / peak

    offset = lead_samples / SAMPLING_RATE
    return audio, [Phoneme(p.name, p.start + offset, p.end + offset) for p in phonemes], snr_db


def synthesize_utterance(text: str, speaker: Speaker | str, seed: int) -> Utterance:
    """Generate one clip of ``speaker`` saying ``text``; the same (text, speaker, seed) gives the same clip.

    The seed sets the speech's variation (:func:`synthesize_speech`) and then the video jitter.
    """
    if isinstance(speaker, str):
        speaker = get_speaker(speaker)
    rng = np.random.default_rng(seed)
    audio, phonemes, snr_db = synthesize_speech(text, speaker, rng)
    track = lip_track(phonemes, audio.size // SAMPLES_PER_FRAME, articulation=speaker.mouth.articulation)
    frames = render_mouth(track, speaker.mouth, rng)
    return Utterance(text=text, speaker=speaker.name, audio=audio, frames=frames, phonemes=phonemes, snr_db=snr_db)


# ----------------------------------------------------------------------------------------------------------------
# The corpus
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UtterancePlan:
    """What to generate for one record: everything needed to make it, so any worker gives the same bytes."""

    id: str
    split: str
    text: str
    speaker: str
    seed: int


def plan_corpus(num_train: int, num_validation: int, num_test: int, seed: int = 0) -> list[UtterancePlan]:
    """The deterministic list of utterances of a corpus: sentences (:func:`~mtsk_data.synthetic.grammar.make_splits`),
    speakers (balanced: every speaker says about the same number of sentences in every split) and seeds."""
    sentences = make_splits(num_train, num_validation, num_test, seed)
    plans = []
    for offset, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, 100 + offset])
        speakers = np.resize(rng.permutation(len(SPEAKERS)), len(sentences[split]))
        seeds = rng.integers(0, 2**31 - 1, size=len(sentences[split]))
        for index, text in enumerate(sentences[split]):
            speaker = SPEAKERS[speakers[index]].name
            plans.append(UtterancePlan(f"{split}-{index:05d}", split, text, speaker, int(seeds[index])))
    return plans


def make_utterance_record(plan: UtterancePlan) -> dict:
    """Generate one planned utterance as a record of the shared schema."""
    utterance = synthesize_utterance(plan.text, plan.speaker, plan.seed)
    return make_record(plan.id, plan.text, plan.speaker, utterance.audio, utterance.frames)


def _init_worker() -> None:
    """Set up a generation worker process: keep freed memory, start eSpeak."""
    # Rendering allocates and frees megabyte-sized numpy temporaries for every clip. glibc by default gives such
    # memory back to the kernel at once and faults it in again on the next clip, which cost about 40 % of the
    # generation time here; raising the trim and mmap thresholds (M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3)
    # keeps it in the process. Other C libraries need nothing.
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-1, 1 << 30)
        libc.mallopt(-3, 1 << 25)  # the largest mmap threshold glibc accepts on 64-bit systems (32 MiB)
    espeak()


Plan = TypeVar("Plan")


def synthesize_in_workers(make: Callable[[Plan], dict], plans: list[Plan], workers: int) -> Iterator[dict]:
    """``make(plan)`` for every plan, in order, in ``workers`` processes; ``make`` must be a module-level function."""
    if workers <= 1 or len(plans) < 2:
        yield from map(make, plans)
        return
    # One process per worker, each with its own eSpeak (the library is not reentrant); "spawn" so that no
    # worker inherits a half-initialised engine or a lock from the parent.
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(make, plans, chunksize=16)


def _write_dataset_card(out_dir: str, counts: dict[str, int], seed: int) -> None:
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in SPLITS:
        if shard_paths(out_dir, split):
            lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    lines += [
        "---",
        "# Embedded audio-visual speech corpus (generated)",
        "",
        "Synthetic speech from eSpeak NG with a 25 fps 96x96 grayscale mouth video driven by the same phonemes, made",
        f"by `python -m mtsk_data.synthetic` (seed {seed}; {', '.join(f'{n} {s}' for s, n in counts.items())} clips).",
        f"{len(SPEAKERS)} speakers, {len(VOCABULARY)} words; validation and test sentences never occur in training.",
        "Columns: id, text, speaker, duration (s), n_frames (25 fps), audio (16 kHz WAV bytes), video (mp4 bytes).",
        "",
    ]
    with open(os.path.join(out_dir, "README.md"), "w") as file:
        file.write("\n".join(lines))


def check_generation_settings(out_dir: str, settings: dict, caller: str) -> None:
    """Creates ``out_dir`` and keeps ``settings`` in ``<out_dir>/generation.json``, or, when the folder was generated
    before, refuses it unless it was made with the same settings (resuming must not mix two corpora)."""
    os.makedirs(out_dir, exist_ok=True)
    settings_path = os.path.join(out_dir, "generation.json")
    if os.path.exists(settings_path):
        with open(settings_path) as file:
            previous = json.load(file)
        if previous != settings:
            raise ValueError(f"{caller}: {out_dir} was generated with {previous}, not {settings}; use a new folder")
    else:
        with open(settings_path, "w") as file:
            json.dump(settings, file)


def generate_corpus(
    out_dir: str,
    num_train: int = 3000,
    num_validation: int = 200,
    num_test: int = 300,
    seed: int = 0,
    workers: int = 2,
    records_per_shard: int = 500,
    progress: bool = False,
) -> dict[str, float | int]:
    """Generate (or finish) the embedded corpus under ``out_dir``; returns clips, hours and seconds taken.

    The result depends only on the sizes and the seed, not on ``workers``. Rerunning with the same arguments
    finishes an interrupted run: records already in finished shards are not generated again. The arguments are
    kept in ``<out_dir>/generation.json``; a folder made with other arguments is refused.
    """
    started = time.perf_counter()
    settings = {"seed": seed, "num_train": num_train, "num_validation": num_validation, "num_test": num_test}
    check_generation_settings(out_dir, settings, "generate_corpus")

    plans = plan_corpus(num_train, num_validation, num_test, seed)
    counts = {"train": num_train, "validation": num_validation, "test": num_test}
    writers = {
        split: ShardWriter(out_dir, split, records_per_shard=records_per_shard) for split in SPLITS if counts[split]
    }
    done = set().union(*(writer.done_ids() for writer in writers.values()))
    todo = [plan for plan in plans if plan.id not in done]

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="clip", desc="generating")
    for plan, record in zip(todo, synthesize_in_workers(make_utterance_record, todo, workers)):
        writers[plan.split].write(record)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    for writer in writers.values():
        writer.close()
    _write_dataset_card(out_dir, counts, seed)
    write_tokenizer(os.path.join(out_dir, "tokenizer"))

    seconds = 0.0
    for split in writers:
        for path in shard_paths(out_dir, split):
            seconds += float(pq.read_table(path, columns=["duration"]).column("duration").to_numpy().sum())
    return {
        "clips": len(plans),
        "generated": len(todo),
        "hours": seconds / 3600.0,
        "seconds_taken": time.perf_counter() - started,
    }


_WORD_IDS = {word: index + 1 for index, word in enumerate(VOCABULARY)}


def write_tokenizer(folder: str) -> None:
    """A word-level tokenizer of the corpus vocabulary and the default prompts (lower-casing, whitespace and
    punctuation splitting, `<unk>`, `<s>`, `</s>`), saved as a transformers tokenizer: the small vocabulary of an LLM
    trained from scratch on this corpus."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from llama_mtsk.configuration_llama_mtsk import DEFAULT_PROMPTS

    splitter = pre_tokenizers.Whitespace()
    # The audiovisual prompt first (it holds every prompt word): the token ids of the demo run in BENCHMARKS.md.
    prompts = [DEFAULT_PROMPTS["audiovisual"], *DEFAULT_PROMPTS.values()]
    prompt_words = [word for prompt in prompts for word, _ in splitter.pre_tokenize_str(prompt.lower())]
    words = ["<unk>", "<s>", "</s>", *dict.fromkeys((*prompt_words, *VOCABULARY))]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = splitter
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)


def word_token_ids(text: str) -> list[int]:
    """Word-level token ids of the embedded vocabulary: 1 + the word's index in ``VOCABULARY`` (0 stays free)."""
    ids = []
    for word in text.split():
        if word not in _WORD_IDS:
            raise ValueError(f"word_token_ids: {word!r} is not in the embedded vocabulary; pass your own tokenize")
        ids.append(_WORD_IDS[word])
    return ids


def export_auto_avsr(
    corpus_dir: str,
    split: str,
    out_dir: str,
    dataset: str = "embedded",
    tokenize: Callable[[str], list[int]] = word_token_ids,
) -> str:
    """Export one split of a record-schema corpus to the auto_avsr / Llama-AVSR file layout (see
    :func:`mtsk_data.prepare.write_auto_avsr_tree`), with ``tokenize`` giving the token ids; returns the CSV path."""
    files = shard_paths(corpus_dir, split)
    if not files:
        raise FileNotFoundError(f"export_auto_avsr: no {split} shards under {os.path.join(corpus_dir, 'data')}")
    rows = (row for path in files for batch in pq.ParquetFile(path).iter_batches(64) for row in batch.to_pylist())
    return write_auto_avsr_tree(rows, out_dir, split, token_ids=tokenize, dataset=dataset)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mtsk_data.synthetic", description="Generate the embedded audio-visual speech corpus (eSpeak NG)."
    )
    parser.add_argument("--out", required=True, help="output folder (parquet shards under OUT/data)")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-validation", type=int, default=200)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--records-per-shard", type=int, default=500)
    parser.add_argument("--export-auto-avsr", metavar="DIR", help="also export every split to the auto_avsr layout")
    args = parser.parse_args(argv)

    summary = generate_corpus(
        args.out, args.num_train, args.num_validation, args.num_test, args.seed, args.workers,
        args.records_per_shard, progress=True,
    )  # fmt: skip
    print(
        f"{summary['clips']} clips ({summary['generated']} generated now), {summary['hours']:.2f} hours, "
        f"{summary['seconds_taken']:.1f} s with {args.workers} worker(s); {len(SPEAKERS)} speakers, "
        f"{len(VOCABULARY)} words -> {args.out}"
    )
    if args.export_auto_avsr:
        for split, size in (("train", args.num_train), ("validation", args.num_validation), ("test", args.num_test)):
            if size:
                print(export_auto_avsr(args.out, split, args.export_auto_avsr))

