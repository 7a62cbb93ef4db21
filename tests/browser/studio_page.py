"""What a person does on the studio's page, and what they see, in Playwright terms.

Gradio 6 marks its parts with roles and test ids: a tab's content is the one visible `tabpanel`, a component's
label is `[data-testid=block-label]` inside its `.block`, an example row's cells are `dataset-cell-<row>-<col>`,
and a message is a `toast-body` (class `error` for an error).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from playwright.sync_api import Locator, Page, expect

# A generation on the embedded model takes a second or two; the first one also warms the model up.
GENERATION_TIMEOUT_MS = 120_000
FILL_TIMEOUT_MS = 15_000
# getBoundingClientRect includes a clipping parent's 1 px border; anything beyond is a real crop.
CLIP_TOLERANCE_PX = 1.5


# The image inputs an example may fill, by the label of their column
IMAGE_FIELDS = {"Control image", "Start image", "Image to repaint", "Mask (white = repaint)"}


@dataclass(frozen=True)
class Example:
    """One row of a tab's examples table, as shown (long prompts end in an ellipsis)."""

    index: int
    cells: dict[str, str]

    @property
    def prompt_start(self) -> str:
        return self.cells["Prompt"].removesuffix("...").strip()

    @property
    def label(self) -> str:
        preprocessor = self.cells.get("Preprocessor")
        return f"row {self.index}" + (f" ({preprocessor})" if preprocessor else "")


def open_tab(page: Page, url: str, title: str) -> Locator:
    """Load the page afresh (no toasts or results from before) and show the tab named `title`."""
    page.goto(url)
    page.get_by_role("tab", name=title, exact=True).click()
    return visible_panel(page)


def visible_panel(page: Page) -> Locator:
    panel = page.get_by_role("tabpanel").filter(visible=True)
    expect(panel).to_have_count(1)
    return panel


def text_field(panel: Locator, label: str) -> Locator:
    """The text box whose label starts with `label`: a field's help text is part of its accessible name."""
    return panel.get_by_role("textbox", name=re.compile(rf"^{re.escape(label)}\b"))


def block_labelled(panel: Locator, label: str) -> Locator:
    """The `.block` of the component whose label reads exactly `label`."""
    exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
    return panel.get_by_test_id("block-label").filter(has_text=exact).locator("xpath=..")


def example_rows(panel: Locator) -> Locator:
    return panel.locator('tr:has([data-testid^="dataset-cell-"])')


def shown_examples(panel: Locator) -> list[Example]:
    headers = [text.strip() for text in panel.locator("table thead th").all_inner_texts()]
    rows = example_rows(panel)
    return [
        Example(index, dict(zip(headers, (text.strip() for text in row.get_by_role("gridcell").all_inner_texts()))))
        for index, row in enumerate(rows.all())
    ]


def use_example(panel: Locator, example: Example) -> None:
    """Click the row, then wait until its values are in the tab's fields (Gradio fills them asynchronously)."""
    example_rows(panel).nth(example.index).get_by_role("gridcell").first.click()
    prompt = panel.get_by_label("Prompt", exact=True)
    expect(prompt).to_have_value(re.compile("^" + re.escape(example.prompt_start)), timeout=FILL_TIMEOUT_MS)
    expect(text_field(panel, "LoRAs")).to_have_value(example.cells.get("LoRAs", ""))
    if "Preprocessor" in example.cells:
        expect(panel.get_by_label("Preprocessor", exact=True)).to_have_value(example.cells["Preprocessor"])
    for image in IMAGE_FIELDS.intersection(example.cells):
        expect(block_labelled(panel, image).locator("img")).to_be_visible(timeout=FILL_TIMEOUT_MS)


def generate(panel: Locator) -> None:
    panel.get_by_role("button", name="Generate", exact=True).click()


def result_images(panel: Locator) -> Locator:
    return block_labelled(panel, "Images").locator("img")


def error_toasts(page: Page) -> Locator:
    return page.get_by_test_id("toast-body").and_(page.locator(".error"))


def error_texts(page: Page) -> list[str]:
    return [text.strip() for text in error_toasts(page).get_by_test_id("toast-text").all_inner_texts()]


def info_toasts(page: Page) -> Locator:
    return page.get_by_test_id("toast-body").and_(page.locator(".info"))


def wait_for_image_or_error(page: Page, images: Locator) -> None:
    """Until an image has arrived (and loaded) or an error is shown, whichever comes first."""
    images.first.or_(error_toasts(page).first).first.wait_for(timeout=GENERATION_TIMEOUT_MS)
    if images.count():
        wait_until_loaded(images.first)


def wait_until_loaded(image: Locator) -> None:
    image.scroll_into_view_if_needed()
    image.page.wait_for_function(
        "image => image.complete && image.naturalWidth > 0", arg=image.element_handle(), timeout=FILL_TIMEOUT_MS
    )


# The drawn picture's rectangle (object-fit decides it within the <img> box) against the intersection of the
# boxes of every ancestor up to the component's `.block` that clips its content (overflow other than visible).
_CROP_SCRIPT = """
(image, tolerance) => {
  const box = image.getBoundingClientRect();
  const fit = getComputedStyle(image).objectFit;
  const [w, h] = [image.naturalWidth, image.naturalHeight];
  const scales = {
    contain: Math.min(box.width / w, box.height / h),
    "scale-down": Math.min(1, box.width / w, box.height / h),
    cover: Math.max(box.width / w, box.height / h),
    none: 1,
  };
  const [sx, sy] = fit in scales ? [scales[fit], scales[fit]] : [box.width / w, box.height / h];
  const drawn = {
    left: box.left + (box.width - w * sx) / 2, top: box.top + (box.height - h * sy) / 2,
    right: box.left + (box.width + w * sx) / 2, bottom: box.top + (box.height + h * sy) / 2,
  };
  const clip = {left: box.left, top: box.top, right: box.right, bottom: box.bottom};
  for (let node = image.parentElement; node; node = node.parentElement) {
    if (getComputedStyle(node).overflow !== "visible") {
      const r = node.getBoundingClientRect();
      clip.left = Math.max(clip.left, r.left); clip.top = Math.max(clip.top, r.top);
      clip.right = Math.min(clip.right, r.right); clip.bottom = Math.min(clip.bottom, r.bottom);
    }
    if (node.classList.contains("block")) break;
  }
  const hidden = {
    left: clip.left - drawn.left, top: clip.top - drawn.top,
    right: drawn.right - clip.right, bottom: drawn.bottom - clip.bottom,
  };
  const cut = Object.entries(hidden)
    .filter(([, px]) => px > tolerance)
    .map(([side, px]) => `${side} ${px.toFixed(0)} px`);
  const size = `${(drawn.right - drawn.left).toFixed(0)}x${(drawn.bottom - drawn.top).toFixed(0)} px`;
  return {cut, size};
}
"""


def cropped_sides(image: Locator) -> list[str]:
    """How much of the drawn picture its panel hides, side by side (empty when it is fully visible)."""
    found = image.evaluate(_CROP_SCRIPT, CLIP_TOLERANCE_PX)
    return [f"{side} of a {found['size']} picture" for side in found["cut"]]
