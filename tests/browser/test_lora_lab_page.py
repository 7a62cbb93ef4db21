"""Issue 25's "Done when" in a real browser: a training run's checkpoints uploaded at once render as one grid with
the no-LoRA row, a weight range and a block preset; the inspector shows a LoRA's header, hashes and block chart;
an X/Y plot of prompt S/R against guidance renders, labelled.

The run is made here: the embedded `stripes` LoRA three times, its up factors scaled as if it grew over training,
named and tagged as kohya saves epochs. The screenshots of each panel stay in `tests/browser/screenshots/`.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Locator, Page, expect
from safetensors import safe_open
from safetensors.torch import save_file
from studio_page import GENERATION_TIMEOUT_MS, block_labelled, cropped_sides, error_texts, open_tab

from pipelines.settings import EMBEDDED_LORAS

STRIPES = EMBEDDED_LORAS / "stripes.safetensors"
EPOCH_STRENGTHS = {2: 0.4, 4: 0.7, 6: 1.0}  # the run's style grows with training
UPLOAD_ORDER = (4, 6, 2)  # not the training order: the lab must sort them
WEIGHTS = "0-1 step 0.5, 1@out"
ROW_WEIGHTS = ("0", "0.5", "1", "1@out")
# The embedded model's LoRA blocks, as the inspector charts them (IN/MID/OUT for models other than SD 1.x/2.x, SDXL)
CHART_BLOCKS = ("BASE", "IN", "MID", "OUT")
BLOCK_AROUND = "xpath=ancestor::div[contains(@class, 'block')][1]"  # a component's box, with what it shows


def checkpoint_name(epoch: int) -> str:
    return f"myrun-{epoch:06d}.safetensors"


@pytest.fixture(scope="module")
def run_checkpoints(tmp_path_factory) -> dict[int, Path]:
    """Epoch -> file: stripes with its up factors scaled, and kohya's `ss_epoch` beside the file's own metadata."""
    folder = tmp_path_factory.mktemp("myrun")
    with safe_open(str(STRIPES), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    files = {}
    for epoch, strength in EPOCH_STRENGTHS.items():
        scaled = {key: (value * strength if ".lora_B." in key else value).contiguous()
                  for key, value in tensors.items()}
        files[epoch] = folder / checkpoint_name(epoch)
        save_file(scaled, str(files[epoch]), {**metadata, "ss_epoch": str(epoch)})
    return files


def tensor_bytes_sha256(path: Path) -> str:
    """A1111's LoRA hash (Civitai's AutoV3), written again here: SHA-256 of what follows the safetensors header."""
    data = path.read_bytes()
    (header_length,) = struct.unpack_from("<Q", data)
    return hashlib.sha256(data[8 + header_length:]).hexdigest()


def keep_part(part: Locator, folder: Path, name: str) -> Path:
    """One panel as the person sees it (the whole page is several screens tall), saved as `<name>.png`."""
    path = folder / f"{name}.png"
    part.screenshot(path=path)
    return path


def download(page: Page, image_block: Locator, path: Path) -> dict[str, str]:
    """The image's PNG as the download button saves it; its text chunks."""
    with page.expect_download() as saved:
        image_block.get_by_test_id("download-link").click()
    saved.value.save_as(path)
    with Image.open(path) as png:
        assert png.format == "PNG"
        return dict(png.text)


def rendered(panel: Locator, images: int) -> None:
    """The summary comes with the finished image (the rows before it stream in without parameters)."""
    expect(panel.get_by_text(f"Rendered {images} images")).to_be_visible(timeout=GENERATION_TIMEOUT_MS)


def accordion(page: Page, panel: Locator, title: str) -> Locator:
    """Open the accordion `title` (inside the tab's panel) and return its block."""
    name = re.compile("^" + re.escape(title).replace("/", "."))  # a "/" in a name's pattern breaks Playwright's
    panel.get_by_role("button", name=name).click()
    return panel.locator(".block").filter(has=page.get_by_role("button", name=name)).last


def choose(page: Page, box: Locator, option: str) -> None:
    """Pick `option` in a dropdown's own list: a list closed before stays in the page, and the X and Y axes offer
    the same options."""
    box.click()
    own_list = page.locator(f"#{box.get_attribute('aria-controls')}")
    own_list.get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option)


def test_a_runs_checkpoints_uploaded_at_once_render_in_epoch_order_with_a_range_and_a_block_preset(
    page, studio_url, run_checkpoints, screenshot_folder, keep_screenshot, tmp_path
):
    panel = open_tab(page, studio_url, "LoRA lab")
    upload = block_labelled(panel, "Upload LoRAs (.safetensors; a run's checkpoints at once)")
    with page.expect_file_chooser() as chooser:
        upload.get_by_role("button", name="Click to upload or drop files").click()
    chooser.value.set_files([run_checkpoints[epoch] for epoch in UPLOAD_ORDER])
    # Chosen for the grid in training order, each said to be its run's epoch.
    chosen = panel.get_by_label("LoRAs in the grid", exact=True).locator(BLOCK_AROUND)
    expect(chosen).to_contain_text(re.compile(".*".join(re.escape(checkpoint_name(e)) for e in EPOCH_STRENGTHS)))
    for epoch in EPOCH_STRENGTHS:
        expect(panel.get_by_text(f"checkpoint: myrun (epoch {epoch})").first).to_be_visible()

    panel.get_by_label("Prompt", exact=True).fill("a yellow circle on a blue background")
    panel.get_by_role("textbox", name=re.compile("^Weights")).fill(WEIGHTS)  # the label carries the syntax's help
    panel.get_by_label("Seeds (one column each)", exact=True).fill("1, 2")
    panel.get_by_role("button", name="Render the grid", exact=True).click()
    rows = ["no LoRA"] + [f"myrun (epoch {epoch}) @ {weight}" for epoch in EPOCH_STRENGTHS for weight in ROW_WEIGHTS]
    rendered(panel, 2 * len(rows))
    grid_block = block_labelled(panel, "Grid")
    grid = grid_block.locator("img")
    expect(grid).to_be_visible()
    keep_screenshot("lora-lab-run-grid-page")
    keep_part(grid, screenshot_folder, "lora-lab-run-grid")
    assert not error_texts(page) and not cropped_sides(grid)

    chunks = download(page, grid_block, tmp_path / "grid.png")
    cells = json.loads(chunks["grid"])["cells"]
    assert [cell["row_label"] for cell in cells if cell["column"] == 0] == rows
    hashes = {epoch: tensor_bytes_sha256(path)[:12] for epoch, path in run_checkpoints.items()}
    for row, label in enumerate(rows[1:], start=1):  # each row used its own epoch's file, at its own weight
        epoch, weight = re.fullmatch(r"myrun \(epoch (\d+)\) @ (.+)", label).groups()
        parameters = chunks[f"parameters r{row} c1"]
        assert f"{checkpoint_name(int(epoch))}: {hashes[int(epoch)]}" in parameters
        assert re.search(rf"<lora:{re.escape(checkpoint_name(int(epoch)))}:{weight.replace('@', ':lbw=')}>", parameters)
    assert "<lora:" not in chunks["parameters r0 c0"]
    assert all(f"{checkpoint_name(epoch)}: {digits}" in chunks["parameters"] for epoch, digits in hashes.items())


def test_the_inspector_shows_the_header_the_hashes_and_the_block_chart(page, studio_url, screenshot_folder):
    panel = open_tab(page, studio_url, "LoRA lab")
    inspector = accordion(page, panel, "Inspect a LoRA")
    choose(page, inspector.get_by_label("LoRA to inspect", exact=True), "stripes.safetensors")

    a1111, whole = tensor_bytes_sha256(STRIPES)[:12], hashlib.sha256(STRIPES.read_bytes()).hexdigest()
    hashes = inspector.get_by_text("Hashes:").locator("xpath=..")
    expect(hashes).to_contain_text(f"A1111 {a1111}")
    expect(hashes).to_contain_text(f"AutoV2 {whole[:10]}")
    expect(inspector.get_by_text("Trigger words:").locator("xpath=..")).to_contain_text("zkstripes")
    header = inspector.get_by_role("grid", name="Header (__metadata__)")
    with safe_open(str(STRIPES), framework="pt") as handle:
        for field, value in handle.metadata().items():  # every field, as the file has it
            expect(header.get_by_role("row").filter(has_text=field)).to_contain_text(value)
    bars = inspector.get_by_text("Change per block", exact=True).locator("xpath=..").locator(
        "[aria-roledescription=bar]"
    )
    expect(bars).to_have_count(len(CHART_BLOCKS))
    labels = [bar.get_attribute("aria-label") for bar in bars.all()]
    assert [re.match(r"block: (\w+);", label)[1] for label in labels] == list(CHART_BLOCKS)
    assert sum(float(label.rpartition(": ")[2]) for label in labels) > 0  # stripes changes the UNet
    keep_part(inspector, screenshot_folder, "lora-lab-inspector")
    assert not error_texts(page)


def test_an_xy_plot_of_prompt_sr_against_guidance_renders_labelled(page, studio_url, screenshot_folder, tmp_path):
    panel = open_tab(page, studio_url, "LoRA lab")
    plot = accordion(page, panel, "X/Y plot")
    choose(page, plot.get_by_label("X axis", exact=True), "prompt S/R")
    plot.get_by_label("X values", exact=True).fill("red, green, yellow")
    choose(page, plot.get_by_label("Y axis", exact=True), "guidance")
    plot.get_by_label("Y values", exact=True).fill("1, 2, 4")
    plot.get_by_label("Prompt", exact=True).fill("a red circle on a blue background")
    plot.get_by_role("button", name="Render the plot", exact=True).click()
    rendered(plot, 9)
    image_block = block_labelled(plot, "X/Y plot")
    image = image_block.locator("img")
    expect(image).to_be_visible()
    keep_part(image, screenshot_folder, "lora-lab-xy-plot")
    assert not error_texts(page) and not cropped_sides(image)

    cells = json.loads(download(page, image_block, tmp_path / "xy.png")["grid"])["cells"]
    columns = [cell["column_label"] for cell in cells if cell["row"] == 0]
    rows = [cell["row_label"] for cell in cells if cell["column"] == 0]
    assert [re.search(r"red|green|yellow", label)[0] for label in columns] == ["red", "green", "yellow"]
    assert [re.search(r"[\d.]+$", label)[0] for label in rows] == ["1", "2", "4"] and "guidance" in rows[0]
