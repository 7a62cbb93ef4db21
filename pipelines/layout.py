"""Labelled picture grids: cells in rows and columns, each row and column named, figures under the columns, and
every cell's parameters in the PNG's text entries. The LoRA lab's grid, the Explore tab's sweeps and its timeline
frames are drawn with it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

from pipelines.a1111 import LORA_HASHES, STEPS, VERSION, lora_hashes_text, read_lora_hashes
from pipelines.metadata import format_parameters, parse_settings_line

LABEL_PADDING = 8
# Small native sizes (the embedded model's 64 px) are enlarged, pixel for pixel, so a cell reads on screen.
MIN_CELL_SIDE = 256
FONT_SIZE = 20
_HASHES = LORA_HASHES.key


@dataclass(frozen=True)
class GridCell:
    row: int
    column: int
    row_label: str
    column_label: str
    image: Image.Image
    parameters: str


@dataclass
class RenderedGrid:
    """A grid made of studio runs (the LoRA lab's grid, its X/Y plot)."""

    image: Image.Image  # with its PNG text entries in `image.info`
    cells: list[GridCell]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def compose_grid(
    cells: list[GridCell], row_labels: list[str], column_labels: list[str], footers: Sequence[str] = ()
) -> Image.Image:
    """The labelled grid; `footers` are text under each column (the Explore tab's measured figures), if any."""
    scale = math.ceil(MIN_CELL_SIDE / min(cells[0].image.size))
    width, height = (side * scale for side in cells[0].image.size)
    font = _font(FONT_SIZE)
    font_size = getattr(font, "size", 11)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(max(measure.textlength(label, font=font) for label in row_labels)) + 2 * LABEL_PADDING
    top = font_size + 2 * LABEL_PADDING
    footer_lines = [line for footer in footers for line in footer.splitlines()]
    widest = max(measure.textlength(text, font=font) for text in [*column_labels, *footer_lines])
    column_width = max(width, int(widest) + LABEL_PADDING)
    bottom = (max(footer.count("\n") + 1 for footer in footers) * (font_size + LABEL_PADDING)) if footers else 0
    body = top + height * len(row_labels)
    grid = Image.new("RGB", (left + column_width * len(column_labels), body + bottom), "white")
    draw = ImageDraw.Draw(grid)
    for column, label in enumerate(column_labels):
        draw.text((left + column * column_width + LABEL_PADDING // 2, LABEL_PADDING), label, fill="black", font=font)
    for column, footer in enumerate(footers):
        where = (left + column * column_width + LABEL_PADDING // 2, body + LABEL_PADDING // 2)
        draw.multiline_text(where, footer, fill="black", font=font, spacing=LABEL_PADDING)
    for row, label in enumerate(row_labels):
        draw.text((LABEL_PADDING, top + row * height + (height - font_size) // 2), label, fill="black", font=font)
    for cell in cells:
        enlarged = cell.image.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
        grid.paste(enlarged, (left + cell.column * column_width, top + cell.row * height))
    return grid


def grid_text_entries(cells: list[GridCell]) -> dict[str, str]:
    """The PNG text entries: the baseline's parameters naming every cell's LoRA files, the layout, and every cell's
    parameters."""
    layout = [
        {"row": c.row, "column": c.column, "row_label": c.row_label, "column_label": c.column_label} for c in cells
    ]
    entries = {
        "parameters": naming_every_lora(cells[0].parameters, [cell.parameters for cell in cells]),
        "grid": json.dumps({"cells": layout, "cell_size": list(cells[0].image.size)}),
    }
    entries.update({f"parameters r{cell.row} c{cell.column}": cell.parameters for cell in cells})
    return entries


def naming_every_lora(parameters: str, every: Sequence[str]) -> str:
    """`parameters` (the first cell's) with a `Lora hashes` that names the LoRA files of all of `every` cell.

    Other tools and PNG info read a grid's "parameters" only, and its first cell is the baseline, made without
    LoRAs: without this a shared grid would not say which files made it. No LoRA tag is added, so the settings
    sent on from it stay the baseline's (PNG info says the LoRAs it names have no weight to send)."""
    pairs = dict.fromkeys(pair for text in every for pair in read_lora_hashes(_settings_of(text).get(_HASHES, "")))
    head, _, line = parameters.rpartition("\n")
    settings = _settings_of(parameters)
    if not pairs or not settings or settings.get(_HASHES) == lora_hashes_text(pairs):
        return parameters
    settings.pop(_HASHES, None)
    version = {VERSION.key: settings.pop(VERSION.key)} if VERSION.key in settings else {}  # A1111 writes it last
    line = format_parameters("", "", {**settings, _HASHES: lora_hashes_text(pairs), **version}).lstrip("\n")
    return f"{head}\n{line}" if head else line


def _settings_of(parameters: str) -> dict[str, str]:
    """The settings of an A1111 parameters text as the studio writes it (its last line); {} if it has none."""
    settings = parse_settings_line(parameters.rpartition("\n")[2])
    return settings if STEPS.key in settings else {}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType has only the fixed bitmap font
        return ImageFont.load_default()
