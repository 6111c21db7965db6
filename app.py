# Copyright 2026 The llama-mtsk authors. Licensed under the Apache License, Version 2.0.
"""The Llama-MTSK web app: record or upload a clip, pick a scale, read the transcript and what it cost.

    python app.py                                  # the demo checkpoint, outputs/demo/final (`make demo` trains it)
    python app.py --model you/llama-mtsk           # any checkpoint folder or Hub id
    python app.py --screenshot docs/app.png        # transcribe a corpus example in headless Chromium, save the page

The app needs only the checkpoint and its remote code (`pipeline(..., trust_remote_code=True)`), so the same file
runs as a Hugging Face Space (`spaces/` holds the rest of what a Space needs). Inputs follow the checkpoint's
modality: speech from the microphone or a file, or a video (an mp4 with sound, a mouth-ROI clip, or a talking-face
video the pipeline crops around the mouth). "Compare all scales" runs the clip at every trained scale beside the
checkpoint's WER-against-tokens plot from its evaluation report (`python -m mtsk_train.evaluation`).

Nothing is fetched from the internet while the page runs: Gradio's analytics and version check are off and its
fonts are served by the app itself.
"""

from __future__ import annotations

import os


# Before Gradio is imported: it reads the setting at import time (usage analytics and the version check on launch).
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import argparse
import functools
import itertools
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import gradio as gr
import numpy as np
import torch
from transformers import Pipeline, pipeline


logger = logging.getLogger("llama_mtsk_app")

DEFAULT_MODEL = "outputs/demo/final"
DEFAULT_CORPUS = "data/embedded"
# A Space runs `python app.py` without arguments: it names its checkpoint in this variable (Space settings).
MODEL_VARIABLE = "LLAMA_MTSK_MODEL"
# Below this peak level (-40 dBFS) a recording holds no speech worth transcribing.
SILENCE_PEAK = 0.01
# The model inputs of one chunk that set its LLM cost (`count_llm_input_tokens`).
MEDIA_INPUTS = ("input_features", "input_features_mask", "pixel_values_videos", "pixel_values_videos_mask")
ADAPTIVE_HELP = {
    "auto": ". auto: the finest scale within a budget of LLM input tokens",
    "cascade": ". cascade: the coarsest scale first, finer ones only while the model is unsure",
}
COMPARISON_HEADERS = ["scale", "transcript", "LLM input tokens", "generated tokens", "time (s)", "WER in report (%)"]


# ---------------------------------------------------------------------------------------------------------------------
# The checkpoint
# ---------------------------------------------------------------------------------------------------------------------


def load_asr(model: str) -> Pipeline:
    """The checkpoint's automatic-speech-recognition pipeline (its own remote code), or a `SystemExit` that says what
    to do when `model` is neither a folder nor a Hub id."""
    if not Path(model).exists():
        if model == DEFAULT_MODEL:
            raise SystemExit(
                f"No checkpoint at {DEFAULT_MODEL}: train the demo first with `make demo` (about 13 minutes on two CPU "
                f"cores), or pass --model with a Llama-MTSK checkpoint folder or Hub id (on a Space: set the "
                f"{MODEL_VARIABLE} variable)."
            )
        if model.count("/") != 1 or model.startswith((".", "/", "~")):
            raise SystemExit(f"--model {model}: no such folder, and not a Hub id (owner/name)")
    try:
        return pipeline("automatic-speech-recognition", model=model, trust_remote_code=True)
    except OSError as error:
        raise SystemExit(f"--model {model}: could not load a Llama-MTSK checkpoint: {error}") from None


def checkpoint_file(model: str, name: str) -> Path | None:
    """`name` in the checkpoint (a local folder, or the Hub repo's copy), or None when it has none."""
    if Path(model).is_dir():
        path = Path(model) / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(model, name))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def report_wer(report_path: Path | None) -> dict[tuple[int | None, int | None], float]:
    """Clean-audio WER (%) per scale from an `eval_report.json` (rows of `mtsk_train.evaluation.ScaleResult`)."""
    if report_path is None:
        return {}
    rows = json.loads(report_path.read_text())
    return {
        (row["audio_rate"], row["video_rate"]): 100 * row["wer"]
        for row in rows
        if row.get("snr_db") is None and not row.get("blank_video") and "audio_rate" in row and "video_rate" in row
    }


def scale_label(scale: tuple[int | None, int | None]) -> str:
    """`(4, 2)` for an audio-visual scale, the single rate otherwise (`4`), as `scale=` takes it."""
    rates = [rate for rate in scale if rate is not None]
    return f"({rates[0]}, {rates[1]})" if len(rates) == 2 else str(rates[0])


def adaptive_scale_modes(asr: Pipeline) -> list[str]:
    """The adaptive scale choices this checkpoint's pipeline accepts: `auto` (the finest scale within a budget of LLM
    input tokens) and `cascade` (coarse first, finer only where unsure). Asked of the pipeline's own argument check,
    so that a checkpoint whose remote code predates them offers neither; `cascade` also needs a calibrated threshold."""
    modes = []
    for mode, arguments in (("auto", {"max_llm_tokens": 10**6}), ("cascade", {})):
        try:
            asr._sanitize_parameters(scale=mode, **arguments)
        except (ValueError, TypeError):
            continue
        modes.append(mode)
    # A cascade also needs its confidence threshold, calibrated on validation data into the generation config.
    if getattr(asr.model.generation_config, "cascade_threshold", None) is None and "cascade" in modes:
        modes.remove("cascade")
    return modes


def processing_module(asr: Pipeline):
    """The checkpoint's own processing module (its remote code): media decoders and stream constants."""
    return sys.modules[type(asr.processor).__module__]


def llm_input_tokens_per_clip(asr: Pipeline, seconds: float) -> dict[tuple[int | None, int | None], int]:
    """What a clip of `seconds` costs the LLM at each trained scale (counted, not run)."""
    config = asr.model.config
    processing = processing_module(asr)
    frames = int(seconds * processing.VIDEO_FPS)
    inputs = asr.processor(
        audio=[np.zeros(frames * processing.SAMPLES_PER_FRAME, dtype=np.float32)] if config.uses_audio else None,
        videos=[np.zeros((frames, 96, 96), dtype=np.uint8)] if config.uses_video else None,
        sampling_rate=processing.SAMPLING_RATE,
        return_tensors="pt",
    )
    media = {name: inputs[name] for name in MEDIA_INPUTS if name in inputs}
    return {scale: int(asr.model.count_llm_input_tokens(scale, **media).sum()) for scale in config.scales}


# ---------------------------------------------------------------------------------------------------------------------
# Example clips from the embedded corpus
# ---------------------------------------------------------------------------------------------------------------------


def write_corpus_examples(corpus: Path, modality: str, out_dir: Path, count: int) -> list[tuple[Path, str]]:
    """The first `count` clips of the corpus's test split as files the page can load, each with its transcript: the
    WAV for an audio model, the mouth clip for a lip-reading one, the mouth clip with its sound (mp4) for an
    audio-visual one. No examples when there is no corpus (on a Space, say)."""
    if not (corpus / "data").is_dir():
        return []
    # The repository's corpus tools: needed only where a corpus was generated, i.e. in a checkout. The shards are read
    # with pyarrow rather than `datasets`, whose loader pings its usage counter on the internet.
    import pyarrow.parquet as pq

    from llama_mtsk.configuration_llama_mtsk import VIDEO_FPS
    from llama_mtsk.media_llama_mtsk import load_audio, load_video
    from mtsk_data.records import encode_mp4, shard_paths

    out_dir.mkdir(parents=True, exist_ok=True)
    records = (
        record
        for shard in shard_paths(corpus, "test")
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=count, columns=["id", "text", "audio", "video"])
        for record in batch.to_pylist()
    )
    examples = []
    for record in itertools.islice(records, count):
        name = record["id"].replace("/", "_")
        audio, video = record["audio"]["bytes"], record["video"]["bytes"]
        if modality == "audio":
            path, data = out_dir / f"{name}.wav", audio
        elif modality == "video":
            path, data = out_dir / f"{name}.mp4", video
        else:
            path, data = out_dir / f"{name}.mp4", encode_mp4(load_video(video)[0], fps=VIDEO_FPS, audio=load_audio(audio))
        path.write_bytes(data)
        examples.append((path, record["text"]))
    return examples


# ---------------------------------------------------------------------------------------------------------------------
# Transcribing
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ScaleRun:
    """One transcription of a clip and what it cost: the LLM tokens of the pass whose transcript is kept (its input
    and generated tokens), and of every pass (a cascade decodes some chunks more than once)."""

    text: str
    chunk_scales: list[tuple[int | None, int | None]]
    llm_input_tokens: int
    generated_tokens: int
    llm_tokens: int
    seconds: float


def check_clip(asr: Pipeline, path: str, max_seconds: float) -> None:
    """Rejects what the model should not be given, with a message for the page: an unreadable file (the checkpoint's
    own decoder says why), a clip longer than `max_seconds`, a silent recording for a model that only listens."""
    processing = processing_module(asr)
    name = Path(path).name
    has_audio, _ = processing.probe_streams(path)
    with av.open(path) as container:
        seconds = None if container.duration is None else container.duration / av.time_base
    if seconds is not None and seconds > max_seconds:
        raise gr.Error(f"{name} is {seconds:.0f} s long; this app transcribes clips of up to {max_seconds:g} s.")
    config = asr.model.config
    if not (config.uses_audio and has_audio):
        return
    peak = float(np.abs(processing.load_audio(path)).max())
    if peak < SILENCE_PEAK:
        level = "no sound at all" if peak == 0 else f"peak level {20 * math.log10(peak):.0f} dBFS"
        if not config.uses_video:
            raise gr.Error(f"The recording in {name} is silent ({level}): check the microphone and record again.")
        gr.Warning(f"The sound of {name} is silent ({level}): the transcript comes from the lips alone.")


def generated_token_count(tokens: torch.Tensor, eos_token_ids: set[int]) -> int:
    """Tokens the LLM generated for one chunk: up to and including its first end-of-sequence token."""
    ids = tokens.reshape(-1).tolist()
    ends = [index for index, token in enumerate(ids) if token in eos_token_ids]
    return ends[0] + 1 if ends else len(ids)


def run_chunks(asr: Pipeline, chunks: list[dict], **call_arguments) -> ScaleRun:
    """The pipeline's forward and postprocess steps on already preprocessed chunks, exactly as `asr(clip,
    **call_arguments)` runs them after its preprocessing (`ChunkPipeline.run_single`): the clip is decoded once for
    any number of scales, and its chunk tensors are at hand for counting the LLM's tokens."""
    _, forward_params, postprocess_params = asr._sanitize_parameters(**call_arguments)
    start = time.perf_counter()
    # `_forward` takes the chunk's bookkeeping entries out of the dict it gets: each run gets its own copy.
    outputs = [asr.forward(dict(chunk), **forward_params) for chunk in chunks]
    result = asr.postprocess(outputs, **postprocess_params)
    seconds = time.perf_counter() - start
    # Pipelines with adaptive scales report the scale the chunks were decoded at (a list when they differ) and the LLM
    # tokens of every pass; older ones only the text.
    reported = result.get("scale", call_arguments["scale"])
    config = asr.model.config
    chunk_scales = [config.normalize_scale(scale) for scale in (reported if isinstance(reported, list) else [reported] * len(chunks))]
    llm_input_tokens = sum(
        int(asr.model.count_llm_input_tokens(scale, **{name: chunk[name] for name in MEDIA_INPUTS if name in chunk}).sum())
        for scale, chunk in zip(chunk_scales, chunks)
    )
    eos = asr.model.generation_config.eos_token_id
    eos_token_ids = set(eos) if isinstance(eos, list) else {eos}
    generated_tokens = sum(generated_token_count(output["tokens"], eos_token_ids) for output in outputs)
    return ScaleRun(
        text=result["text"],
        chunk_scales=chunk_scales,
        llm_input_tokens=llm_input_tokens,
        generated_tokens=generated_tokens,
        llm_tokens=result.get("llm_tokens", llm_input_tokens + generated_tokens),
        seconds=seconds,
    )


def shown_in_page(handler: Callable) -> Callable:
    """Turns any failure of `handler` into a message in the page, naming uploads by their file name rather than the
    upload cache's long path; the traceback goes to the console only."""

    @functools.wraps(handler)
    def wrapped(*args):
        try:
            return handler(*args)
        except gr.Error:
            raise
        except Exception as error:
            logger.exception("request failed")
            message = str(error) or type(error).__name__
            for argument in args:
                if isinstance(argument, str) and os.sep in argument:
                    message = message.replace(argument, Path(argument).name)
            raise gr.Error(message, print_exception=False) from None

    return wrapped


# ---------------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------------


def build_app(
    asr: Pipeline,
    model_name: str,
    examples: list[tuple[Path, str]],
    report_plot: Path | None,
    wer_by_scale: dict[tuple[int | None, int | None], float],
    max_seconds: float,
) -> gr.Blocks:
    """The page for `asr`'s checkpoint: its inputs follow the modality, its scale choices the trained scales (and the
    adaptive ones its pipeline accepts)."""
    config = asr.model.config
    scales_by_label = {scale_label(scale): scale for scale in config.scales}
    adaptive_modes = adaptive_scale_modes(asr)
    costs = llm_input_tokens_per_clip(asr, 1.0)
    has_speech_input = config.modality == "audio"
    modality_text = {
        "audio": "speech recognition from audio",
        "video": "lip reading from video",
        "audiovisual": "audio-visual speech recognition",
    }[config.modality]
    scale_help = (
        "(audio rate, video rate): each stream's tokens are pooled by its rate before the LLM"
        if config.modality == "audiovisual"
        else "the rate at which the stream's tokens are pooled before the LLM"
    )

    with gr.Blocks(title="Llama-MTSK") as demo:
        gr.Markdown(
            f"# Llama-MTSK: {modality_text}\n"
            f"Checkpoint `{model_name}`, trained at {len(config.scales)} scales: one set of weights, and you choose how "
            "hard the speech is compressed before the LLM reads it (fewer LLM tokens, less compute)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                audio = (
                    gr.Audio(sources=["microphone", "upload"], type="filepath", label="Speech: record or upload", elem_id="audio_input")
                    if has_speech_input
                    else None
                )
                video = gr.Video(
                    sources=["upload"],
                    label={
                        "audio": "Or a video: its sound is transcribed",
                        "video": "Video: a mouth-ROI clip or a talking-face video",
                        "audiovisual": "Video with sound: a mouth-ROI clip or a talking-face video",
                    }[config.modality],
                    height=280,
                    elem_id="video_input",
                )
                scale = gr.Radio(
                    choices=[*scales_by_label, *adaptive_modes],
                    value=scale_label(config.scales[0]),
                    label="Scale",
                    info=f"{scale_help}; finest first. LLM input tokens for 1 s of speech: "
                    + ", ".join(f"{scale_label(s)}: {tokens}" for s, tokens in costs.items())
                    + "".join(ADAPTIVE_HELP[mode] for mode in adaptive_modes),
                    elem_id="scale",
                )
                budget = (
                    gr.Slider(
                        minimum=min(costs.values()),
                        maximum=int(max(costs.values()) * max_seconds),
                        value=max(costs.values()) * 3,
                        step=1,
                        label="LLM input-token budget per clip (auto: the finest scale within it)",
                        visible=False,
                        elem_id="budget",
                    )
                    if "auto" in adaptive_modes
                    else gr.State(None)
                )
                with gr.Row():
                    transcribe_button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
                    compare_button = gr.Button("Compare all scales", elem_id="compare")
            with gr.Column(scale=1):
                transcript = gr.Textbox(label="Transcript", lines=3, interactive=False, elem_id="transcript")
                with gr.Row():
                    used_scale = gr.Textbox(label="Scale used", interactive=False, elem_id="used_scale")
                    tokens = gr.Textbox(label="LLM tokens (input + generated)", interactive=False, elem_id="tokens")
                    latency = gr.Textbox(label="Latency", interactive=False, elem_id="latency")
                reference = gr.Textbox(label="Reference transcript (corpus examples)", interactive=False, elem_id="reference")
        if examples:
            gr.Examples(
                [[str(path), None, text] if audio is not None else [str(path), text] for path, text in examples],
                inputs=[audio, video, reference] if audio is not None else [video, reference],
                label="Clips from the embedded corpus's test split",
                cache_examples=False,
                elem_id="examples",
            )
        gr.Markdown(
            f"## Compare all scales\nThe clip at every trained scale; the plot is the checkpoint's evaluation on its "
            f"test split. Clips of up to {max_seconds:g} s; time excludes decoding the file."
        )
        with gr.Row():
            comparison = gr.Dataframe(
                headers=COMPARISON_HEADERS,
                column_widths=["11%", "37%", "13%", "13%", "11%", "15%"],
                interactive=False,
                wrap=True,
                label="Every trained scale",
                scale=3,
                elem_id="comparison",
            )
            if report_plot is not None:
                gr.Image(str(report_plot), show_label=False, interactive=False, scale=2, elem_id="report_plot")
            else:
                gr.Markdown(
                    "This checkpoint has no evaluation report (`wer_vs_tokens.png`); make one with "
                    f"`python -m mtsk_train.evaluation --model {model_name} --data DATA --split test`.",
                    elem_id="no_report",
                )

        def chosen_source(audio_path: str | None, video_path: str | None) -> str:
            source = video_path or audio_path
            if source is None:
                what = "record or upload speech, or upload a video" if has_speech_input else "upload a video"
                raise gr.Error(f"No clip yet: {what} (or pick an example), then press the button.")
            check_clip(asr, source, max_seconds)
            return source

        @shown_in_page
        def transcribe(audio_path: str | None, video_path: str | None, choice: str, token_budget: float):
            start = time.perf_counter()
            chunks = list(asr.preprocess(chosen_source(audio_path, video_path)))
            arguments = {"scale": scales_by_label.get(choice, choice)}
            if choice == "auto":
                arguments["max_llm_tokens"] = int(token_budget)
            run = run_chunks(asr, chunks, **arguments)
            kept = f"{run.llm_input_tokens} input + {run.generated_tokens} generated"
            return (
                run.text,
                ", ".join(dict.fromkeys(scale_label(chunk_scale) for chunk_scale in run.chunk_scales)),
                f"{run.llm_tokens} ({kept})"
                if run.llm_tokens == run.llm_input_tokens + run.generated_tokens
                else f"{run.llm_tokens} over every pass ({kept} in the pass kept)",
                f"{time.perf_counter() - start:.2f} s",
            )

        @shown_in_page
        def compare(audio_path: str | None, video_path: str | None):
            chunks = list(asr.preprocess(chosen_source(audio_path, video_path)))
            rows = []
            for trained_scale in config.scales:
                run = run_chunks(asr, chunks, scale=trained_scale)
                wer = wer_by_scale.get(trained_scale)
                rows.append(
                    [
                        scale_label(trained_scale),
                        run.text,
                        run.llm_input_tokens,
                        run.generated_tokens,
                        round(run.seconds, 3),
                        "n/a" if wer is None else f"{wer:.1f}",
                    ]
                )
            return rows

        media_inputs = [audio, video] if audio is not None else [gr.State(None), video]
        transcribe_button.click(transcribe, [*media_inputs, scale, budget], [transcript, used_scale, tokens, latency])
        compare_button.click(compare, media_inputs, comparison)
        if isinstance(budget, gr.Slider):
            scale.change(lambda choice: gr.update(visible=choice == "auto"), scale, budget)
        # One clip at a time: a new recording or upload replaces the other input and an example's reference.
        if audio is not None:
            audio.upload(lambda: (None, ""), None, [video, reference])
            audio.stop_recording(lambda: (None, ""), None, [video, reference])
            video.upload(lambda: (None, ""), None, [audio, reference])
        else:
            video.upload(lambda: "", None, reference)
    return demo


# ---------------------------------------------------------------------------------------------------------------------
# The screenshot
# ---------------------------------------------------------------------------------------------------------------------


def save_screenshot(url: str, path: Path, timeout: float = 120.0) -> None:
    """Opens the page in headless Chromium (selenium and the system's chromium + chromedriver), transcribes the first
    corpus example (if any), compares all scales and saves the whole page as a PNG."""
    try:
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError as error:
        raise SystemExit(f"--screenshot needs selenium (pip install selenium): {error}") from None
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        raise SystemExit("--screenshot needs Chromium and its driver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000", "--hide-scrollbars"):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
        try:
            wait = WebDriverWait(driver, timeout)
            driver.get(url)
            wait.until(lambda page: page.find_elements(By.ID, "transcribe"))
            example_rows = driver.find_elements(By.CSS_SELECTOR, "#examples tbody tr")
            if example_rows:
                example_rows[0].click()
                wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#reference textarea").get_attribute("value"))
                driver.find_element(By.ID, "transcribe").click()
                wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#latency textarea").get_attribute("value"))
                driver.find_element(By.ID, "compare").click()
                wait.until(lambda page: page.find_elements(By.CSS_SELECTOR, "#comparison tbody tr td"))
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1400, height)
            path.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(path))
        finally:
            driver.quit()


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_VARIABLE, DEFAULT_MODEL),
        help=f"Llama-MTSK checkpoint folder or Hub id (default: ${MODEL_VARIABLE} if set, else {DEFAULT_MODEL})",
    )
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="corpus whose test split gives the example clips")
    parser.add_argument("--examples", type=int, default=5, help="example clips taken from the corpus")
    parser.add_argument("--max_seconds", type=float, default=60.0, help="longest clip the app transcribes")
    parser.add_argument("--host", default=None, help="0.0.0.0 to serve other machines (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="default: Gradio's, 7860 or the next free one")
    parser.add_argument("--concurrency", type=int, default=4, help="requests the one model serves at the same time")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the page here, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    asr = load_asr(args.model)
    with tempfile.TemporaryDirectory(prefix="llama_mtsk_examples_") as examples_dir:
        examples = write_corpus_examples(Path(args.corpus), asr.model.config.modality, Path(examples_dir), args.examples)
        logger.info(f"{len(examples)} example clips from {args.corpus} in {examples_dir}")
        demo = build_app(
            asr,
            model_name=args.model,
            examples=examples,
            report_plot=checkpoint_file(args.model, "wer_vs_tokens.png"),
            wer_by_scale=report_wer(checkpoint_file(args.model, "eval_report.json")),
            max_seconds=args.max_seconds,
        )
        demo.queue(default_concurrency_limit=args.concurrency)
        launch = dict(server_name=args.host, server_port=args.port, ssr_mode=False, max_file_size="200mb")
        if args.screenshot is None:
            demo.launch(**launch)
            return
        _, url, _ = demo.launch(**launch, prevent_thread_lock=True, quiet=True)
        try:
            save_screenshot(url, args.screenshot)
        finally:
            demo.close()
        logger.info(f"saved {args.screenshot}")


if __name__ == "__main__":
    main()
