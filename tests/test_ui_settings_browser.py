"""The derived settings form in a real browser (Playwright + Debian's headless Chromium, skipped when it
is missing): the policy dropdown lists every registered policy, only the options of the policies in use
are shown, and a bad value gives one sentence while the memory and the form keep what is in use.
Screenshots land in tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from demo_server import start_demo, stop_demo

from memstream.policies import policy_names

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("MEMSTREAM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")


@pytest.fixture(scope="module")
def page(engine):
    sync_api = pytest.importorskip("playwright.sync_api")
    demo = start_demo(engine, banner="settings test", max_new_tokens=4)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pg = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            pg.goto(demo.url, wait_until="load")
            pg.wait_for_selector("#status-box[data-state=done]", timeout=60000)  # the sample is preloaded
            pg.click("#settings .label-wrap")
            pg.wait_for_selector("#opt-memstream-topk", state="visible", timeout=10000)
            pg.errors = errors
            yield pg
            browser.close()
    finally:
        stop_demo(demo)


def options(pg, dropdown: str):
    """The open list of a dropdown (gradio keeps the lists of dropdowns opened before in the page)."""
    return pg.locator(f"#{dropdown} [role=option]")


def pick(pg, dropdown: str, value: str) -> None:
    pg.click(f"#{dropdown} input")
    options(pg, dropdown).and_(pg.locator(f"[aria-label='{value}']")).click()


def test_the_dropdown_lists_every_policy_and_shows_the_options_of_those_in_use(page):
    assert "blocks each layer retrieves for a question" in page.inner_text("#opt-memstream-topk")
    page.click("#policy input")
    listed = options(page, "policy").evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
    assert listed == list(policy_names())  # the server has an expert: all of them
    options(page, "policy").and_(page.locator("[aria-label='sink-window']")).click()
    page.wait_for_selector("#opt-sink-window-n_local", state="visible", timeout=10000)
    assert page.is_hidden("#opt-memstream-topk") and page.input_value("#opt-sink-window-n_local input") == "4096"
    assert "visual tokens the window keeps" in page.inner_text("#opt-sink-window-n_local")
    pick(page, "compare", "rekv")  # a second policy shows its options too
    page.wait_for_selector("#opt-rekv-topk", state="visible", timeout=10000)
    assert page.is_visible("#opt-sink-window-n_local")
    pick(page, "compare", "off")
    pick(page, "policy", "memstream")
    page.wait_for_selector("#opt-memstream-topk", state="visible", timeout=10000)
    assert page.is_hidden("#opt-rekv-topk") and page.is_hidden("#opt-sink-window-n_local")
    assert not page.errors, page.errors


def test_a_bad_value_gives_one_sentence_and_the_form_shows_what_the_memory_uses(page, capfd):
    page.fill("#opt-memstream-n_local input", "-5")
    page.fill("#opt-memstream-topk input", "2")
    page.click("#apply-btn")
    page.wait_for_selector("#notice-box[data-level=error]", timeout=20000)
    assert page.inner_text("#notice") == ("Error: Settings not applied (the memory is unchanged): n_local must be a "
                                          "positive number of tokens or None, got -5.")
    page.wait_for_function("document.querySelector('#opt-memstream-n_local input').value === '15000'", timeout=10000)
    assert page.input_value("#opt-memstream-topk input") == "3"  # nothing of the refused form was kept
    assert page.locator(".toast-wrap > *").count() == 0  # no gradio toast
    page.screenshot(path=str(ARTIFACTS / "ui_settings_refused.png"), full_page=True)
    status = page.locator("#status-box")
    assert status.get_attribute("data-state") == "done" and status.get_attribute("data-blocks") == "8"
    assert "Traceback" not in capfd.readouterr().err  # nothing in the server log either
    # a question-time option applies to the memory as it is
    page.fill("#opt-memstream-topk input", "2")
    page.click("#apply-btn")
    page.wait_for_function("document.querySelector('#notice').innerText.includes('nothing re-ingested')",
                           timeout=20000)
    assert "topk 3 → 2" in page.inner_text("#notice") and page.input_value("#opt-memstream-topk input") == "2"
    assert not page.errors, page.errors
