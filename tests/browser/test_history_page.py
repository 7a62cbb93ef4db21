"""The History tab in a real browser: an image made in the Text tab is saved to the output folder and listed, beside a
file an earlier run left there; picking it shows its parameters, and "Send" puts them back into the Text tab.

A studio of its own (`python app.py` with STUDIO_OUTPUT_DIR set), so the folder is this test's and the suite's other
app writes nowhere this test reads.
"""

from __future__ import annotations

import re
from datetime import date

import pytest
from PIL import Image, PngImagePlugin
from playwright.sync_api import expect
from studio_page import (
    GENERATION_TIMEOUT_MS,
    block_labelled,
    error_texts,
    generate,
    open_tab,
    result_images,
    visible_panel,
    wait_for_image_or_error,
)

from embedded.app_process import running_app

PROMPT = "a green circle on a yellow background"
EARLIER = "a blue square on a red background\nSteps: 3, CFG scale: 4, Seed: 7, Size: 64x64"
SESSION = "Made in this session (newest first)"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outputs")
    (folder / "2026-01-02").mkdir()
    chunks = PngImagePlugin.PngInfo()
    chunks.add_text("parameters", EARLIER)
    Image.new("RGB", (64, 64), "blue").save(folder / "2026-01-02" / "00000-text-7.png", pnginfo=chunks)
    return folder


@pytest.fixture(scope="module")
def history_url(chromium, outputs, tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("history-app") / "app.log", STUDIO_OUTPUT_DIR=str(outputs)) as (_, url):
        yield url


def test_an_image_is_saved_listed_and_its_parameters_go_back_to_its_tab(page, history_url, outputs, keep_screenshot):
    text_tab = open_tab(page, history_url, "Text")
    text_tab.get_by_label("Prompt", exact=True).fill(PROMPT)
    generate(text_tab)
    wait_for_image_or_error(page, result_images(text_tab))
    seed = int(text_tab.get_by_label("Seed used", exact=True).input_value())
    saved = outputs / date.today().isoformat() / f"00000-text-{seed}.png"
    expect(text_tab.get_by_text(f"Saved to the output folder: {saved.parent.name}/{saved.name}")).to_be_visible()
    assert Image.open(saved).text["parameters"].startswith(PROMPT)
    text_tab.get_by_label("Prompt", exact=True).fill("something else")

    page.get_by_role("tab", name="History", exact=True).click()
    history = visible_panel(page)
    made = block_labelled(history, SESSION)
    expect(made.locator("img")).to_have_count(1, timeout=GENERATION_TIMEOUT_MS)
    expect(made.get_by_text(re.compile(rf"^Text, seed {seed}, \d\d:\d\d:\d\d$"))).to_be_visible()
    folder = block_labelled(history, "In the output folder (the newest 24)")
    expect(folder.locator("img")).to_have_count(2)  # this run's image, then the earlier run's
    expect(folder.get_by_text("2026-01-02/00000-text-7.png", exact=True)).to_be_visible()
    keep_screenshot("history")

    folder.locator("img").nth(1).click()
    # The PNG info tab's panel: its summary of what "Send" puts where (the raw text box carries no label to find).
    sent = history.get_by_role("grid", name="What will be sent")
    expect(sent).to_contain_text(EARLIER.splitlines()[0])

    made.locator("img").first.click()
    expect(sent).to_contain_text(PROMPT)
    expect(sent).to_contain_text(str(seed))
    history.get_by_role("button", name="Send to Text tab", exact=True).click()
    text_tab = visible_panel(page)
    expect(page.get_by_role("tab", name="Text", exact=True)).to_have_attribute("aria-selected", "true")
    expect(text_tab.get_by_label("Prompt", exact=True)).to_have_value(PROMPT)
    keep_screenshot("history-sent")
    assert not error_texts(page)
