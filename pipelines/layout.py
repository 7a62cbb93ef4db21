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

LABEL_PADDING = 8
# Small native sizes (the embedded model's 64 px) are enlarged, pixel for pixel, so a cell reads on screen.
MIN_CELL_SIDE = 256
FONT_SIZE = 20


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
    """The PNG text entries: the baseline's parameters, the layout, and every cell's parameters."""
    layout = [
        {"row": c.row, "column": c.column, "row_label": c.row_label, "column_label": c.column_label} for c in cells
    ]
    entries = {
        "parameters": cells[0].parameters,
        "grid": json.dumps({"cells": layout, "cell_size": list(cells[0].image.size)}),
    }
    entries.update({f"parameters r{cell.row} c{cell.column}": cell.parameters for cell in cells})
    return entries


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType has only the fixed bitmap font
        return ImageFont.load_default()
