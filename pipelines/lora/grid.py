"""Comparison grids: the "no LoRA" baseline and each LoRA at each weight, one column per seed.

Each row is one `Studio.generate` call with its LoRA set (fused into the weights where that pays, see
`Studio.fuses_grid_rows`), its seeds run as one batch (a generator per seed), so a cell is the image the same
request gives on its own, up to float rounding in a larger batch or in the fused weights (at most one level of 255
here), and other requests may run between rows without mixing in. Each row's prompt gets that row's trigger
words (when asked), the baseline's none, so the baseline is the base.
The grid image carries, for the PNG it is saved as, each cell's A1111 parameters in its own text entry
("parameters r<row> c<col>"), the baseline's in "parameters" (which other tools read) and the layout in
"grid" (JSON). Nothing is written to disk here: the page saves the PNG into Gradio's cache, which it clears.
A stop (`should_stop`) ends the grid at its next denoising step, or between rows.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw, ImageFont

from pipelines.errors import StudioError
from pipelines.lora.triggers import add_trigger_words
from pipelines.request import GridRequest, LoraChoice
from pipelines.studio import Progress, ShouldStop
from pipelines.validation import validate_grid

MAX_CELLS = 48
BASELINE_LABEL = "no LoRA"
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
class GridResult:
    image: Image.Image  # with its PNG text entries in `image.info`
    cells: list[GridCell]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def grid_rows(
    loras: Sequence[str], weights: Sequence[float], together: Sequence[LoraChoice] = ()
) -> list[tuple[str, tuple[LoraChoice, ...]]]:
    """The baseline first, then every LoRA at every weight, then (optionally) one row of several LoRAs at once."""
    rows = [(BASELINE_LABEL, ())]
    for name in loras:
        rows += [(f"{LoraChoice(name).label} @ {weight:g}", (LoraChoice(name, weight),)) for weight in weights]
    if together:
        rows.append((" + ".join(f"{choice.label} @ {choice.weight:g}" for choice in together), tuple(together)))
    return rows


def render_grid(
    studio,
    grid: GridRequest,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    on_row: Callable[[Image.Image], None] | None = None,
) -> GridResult:
    """Render `grid` with `studio.generate` (any mode): every cell is `grid.base` with its row's LoRAs and seed.

    `progress` counts the denoising steps of the whole grid; `on_row` sees the grid so far after each row but the
    last (the rows still to come left blank); `should_stop`, polled at every step, ends the grid (StudioError).
    """
    grid, notes = validate_grid(grid, studio.served)
    rows = grid_rows(grid.lora_names, grid.weights, grid.together)
    total = len(rows) * len(grid.seeds)
    if total > MAX_CELLS:
        raise StudioError(
            f"This grid would have {total} images; the limit is {MAX_CELLS}. Use fewer LoRAs, weights or seeds."
        )
    for name in dict.fromkeys([*grid.lora_names, *(choice.name for choice in grid.together)]):
        studio.loras.check(name)  # refuse a bad file before rendering anything
    row_labels, column_labels = [label for label, _ in rows], [f"seed {seed}" for seed in grid.seeds]
    steps = grid.base.steps
    started = time.perf_counter()
    cells = []
    for row, (row_label, choices) in enumerate(rows):
        stop_if_asked(should_stop)
        prompt = _with_triggers(studio, grid.base.prompt, choices) if grid.add_triggers else grid.base.prompt
        request = replace(grid.base, prompt=prompt, loras=choices, num_images=1)
        result = studio.generate(
            request, steps_after(progress, row * steps, len(rows) * steps), should_stop,
            seeds=grid.seeds, fuse_loras=studio.fuses_grid_rows,
        )
        notes += [note for note in result.notes if note not in notes]
        for column, (seed, image, parameters) in enumerate(zip(result.seeds, result.images, result.parameters)):
            cells.append(GridCell(row, column, row_label, f"seed {seed}", image, parameters))
        if on_row is not None and row + 1 < len(rows):
            on_row(compose_grid(cells, row_labels, column_labels))
    image = compose_grid(cells, row_labels, column_labels)
    image.info.update(grid_text_entries(cells))
    return GridResult(image, cells, notes, time.perf_counter() - started)


def steps_after(progress: Progress | None, done: int, total: int) -> Progress | None:
    """`progress` for one run of several: its steps count on from the `done` steps of the runs before it."""
    return None if progress is None else lambda step, _steps: progress(done + step, total)


def stop_if_asked(should_stop: ShouldStop | None) -> None:
    """Between the runs of a grid or sweep: a stop asked for since the last step ends the whole job."""
    if should_stop is not None and should_stop():
        raise StudioError("Stopped before the last image; the rest was not made.")


def _with_triggers(studio, prompt: str, choices: Sequence[LoraChoice]) -> str:
    words = [word for choice in choices if choice.weight for word in studio.loras.check(choice.name).trigger_words]
    return add_trigger_words(prompt, words)


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
