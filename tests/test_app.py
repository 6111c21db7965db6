"""The web app (app.py) driven in a real headless browser: Debian's chromium through chromedriver and selenium.

Each app runs as `python app.py` in its own process on a tiny saved checkpoint. The page's transcripts are checked
against the checkpoint's pipeline on the same files at the same scales, the compare-all-scales view against every
trained scale, and bad inputs against readable messages in the page. Screenshots are saved to `tests/artifacts/`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from transformers import pipeline

from llama_mtsk.processing_llama_mtsk import LlamaMTSKProcessor
from mtsk_data.records import ShardWriter, make_record
from mtsk_train.evaluation import ScaleResult, write_report
from mtsk_train.hub import save_checkpoint

from media_samples import mouth_frames, mp4_bytes, signal, wav_bytes
from tiny_models import tiny_model, tiny_tokenizer


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="the browser test needs Chromium and its driver: apt-get install chromium chromium-driver",
)

REPOSITORY = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# Generous limits: on a loaded machine importing Gradio and torch alone can take a minute.
STARTUP_SECONDS = 300
WAIT_SECONDS = 60
REPORT_WER = {(4, 2): 0.105, (4, 5): 0.12, (16, 2): 0.2, (16, 5): 0.25}
CORPUS_TEXTS = ["set red at b one now", "place blue in c two soon"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The media files the tests upload (each test saves the checkpoint it serves here too)."""
    root = tmp_path_factory.mktemp("app")
    (root / "speech.wav").write_bytes(wav_bytes(signal(1.6, seed=1)))
    (root / "talk.mp4").write_bytes(mp4_bytes(mouth_frames(40, seed=3), audio=signal(1.6, seed=3)))
    (root / "silent.wav").write_bytes(wav_bytes(np.zeros(16000, dtype=np.float32)))
    (root / "long.wav").write_bytes(wav_bytes(signal(6.0, seed=2)))
    (root / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then no video at all" * 8)
    # 224x224 noise: too large for a mouth crop, so the pipeline looks for a face, and finds none.
    (root / "no_face.mp4").write_bytes(mp4_bytes(mouth_frames(10, side=224, color=True, seed=5), audio=signal(0.4, seed=5)))
    return root


def save_tiny_checkpoint(folder: Path, cascade_threshold: float | None = None, **settings) -> None:
    model = tiny_model(**settings)
    if cascade_threshold is not None:
        model.generation_config.cascade_threshold = cascade_threshold
        # Saved as a generation config of its own: loading replaces one marked as derived from the model config.
        model.generation_config._from_model_config = False
    save_checkpoint(folder, model, LlamaMTSKProcessor.from_model_config(model.config, tiny_tokenizer()))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_app(workdir: Path, model: str, *arguments: str) -> Iterator[tuple[str, Path]]:
    """`python app.py --model workdir/model ...` on a free port: yields its URL and its log file."""
    port = free_port()
    log = workdir / f"{model}_app.log"
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(workdir / "hf_modules"),
        "GRADIO_TEMP_DIR": str(workdir / "gradio"),
    }
    command = [sys.executable, "app.py", "--model", str(workdir / model), "--port", str(port), *arguments]
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=environment, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"app.py exited with {process.returncode}:\n{log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"app.py did not answer at {url} in {STARTUP_SECONDS} s:\n{log.read_text()}") from None
                time.sleep(0.3)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile, none of its own background traffic, and its network requests logged."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        # The microphone: a fake device (a tone), allowed without asking.
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


# -- the page ---------------------------------------------------------------------------------------------------------


def open_page(driver: webdriver.Chrome, url: str) -> None:
    """A fresh page: every output empty, so that a value read later was written by the action under test."""
    driver.get(url)
    WebDriverWait(driver, WAIT_SECONDS).until(lambda page: page.find_elements(By.ID, "transcribe"))


def upload(driver: webdriver.Chrome, component: str, path: Path) -> None:
    # The audio input opens on the microphone: switch it to uploads first.
    for upload_source in driver.find_elements(By.CSS_SELECTOR, f"#{component} button[aria-label='Upload file']"):
        upload_source.click()
    driver.find_element(By.CSS_SELECTOR, f"#{component} input[type=file]").send_keys(str(path))
    # The component shows the file once the upload is done (its file input goes away).
    WebDriverWait(driver, WAIT_SECONDS).until(
        lambda page: not page.find_elements(By.CSS_SELECTOR, f"#{component} input[type=file]")
    )


def choose_scale(driver: webdriver.Chrome, label: str) -> None:
    [option] = [option for option in driver.find_elements(By.CSS_SELECTOR, "#scale label") if option.text == label]
    option.click()


def scale_options(driver: webdriver.Chrome) -> list[str]:
    return [option.text for option in driver.find_elements(By.CSS_SELECTOR, "#scale label")]


def textbox(driver: webdriver.Chrome, elem_id: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value")


def transcribe(driver: webdriver.Chrome) -> dict[str, str]:
    """Presses Transcribe and returns the page's outputs once they are all filled in."""
    driver.find_element(By.ID, "transcribe").click()
    names = ("transcript", "used_scale", "tokens", "latency")
    WebDriverWait(driver, WAIT_SECONDS).until(lambda page: all(textbox(page, name) for name in names))
    return {name: textbox(driver, name) for name in names}


def compare_all_scales(driver: webdriver.Chrome) -> list[list[str]]:
    """Presses Compare all scales and returns the table's rows once they are there."""
    driver.find_element(By.ID, "compare").click()

    def rows(page: webdriver.Chrome) -> list[list[str]]:
        table = page.find_elements(By.CSS_SELECTOR, "#comparison [role=row].virtual-row")
        return [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")] for row in table]

    WebDriverWait(driver, WAIT_SECONDS).until(rows)
    return rows(driver)


def error_message(driver: webdriver.Chrome, expected: str) -> str:
    """Waits for an error message in the page that contains `expected`, and returns it."""
    messages = lambda page: [toast.text for toast in page.find_elements(By.CSS_SELECTOR, ".toast-body.error")]
    try:
        WebDriverWait(driver, WAIT_SECONDS).until(lambda page: any(expected in text for text in messages(page)))
    except TimeoutException:
        raise AssertionError(f"no error message with {expected!r} in the page; messages: {messages(driver)}") from None
    return next(text for text in messages(driver) if expected in text)


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    """Every URL the browser requested since the last call."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def save_page(driver: webdriver.Chrome, name: str) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, height)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


# -- what the page must show ------------------------------------------------------------------------------------------


def model_inputs(asr, source: Path) -> dict[str, torch.Tensor]:
    """The model inputs of `source`, a clip of one chunk, as the pipeline prepares them."""
    [chunk] = asr.preprocess(str(source))
    return {name: value for name, value in chunk.items() if name.startswith(("input_features", "pixel_values_videos"))}


def expected_cost(asr, source: Path, scale) -> str:
    """The LLM tokens the page must report for `source` (one chunk) at `scale`, as the model counts them: its input
    tokens, and in all the input plus the tokens it generates up to and including the end-of-sequence token."""
    inputs = model_inputs(asr, source)
    input_tokens = int(asr.model.count_llm_input_tokens(scale, **inputs).sum())
    with torch.no_grad():
        total = int(asr.model.generate(**inputs, scale=scale, return_dict_in_generate=True).llm_tokens.sum())
    return f"{total} ({input_tokens} input + {total - input_tokens} generated)"


def accepted_adaptive_modes(asr, source: Path) -> list[str]:
    """The adaptive scales the checkpoint's pipeline transcribes with (tried for real)."""
    accepted = []
    for mode, arguments in (("auto", {"max_llm_tokens": 10**6}), ("cascade", {})):
        try:
            asr(str(source), scale=mode, **arguments)
        except ValueError:
            continue
        accepted.append(mode)
    return accepted


def check_no_internet_requests(urls: list[str], app_url: str) -> None:
    app = urlparse(app_url).netloc
    remote = [url for url in urls if urlparse(url).scheme in ("http", "https", "ws", "wss") and urlparse(url).netloc != app]
    assert urls and not remote, f"the page fetched from outside the app: {remote}"


# -- the tests --------------------------------------------------------------------------------------------------------


def test_audio_app_transcribes_a_wav_and_the_sound_of_an_mp4_as_the_pipeline_does(workdir, browser):
    save_tiny_checkpoint(workdir / "asr", modality="audio", lora_strategy="ss", audio_rates=[4, 16])
    asr = pipeline("automatic-speech-recognition", model=str(workdir / "asr"), trust_remote_code=True)
    with running_app(workdir, "asr", "--max_seconds", "5", "--corpus", str(workdir / "no_corpus")) as (url, _):
        requested_urls(browser)
        open_page(browser, url)
        assert scale_options(browser) == ["4", "16", *accepted_adaptive_modes(asr, workdir / "speech.wav")]

        for component, clip in (("audio_input", "speech.wav"), ("video_input", "talk.mp4")):
            open_page(browser, url)
            upload(browser, component, workdir / clip)
            choose_scale(browser, "16")
            page = transcribe(browser)
            expected = asr(str(workdir / clip), scale=16)["text"]
            assert expected and page["transcript"] == expected, clip
            assert page["used_scale"] == "16"
            assert page["tokens"] == expected_cost(asr, workdir / clip, 16), clip
            assert page["latency"].endswith(" s") and float(page["latency"][:-2]) > 0

        if "auto" in scale_options(browser):
            # A budget of exactly what the coarser scale costs: the finest scale within it is that one.
            budget = int(asr.model.count_llm_input_tokens(16, **model_inputs(asr, workdir / "talk.mp4")).sum())
            open_page(browser, url)
            upload(browser, "video_input", workdir / "talk.mp4")
            choose_scale(browser, "auto")
            budget_box = WebDriverWait(browser, WAIT_SECONDS).until(  # the budget shows up with "auto"
                lambda page: page.find_element(By.CSS_SELECTOR, "#budget input[type=number]")
            )
            budget_box.clear()
            budget_box.send_keys(str(budget), Keys.TAB)
            page = transcribe(browser)
            assert page["transcript"] == asr(str(workdir / "talk.mp4"), scale="auto", max_llm_tokens=budget)["text"]
            assert page["used_scale"] == "16"
            assert page["tokens"] == expected_cost(asr, workdir / "talk.mp4", 16)

        # A recording from the (fake) microphone, which the page uploads as a WAV: the same transcript as that file's.
        open_page(browser, url)
        browser.find_element(By.CSS_SELECTOR, "#audio_input button.record-button").click()
        time.sleep(1)
        browser.find_element(By.CSS_SELECTOR, "#audio_input button.stop-button").click()
        page = transcribe(browser)
        [recording] = [path for path in (workdir / "gradio").rglob("*.wav") if path.name != "speech.wav"]
        assert page["transcript"] == asr(str(recording), scale=4)["text"]

        assert browser.find_elements(By.CSS_SELECTOR, "#audio_input audio")
        upload(browser, "video_input", workdir / "talk.mp4")
        WebDriverWait(browser, WAIT_SECONDS).until(  # the upload replaces the recording
            lambda page: not page.find_elements(By.CSS_SELECTOR, "#audio_input audio")
        )
        rows = compare_all_scales(browser)
        assert [row[0] for row in rows] == ["4", "16"]
        for row in rows:
            assert row[1] == asr(str(workdir / "talk.mp4"), scale=int(row[0]))["text"]
            assert row[5] == "n/a"  # no evaluation report in this checkpoint: no WER, and a note instead of the plot
        assert browser.find_element(By.ID, "no_report").text.startswith("This checkpoint has no evaluation report")

        for clip, expected_message in (
            ("silent.wav", "The recording in silent.wav is silent (no sound at all)"),
            ("long.wav", "long.wav is 6 s long; this app transcribes clips of up to 5 s"),
        ):
            open_page(browser, url)
            upload(browser, "audio_input", workdir / clip)
            browser.find_element(By.ID, "transcribe").click()
            assert "Traceback" not in error_message(browser, expected_message)
        check_no_internet_requests(requested_urls(browser), url)
        save_page(browser, "app_audio.png")


def test_audiovisual_app_with_examples_report_and_bad_inputs(workdir, browser):
    # Log-probabilities are below 0: this cascade goes on to the finest scale, decoding the clip at every scale.
    save_tiny_checkpoint(workdir / "avsr", cascade_threshold=0.0, modality="audiovisual", lora_strategy="mss")
    results = [
        ScaleResult(audio, video, None, wer, 10, 100, 20, 60.0 / audio + 40.0 / video, 0.001)
        for (audio, video), wer in REPORT_WER.items()
    ]
    write_report(results, workdir / "avsr", title="tiny audio-visual model")
    with ShardWriter(workdir / "corpus", "test") as writer:
        for index, text in enumerate(CORPUS_TEXTS):
            writer.write(make_record(f"test/{index}", text, "s1", signal(1.2, seed=10 + index), mouth_frames(30, seed=10 + index)))
    asr = pipeline("automatic-speech-recognition", model=str(workdir / "avsr"), trust_remote_code=True)
    talk = workdir / "talk.mp4"
    with running_app(workdir, "avsr", "--corpus", str(workdir / "corpus")) as (url, log):
        requested_urls(browser)
        open_page(browser, url)
        assert scale_options(browser) == ["(4, 2)", "(4, 5)", "(16, 2)", "(16, 5)", *accepted_adaptive_modes(asr, talk)]
        assert not browser.find_elements(By.ID, "audio_input")  # an audio-visual model takes a video with sound

        upload(browser, "video_input", talk)
        choose_scale(browser, "(16, 5)")
        page = transcribe(browser)
        assert page["transcript"] == asr(str(talk), scale=(16, 5))["text"]
        assert page["used_scale"] == "(16, 5)"
        assert page["tokens"] == expected_cost(asr, talk, (16, 5))

        if "cascade" in scale_options(browser):
            open_page(browser, url)
            upload(browser, "video_input", talk)
            choose_scale(browser, "cascade")
            page = transcribe(browser)
            assert page["transcript"] == asr(str(talk), scale="cascade")["text"]
            assert page["used_scale"] == "(4, 2)"
            every_pass = sum(int(expected_cost(asr, talk, scale).split()[0]) for scale in asr.model.config.scales)
            kept = expected_cost(asr, talk, (4, 2)).split(" (")[1].rstrip(")")
            assert page["tokens"] == f"{every_pass} over every pass ({kept} in the pass kept)"

        rows = compare_all_scales(browser)
        assert [row[0] for row in rows] == ["(4, 2)", "(4, 5)", "(16, 2)", "(16, 5)"]
        for row in rows:
            scale = tuple(int(rate) for rate in row[0].strip("()").split(", "))
            assert row[1] == asr(str(talk), scale=scale)["text"]
            assert row[5] == f"{100 * REPORT_WER[scale]:.1f}"
        plot = browser.find_element(By.CSS_SELECTOR, "img[src*='wer_vs_tokens']")
        assert plot.get_attribute("naturalWidth") != "0"
        save_page(browser, "app_audiovisual.png")

        # Corpus examples: one click loads the clip and its reference transcript.
        examples = browser.find_elements(By.CSS_SELECTOR, "#examples tbody tr")
        assert [row.text for row in examples] == CORPUS_TEXTS
        open_page(browser, url)
        browser.find_elements(By.CSS_SELECTOR, "#examples tbody tr")[1].click()
        WebDriverWait(browser, WAIT_SECONDS).until(lambda page: textbox(page, "reference") == CORPUS_TEXTS[1])
        [examples_dir] = re.findall(r"2 example clips from \S+ in (\S+)", log.read_text())
        assert transcribe(browser)["transcript"] == asr(str(Path(examples_dir) / "test_1.mp4"), scale=(4, 2))["text"]

        # One model serves concurrent requests, each at its own scale, as it serves them one by one.
        client = Client(url, verbose=False)
        scales = [(4, 2), (4, 5), (16, 2), (16, 5)] * 2
        with ThreadPoolExecutor(len(scales)) as pool:
            pages = list(pool.map(lambda scale: client.predict(handle_file(str(talk)), str(scale), api_name="/transcribe"), scales))
        assert [page[:2] for page in pages] == [(asr(str(talk), scale=scale)["text"], str(scale)) for scale in scales]

        for clip, expected_message in (
            ("garbage.mp4", "Could not read file 'garbage.mp4'"),
            ("no_face.mp4", "no face found in any of the 10 frames"),
        ):
            open_page(browser, url)
            upload(browser, "video_input", workdir / clip)
            browser.find_element(By.ID, "transcribe").click()
            assert "Traceback" not in error_message(browser, expected_message)
        check_no_internet_requests(requested_urls(browser), url)


def test_report_wer_takes_the_clean_rows_only(tmp_path):
    """The app shows each scale's clean-audio WER: rows of the babble sweep and of the video ablation are left out."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from app import report_wer

    rows = [
        {"audio_rate": 4, "video_rate": 2, "snr_db": None, "wer": 0.08},
        {"audio_rate": 4, "video_rate": 2, "snr_db": -5.0, "wer": 0.30},
        {"audio_rate": 4, "video_rate": 2, "snr_db": None, "wer": 0.09, "blank_video": True},
        {"audio_rate": 16, "video_rate": 5, "snr_db": None, "wer": 0.10},
    ]
    report = tmp_path / "eval_report.json"
    report.write_text(json.dumps(rows))
    assert report_wer(report) == {(4, 2): pytest.approx(8.0), (16, 5): pytest.approx(10.0)}
