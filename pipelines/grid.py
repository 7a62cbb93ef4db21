"""Comparison grids: the "no LoRA" baseline and each LoRA at each weight, one column per seed.

Each row is one `Studio.generate` call with its LoRA set, its seeds run as one batch (a generator per seed), so a
cell is the image the same request gives on its own, up to float rounding in a larger batch (at most one level of
255 here), and other requests may run between rows without mixing in. Each row's prompt gets that row's trigger
words (when asked), the baseline's none, so the baseline is the base. With a style image a last row is the baseline
with it (`has_style_row`): the LoRAs and the picture, the two ways to give a style, side by side.
The grid image carries, for the PNG it is saved as, each cell's A1111 parameters in its own text entry
("parameters r<row> c<col>"), the baseline's in "parameters" (which other tools read) and the layout in
"grid" (JSON). Nothing is written to disk here: the page saves the PNG into Gradio's cache, which it clears.
A stop (`should_stop`) ends the grid at its next denoising step, or between rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from PIL import Image

from pipelines.endpoints import has_style_row, validate_grid
from pipelines.layout import GridCell, RenderedGrid, compose_grid, grid_text_entries
from pipelines.lora.runs import TrainingPoint, in_training_order
from pipelines.lora.triggers import add_trigger_words
from pipelines.request import GridRequest, LoraChoice, LoraWeight
from pipelines.studio import Progress, ShouldStop, steps_after, stop_if_asked

BASELINE_LABEL = "no LoRA"
STYLE_LABEL = "style reference"


def grid_rows(
    loras: Sequence[str],
    weights: Sequence[LoraWeight | float],
    together: Sequence[LoraChoice] = (),
    points: Mapping[str, TrainingPoint] | None = None,
) -> list[tuple[str, tuple[LoraChoice, ...]]]:
    """The baseline first, then every LoRA at every weight (a weight with block weights, `1@out`, is a row of its
    own), then (optionally) one row of several LoRAs at once.

    With the LoRAs' `points`, the checkpoints of one training run come together in training order, each labelled
    with its epoch or step."""
    rows = [(BASELINE_LABEL, ())]
    if points is not None:
        loras = in_training_order(loras, points)
    strengths = [weight if isinstance(weight, LoraWeight) else LoraWeight(weight) for weight in weights]
    for name in loras:
        label = (points[name].shown if points is not None else "") or LoraChoice(name).label
        rows += [(f"{label} @ {strength}", (LoraChoice(name).at(strength),)) for strength in strengths]
    if together:
        rows.append((" + ".join(f"{choice.label} @ {choice.strength}" for choice in together), tuple(together)))
    return rows


def render_grid(
    studio,
    grid: GridRequest,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    on_row: Callable[[Image.Image], None] | None = None,
) -> RenderedGrid:
    """Render `grid` with `studio.generate` (any mode): every cell is `grid.base` with its row's LoRAs and seed.

    `progress` counts the denoising steps of the whole grid; `on_row` sees the grid so far after each row but the
    last (the rows still to come left blank); `should_stop`, polled at every step, ends the grid (StudioError).
    """
    grid, notes = validate_grid(grid, studio.served)
    # Each file is checked before anything is rendered: a bad one is refused at once.
    entries = {name: studio.loras.check(name) for name in dict.fromkeys([*grid.lora_names,
                                                                         *(choice.name for choice in grid.together)])}
    points = {name: entries[name].point for name in grid.lora_names}
    rows = [(label, choices, None) for label, choices in grid_rows(grid.lora_names, grid.weights, grid.together,
                                                                      points)]
    if has_style_row(grid):
        rows.append((_style_label(grid), (), grid.base.style_image))
    row_labels, column_labels = [label for label, *_ in rows], [f"seed {seed}" for seed in grid.seeds]
    steps = grid.base.steps
    started = time.perf_counter()
    cells = []
    for row, (row_label, choices, style_image) in enumerate(rows):
        stop_if_asked(should_stop)
        prompt = _with_triggers(studio, grid.base.prompt, choices) if grid.add_triggers else grid.base.prompt
        request = replace(grid.base, prompt=prompt, loras=choices, num_images=1, style_image=style_image)
        result = studio.generate(
            request, steps_after(progress, row * steps, len(rows) * steps), should_stop,
            seeds=grid.seeds,
        )
        notes += [note for note in result.notes if note not in notes]
        for column, (seed, image, parameters) in enumerate(zip(result.seeds, result.images, result.parameters)):
            cells.append(GridCell(row, column, row_label, f"seed {seed}", image, parameters))
        if on_row is not None and row + 1 < len(rows):
            on_row(compose_grid(cells, row_labels, column_labels))
    image = compose_grid(cells, row_labels, column_labels)
    image.info.update(grid_text_entries(cells))
    return RenderedGrid(image, cells, notes, time.perf_counter() - started)


def _style_label(grid: GridRequest) -> str:
    mode = grid.base.style_mode if not grid.base.style_mode.startswith("{") else "per block"
    return f"{STYLE_LABEL} @ {grid.base.style_scale:g} ({mode})"


def _with_triggers(studio, prompt: str, choices: Sequence[LoraChoice]) -> str:
    words = [word for choice in choices if choice.weight for word in studio.loras.check(choice.name).trigger_words]
    return add_trigger_words(prompt, words)
