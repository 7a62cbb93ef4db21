"""X/Y plots: one request with a setting changed along the columns and another down the rows (the axes and what
each value may be: `pipelines/endpoints.py` AXES).

Every cell is one `Studio.generate` image, so it is the image the same request gives on its own; cells that differ
only in their seed run as one batch (a generator per seed), as the LoRA grid's rows do. The plot is drawn with
the shared layout, its PNG carrying every cell's parameters. A stop ends it at its next denoising step, or between
runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from PIL import Image

from pipelines.endpoints import AXES, validate_request, validate_xy, xy_cells
from pipelines.layout import GridCell, RenderedGrid, compose_grid, grid_text_entries
from pipelines.request import GenerationRequest, XYRequest
from pipelines.studio import Progress, ShouldStop, steps_after, stop_if_asked


def render_xy(
    studio,
    plot: XYRequest,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    on_row: Callable[[Image.Image], None] | None = None,
) -> RenderedGrid:
    """Render `plot`; `on_row` sees the plot so far after each row but the last."""
    plot, notes = validate_xy(plot, studio.served)
    rows = xy_cells(plot)
    for request in (cell for row in rows for cell in row):  # every cell checked before the first is made
        validate_request(request, studio.served)
        for choice in request.loras:
            studio.loras.check(choice.name)
    row_labels = [AXES[plot.y_axis].label(value) for value in plot.y_values]
    column_labels = [AXES[plot.x_axis].label(value) for value in plot.x_values]
    total = sum(cell.steps for row in rows for cell in row)
    done, cells, started = 0, [], time.perf_counter()
    for row, requests in enumerate(rows):
        for columns, request, seeds in _runs(requests):
            stop_if_asked(should_stop)
            result = studio.generate(request, steps_after(progress, done, total), should_stop, seeds=seeds)
            done += request.steps * len(columns)
            notes += [note for note in result.notes if note not in notes]
            for column, image, parameters in zip(columns, result.images, result.parameters, strict=True):
                cells.append(GridCell(row, column, row_labels[row], column_labels[column], image, parameters))
        if on_row is not None and row + 1 < len(rows):
            on_row(compose_grid(sorted(cells, key=_place), row_labels, column_labels))
    cells.sort(key=_place)
    image = compose_grid(cells, row_labels, column_labels)
    image.info.update(grid_text_entries(cells))
    return RenderedGrid(image, cells, notes, time.perf_counter() - started)


def _runs(requests: list[GenerationRequest]) -> list[tuple[list[int], GenerationRequest, list[int]]]:
    """A row's cells as runs: (columns, request, seeds), the cells that differ only in their seed as one run."""
    runs: dict[GenerationRequest, tuple[list[int], list[int]]] = {}
    for column, request in enumerate(requests):
        columns, seeds = runs.setdefault(replace(request, seed=0), ([], []))
        columns.append(column)
        seeds.append(request.seed)
    return [(columns, replace(request, seed=seeds[0]), seeds) for request, (columns, seeds) in runs.items()]


def _place(cell: GridCell) -> tuple[int, int]:
    return cell.row, cell.column
