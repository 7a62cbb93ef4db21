"""The denoising timeline: one text-mode run through `Studio.generate`, every k-th step kept as a frame.

A frame is the current sample (the latents after that step) decoded by the VAE, beside the model's predicted
clean image (x0) decoded the same way. The run is an ordinary generation with a step hook, so its last frame is
the image the Text tab makes with the same settings, pixel for pixel.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace

from PIL import Image

from pipelines.endpoints import validate_timeline
from pipelines.layout import GridCell, compose_grid
from pipelines.request import GenerationResult, TimelineRequest
from pipelines.steps import DenoisingStep
from pipelines.vae import decode_latents

FRAME_MS = 250  # each frame of the animation; the last one stays four times as long
COLUMNS = ["sample (decoded)", "predicted x0"]


@dataclass(frozen=True)
class TimelineFrame:
    step: int  # steps done, 1 to total
    total: int
    timestep: float
    latent: Image.Image  # the current sample, decoded
    predicted: Image.Image | None  # the model's predicted clean image (x0), where the scheduler gives one

    @property
    def label(self) -> str:
        return f"step {self.step}/{self.total}, t={self.timestep:.0f}"


@dataclass
class TimelineResult:
    frames: list[TimelineFrame]
    result: GenerationResult


def run_timeline(
    studio,
    timeline: TimelineRequest,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_frame: Callable[[TimelineFrame], None] | None = None,
) -> TimelineResult:
    """Run `timeline.base` through the studio, keeping every k-th step (and the last) as a frame; `on_frame` sees
    each frame as it is made."""
    timeline, _ = validate_timeline(timeline, studio.served)
    frames: list[TimelineFrame] = []

    def keep(frame: TimelineFrame) -> None:
        frames.append(frame)
        if on_frame is not None:
            on_frame(frame)

    # Validated already: the seed is fixed, so the studio runs exactly this request.
    keeper = FrameKeeper(timeline.keep_every, keep)
    result = studio.generate(replace(timeline.base, num_images=1), progress, should_stop, on_step=keeper)
    return TimelineResult(frames, result)


class FrameKeeper:
    """A step hook that decodes every `keep_every`-th step (and the last) into a frame and sends it.

    It runs where the model is; what it sends is plain pictures, so a remote backend runs it and streams the frames
    (`serving/wire.py`)."""

    def __init__(self, keep_every: int, send: Callable[[TimelineFrame], None]) -> None:
        self.keep_every, self.send = keep_every, send

    def options(self) -> dict[str, object]:
        """What it takes besides `send`: enough to build the same keeper elsewhere."""
        return {"keep_every": self.keep_every}

    def __call__(self, step: DenoisingStep) -> None:
        if step.index % self.keep_every == 0 or step.index == step.total:
            self.send(_frame(step))


def _frame(step: DenoisingStep) -> TimelineFrame:
    [latent] = decode_latents(step.pipe, step.latents[:1], mid_run=True)
    x0 = step.predicted_x0
    predicted = decode_latents(step.pipe, x0[:1], mid_run=True)[0] if x0 is not None else None
    return TimelineFrame(step.index, step.total, step.timestep, latent, predicted)


def animation(frames: list[TimelineFrame]) -> bytes:
    """The frames as an animated GIF file's bytes: sample and x0 side by side, enlarged pixel for pixel, each
    labelled with its step; the last frame stays longest."""
    pictures = [_side_by_side(frame) for frame in frames]
    durations = [FRAME_MS] * (len(pictures) - 1) + [4 * FRAME_MS]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return buffer.getvalue()


def _side_by_side(frame: TimelineFrame) -> Image.Image:
    """One labelled row of the grid layout the LoRA lab and the sweeps use."""
    halves = (frame.latent, frame.predicted or frame.latent)
    cells = [GridCell(0, column, frame.label, COLUMNS[column], half, "") for column, half in enumerate(halves)]
    return compose_grid(cells, [frame.label], COLUMNS)
