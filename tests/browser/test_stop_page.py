"""Stop in the LoRA lab: the grid shows its rows as they come, and a Stop ends it with no error and no grid."""

from __future__ import annotations

import re

from playwright.sync_api import expect
from studio_page import block_labelled, error_texts, info_toasts, open_tab, text_field, wait_for_image_or_error

# 3 rows of 4 seeds at 100 steps: about 4 s a row on the embedded model here.
LONG_GRID = {"Weights": "0.5, 1", "Seeds (one column each)": "1, 2, 3, 4", "number input for Steps": "100"}
SHORT_GRID = {"Weights": "1", "Seeds (one column each)": "1", "number input for Steps": "2"}


def test_a_grid_shows_its_rows_as_they_come_and_stops_without_an_error(page, studio_url, keep_screenshot):
    panel = open_tab(page, studio_url, "LoRA lab")
    panel.get_by_label("LoRAs in the grid", exact=True).click()
    page.get_by_role("option", name="stripes.safetensors", exact=True).click()
    page.keyboard.press("Escape")
    panel.get_by_label("Prompt", exact=True).fill("a yellow circle on a blue background")
    render = panel.get_by_role("button", name="Render the grid", exact=True)
    grid = block_labelled(panel, "Grid").locator("img")
    progress = panel.get_by_text(re.compile(r"Denoising step \d+/300")).first

    fill(panel, LONG_GRID)
    render.click()
    wait_for_image_or_error(page, grid)
    expect(progress).to_be_visible()  # the first row shown, the run still going
    keep_screenshot("grid-first-row")
    panel.get_by_role("button", name="Stop", exact=True).click()
    expect(info_toasts(page).filter(has_text=re.compile("stop", re.IGNORECASE))).to_be_visible()
    expect(progress).to_be_hidden()
    expect(grid).to_have_count(0)  # the rows shown so far go: a stopped grid makes no image
    page.wait_for_timeout(1000)
    assert not error_texts(page)

    fill(panel, SHORT_GRID)
    render.click()  # the stopped grid left nothing running in its way
    wait_for_image_or_error(page, grid)
    assert not error_texts(page)


def fill(panel, values: dict[str, str]) -> None:
    for label, value in values.items():
        box = text_field(panel, label) if label == "Weights" else panel.get_by_label(label, exact=True)
        box.fill(value)
        box.blur()
