"""The demo in a real browser: Playwright driving Debian's headless Chromium (skipped when it is
missing; `.ci/run` installs it). One server and one browser page for the whole module.

Screenshots land in tests/artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from demo_server import start_demo, stop_demo

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("MEMSTREAM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]

# slow: starting Chromium and the page, then waiting on it, takes seconds per test
pytestmark = [pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}"),
              pytest.mark.slow]


# every test runs twice: the model work in the server's process, and in a worker process with pickled
# arguments (`app.py --worker-process`, as on ZeroGPU)
@pytest.fixture(scope="module", params=["in-process", "worker-process"])
def server(engine, tiny_cache, request):
    demo = start_demo(engine, banner="**Answers come from a tiny random-weight model** (test run).", max_new_tokens=12,
                      worker_cache=str(tiny_cache) if request.param == "worker-process" else None)
    yield demo
    stop_demo(demo)


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"])
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.goto(server.url, wait_until="load")  # never networkidle: the status timer polls forever
        pg.errors = errors
        yield pg
        browser.close()


def blocks(pg) -> int:
    return int(pg.locator("#status-box").get_attribute("data-blocks") or 0)


BOT = "#chat [data-testid=bot]"


def ask(pg, question: str, n_answers: int) -> str:
    """Ask and wait until the chat holds `n_answers` answers, the last one stamped; returns its text."""
    pg.fill("#question textarea", question)
    pg.click("#ask-btn")
    pg.wait_for_function(
        f"(() => {{ const m = document.querySelectorAll('{BOT}'); "
        f"return m.length >= {n_answers} && m[m.length - 1].innerText.includes('TTFT'); }})()", timeout=30000)
    return pg.locator(BOT).last.inner_text()


def upload(pg, path) -> None:
    clear = pg.locator("#player button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    pg.set_input_files("#player input[type=file]", str(path))


def test_upload_the_sample_ask_and_see_an_answer_and_a_heatmap(page, tmp_path):
    page.wait_for_selector("#status-box[data-state=done]", timeout=60000)  # the sample is preloaded
    assert blocks(page) == 8
    assert "random-weight" in page.inner_text("#banner")
    clip = tmp_path / "my clip.mp4"
    clip.write_bytes((ROOT / "assets" / "sample.mp4").read_bytes())
    upload(page, clip)
    page.wait_for_function("document.querySelector('#status-box').innerText.includes('my clip.mp4')", timeout=20000)
    page.wait_for_selector("#status-box[data-state=done]", timeout=60000)
    assert blocks(page) == 8 and "ingested 8.0 s of 8.0 s" in page.inner_text("#status")
    page.evaluate("document.querySelector('#player video').currentTime = 3")  # the player's position is shown too
    page.wait_for_function("document.querySelector('#player-pos')?.textContent.includes('player at 3.0 s')",
                           timeout=10000)
    answer = ask(page, "What is moving?", 1)
    assert "asked at 8.0 s" in answer and "policy memstream" in answer
    page.wait_for_selector("#heatmap .js-plotly-plot", timeout=30000)
    assert "temporal bias" in page.inner_text("#heatmap")
    page.wait_for_selector("#thumbs .thumb-strip img", timeout=10000)
    time.sleep(0.5)  # let plotly finish drawing
    page.screenshot(path=str(ARTIFACTS / "ui_answer.png"), full_page=True)


def test_non_video_upload_shows_a_message_and_the_page_keeps_working(page, tmp_path):
    bad = tmp_path / "holiday.mp4"
    bad.write_text("this is not a video\n" * 40)
    upload(page, bad)
    page.wait_for_selector("#notice-box[data-level=error]", timeout=20000)
    assert "holiday.mp4" in page.inner_text("#notice") and "cannot be used" in page.inner_text("#notice")
    page.screenshot(path=str(ARTIFACTS / "ui_bad_upload.png"), full_page=True)
    assert blocks(page) == 8 and "my clip.mp4" in page.inner_text("#status")  # the memory stays
    assert "policy memstream" in ask(page, "And now?", 2)
    assert page.locator(BOT).count() == 2


def test_fake_webcam_streams_frames_and_blocks_grow(page):
    page.get_by_role("tab", name="Webcam").click()
    page.get_by_text("Click to Access Webcam").click()
    page.locator("#webcam button[aria-label='capture photo']").click()
    page.wait_for_selector("#status-box[data-state=live]", timeout=20000)
    first = blocks(page)
    page.wait_for_function(f"+document.querySelector('#status-box').dataset.blocks >= {first + 3}", timeout=30000)
    assert "webcam" in page.inner_text("#status")
    page.screenshot(path=str(ARTIFACTS / "ui_webcam.png"), full_page=True)
    answer = ask(page, "What do you see?", 3)
    assert "policy memstream" in answer and "asked at 8.0 s" not in answer  # it saw the webcam, not the sample
    assert not page.errors, page.errors


def test_answers_stay_inspectable_and_closing_the_tab_frees_the_session(page, server):
    page.wait_for_function("document.querySelector('#answer-pick input').value.startsWith('#3')", timeout=10000)
    page.locator(BOT).first.click()  # an older answer brings back its own heatmap
    page.wait_for_function("document.querySelector('#answer-pick input').value.startsWith('#1')", timeout=10000)
    page.wait_for_function("document.querySelector('#heatmap .gtitle')?.textContent.includes('#1')", timeout=10000)
    assert len(server.sessions) == 1
    page.close(run_before_unload=True)
    # gradio notices a closed tab through its heartbeat (about every 15 s): wait a few beats, not one
    deadline = time.monotonic() + 45
    while len(server.sessions) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(server.sessions) == 0
