"""Sweeps: one prompt and seed across guidance scales, step counts, or DDPM against DDIM at several step counts.

Every cell is one `Studio.generate` call (text mode), so it is the image the Text tab makes with those settings.
Under every column goes a figure that means something on the model served: for guidance, saturation (the share of
pixel values clipped at 0 or 255) on any model and, on the embedded model (whose world has named colours), how far
the object's colour is from the one the prompt names; for step counts, the distance to the 50-step image of the
same sampler. A stop (`should_stop`) ends the sweep at its next denoising step, or between images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from pipelines.endpoints import REFERENCE_STEPS, SAMPLERS, validate_sweep
from pipelines.explore import figures
from pipelines.layout import GridCell, compose_grid, grid_text_entries
from pipelines.request import GenerationRequest, SweepRequest
from pipelines.studio import Progress, ShouldStop, steps_after, stop_if_asked

# Families whose pictures the colour figure can read: the embedded model's world of named colours.
COLOUR_FAMILIES = ("embedded",)
COLOUR_ERROR = "colour error"  # RGB distance from the object's colour to the one the prompt names
SATURATION = "saturated"  # share of pixel values clipped at 0 or 255
DISTANCE = f"distance to {REFERENCE_STEPS} steps"  # mean absolute pixel difference, 0..255
SHOWN = {COLOUR_ERROR: "{:.1f}", SATURATION: "{:.1%}", DISTANCE: "{:.1f}"}


@dataclass
class SweepResult:
    image: Image.Image  # the labelled grid, with every cell's parameters in its PNG text entries
    cells: list[GridCell]
    figures: list[dict]  # one per cell: row, column and each measured figure
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Plan:
    """Rows of requests (one per column each) and their labels."""

    row_labels: list[str]
    column_labels: list[str]
    rows: list[list[GenerationRequest]]


def run_sweep(
    studio, sweep: SweepRequest, progress: Progress | None = None, should_stop: ShouldStop | None = None
) -> SweepResult:
    """Render the sweep's grid; a request that appears twice (a 50-step cell and its reference) is made once.

    `progress` counts the denoising steps of the whole sweep; `should_stop`, polled at every step, ends it
    (StudioError)."""
    sweep, notes = validate_sweep(sweep, studio.served)
    plan = _plan(sweep)
    references = _reference_requests(studio, sweep, plan)
    wanted = list(dict.fromkeys([*references.values(), *(request for row in plan.rows for request in row)]))
    total_steps = sum(request.steps for request in wanted)
    made: dict[GenerationRequest, tuple[Image.Image, str]] = {}
    done_steps = 0
    for request in wanted:
        stop_if_asked(should_stop)
        result = studio.generate(request, steps_after(progress, done_steps, total_steps), should_stop)
        done_steps += request.steps
        notes += [note for note in result.notes if note not in notes]
        made[request] = (result.images[0], result.parameters[0])
    reference_pixels = {name: np.asarray(made[request][0]) for name, request in references.items()}
    cells, measured = [], []
    for row, requests in enumerate(plan.rows):
        for column, request in enumerate(requests):
            image, parameters = made[request]
            labels = plan.row_labels[row], plan.column_labels[column]
            cells.append(GridCell(row, column, *labels, image, parameters))
            measured.append({"row": labels[0], "column": labels[1],
                             **_figures(studio, sweep, request, image, reference_pixels)})
    grid = compose_grid(cells, plan.row_labels, plan.column_labels, _footers(plan, measured))
    grid.info.update(grid_text_entries(cells))
    return SweepResult(grid, cells, measured, notes + _findings(sweep, measured))


def _plan(sweep: SweepRequest) -> _Plan:
    base = sweep.base
    if sweep.sweep == "guidance scale":
        return _Plan([f"seed {base.seed}"], [f"guidance {value:g}" for value in sweep.guidance_scales],
                     [[replace(base, guidance_scale=value) for value in sweep.guidance_scales]])
    columns = [f"{steps} steps" for steps in sweep.step_counts]
    samplers = SAMPLERS if sweep.sweep == "samplers" else (base.scheduler,)
    rows = [[replace(base, scheduler=name, steps=steps) for steps in sweep.step_counts] for name in samplers]
    return _Plan(list(samplers), columns, rows)


def _reference_requests(studio, sweep: SweepRequest, plan: _Plan) -> dict[str, GenerationRequest]:
    """For the step sweeps, each sampler's request at REFERENCE_STEPS (or the most steps the studio allows)."""
    if sweep.sweep == "guidance scale":
        return {}
    steps = min(REFERENCE_STEPS, studio.served.max_steps)
    return {requests[0].scheduler: replace(requests[0], steps=steps) for requests in plan.rows}


def _figures(studio, sweep: SweepRequest, request: GenerationRequest, image: Image.Image,
             references: dict[str, np.ndarray]) -> dict[str, float]:
    pixels = np.asarray(image.convert("RGB"))
    if sweep.sweep != "guidance scale":
        return {DISTANCE: figures.pixel_distance(pixels, references[request.scheduler])}
    measured = {SATURATION: figures.saturated_share(pixels)}
    colour = figures.named_object_colour(request.prompt)
    if studio.model.family in COLOUR_FAMILIES and colour:
        measured[COLOUR_ERROR] = figures.colour_error(pixels, colour)
    return measured


def _footers(plan: _Plan, measured: list[dict]) -> list[str]:
    """Under each column, each row's figures, one per line."""
    columns = len(plan.column_labels)
    lines: list[list[str]] = [[] for _ in range(columns)]
    for index, figures_of_cell in enumerate(measured):
        prefix = f"{figures_of_cell['row']}: " if len(plan.rows) > 1 else ""
        shown = [f"{name} {SHOWN[name].format(value)}"
                 for name, value in figures_of_cell.items() if name not in ("row", "column")]
        lines[index % columns] += [prefix + text for text in shown]
    return ["\n".join(column) for column in lines]


def _findings(sweep: SweepRequest, measured: list[dict]) -> list[str]:
    """What the figures say, in a sentence or two."""
    if sweep.sweep == "guidance scale":
        return _guidance_findings(sweep.guidance_scales, measured)
    findings = []
    for row in dict.fromkeys(cell["row"] for cell in measured):
        distances = ", ".join(f"{cell['column']} {cell[DISTANCE]:.1f}" for cell in measured if cell["row"] == row)
        findings.append(f"{row}: mean pixel distance to its own {REFERENCE_STEPS}-step image (0..255): {distances}.")
    return findings


def _guidance_findings(scales: tuple[float, ...], measured: list[dict]) -> list[str]:
    if COLOUR_ERROR not in measured[0]:
        return []
    best = min(range(len(scales)), key=lambda index: measured[index][COLOUR_ERROR])
    found = (f"Sweet spot: guidance {scales[best]:g}, where colour accuracy peaks (the object's colour is "
             f"{measured[best][COLOUR_ERROR]:.1f} RGB units from the one the prompt names).")
    above = range(best + 1, len(scales))
    if above:
        most = max(above, key=lambda index: measured[index][SATURATION])
        change = "rises" if measured[most][SATURATION] > measured[best][SATURATION] else "does not rise"
        found += (f" Above it saturation {change}: {measured[best][SATURATION]:.1%} of pixel values clipped at "
                  f"{scales[best]:g}, {measured[most][SATURATION]:.1%} at {scales[most]:g}.")
    return [found]
