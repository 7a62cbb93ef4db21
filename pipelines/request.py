"""Every request type, and the result of a generation.

`GenerationRequest` is the one request that flows from the UI (or an API caller) through the studio: one field
per parameter a mode declares (`pipelines/parameters.py`), with the declared default (None where the default is
the served model's own), plus the mode. The other endpoints' requests wrap one: the LoRA grid, the denoising
timeline and the sweeps run it with changes; forward noising has its own few fields. An endpoint
(`pipelines/endpoints.py`) builds its request from the arguments and checks it; `Studio.generate` runs a
generation and returns a `GenerationResult` carrying the images and the exact parameters that made them (seeds
resolved, sizes snapped, prompts as actually used).

Before the endpoint's check a field holds what the caller sent; after it, the type its annotation names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

from PIL import Image

from pipelines.modes import MODES
from pipelines.parameters import PARAMETERS, Param, Ref


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA, its weight and its block weights.

    `name` is a file name in the LoRA folder, the path of a file uploaded in this session, or
    `hub:owner/repo` / `hub:owner/repo/file.safetensors`. `blocks` is a block-weight spec as the `loras` field
    writes it after `@` (`out`, `in=0:mid=1:out=0.5`; `pipelines/block_weights.py`), "" for none.
    """

    name: str
    weight: float = 1.0
    blocks: str = ""

    @property
    def label(self) -> str:
        """The name people see: as given, except that an upload (a server path) shows its file name."""
        return Path(self.name).name if Path(self.name).is_absolute() else self.name

    @property
    def strength(self) -> LoraWeight:
        return LoraWeight(self.weight, self.blocks)

    def at(self, strength: LoraWeight) -> LoraChoice:
        """This LoRA at another weight and block weights."""
        return LoraChoice(self.name, strength.weight, strength.blocks)


@dataclass(frozen=True)
class LoraWeight:
    """A weight to try in the LoRA lab (a grid row, an X/Y value), with block weights as `LoraChoice.blocks`."""

    weight: float
    blocks: str = ""

    def __str__(self) -> str:
        """As the weights field takes it: `0.8`, `1@out`."""
        return f"{self.weight:g}@{self.blocks}" if self.blocks else f"{self.weight:g}"


@dataclass(frozen=True)
class ControlUnit:
    """One more ControlNet for a request, beside its mode's own: which ControlNet, its image and how it steers.

    Its detector runs with the declared default options (thresholds, detection resolution).
    """

    mode: str  # pose, edge or depth
    image: object  # a PIL image or the path of an image file
    preprocessor: str = "none"
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


def _request_field(param: Param) -> tuple[str, object, object]:
    default = None if isinstance(param.default, Ref) else param.default
    return param.name, object, field(default=default)


_GENERATION_PARAMETERS = tuple(dict.fromkeys(name for mode in MODES.values() for name in mode.parameters))

GenerationRequest = make_dataclass(
    "GenerationRequest",
    [("mode", str, field(default="text")), *(_request_field(PARAMETERS[name]) for name in _GENERATION_PARAMETERS)],
    frozen=True,
)
GenerationRequest.__module__ = __name__
GenerationRequest.__doc__ = (
    "A request for images in one mode; the fields are the parameters of `pipelines/parameters.py`. `image` is a "
    "PIL image or the path of an image file; `loras` is 'name:weight, ...' text or a tuple of `LoraChoice`."
)


@dataclass(frozen=True)
class GridRequest:
    """The LoRA lab's grid: `base` rendered as a 'no LoRA' row, then each LoRA at each weight, a column per seed."""

    base: GenerationRequest
    lora_names: tuple[str, ...] = ()
    weights: tuple[LoraWeight, ...] | str = ()  # "0.5, 1, 1@out" as sent
    seeds: tuple[int, ...] | str = ()
    together: tuple[LoraChoice, ...] | str = ()  # weights for a last row with all the LoRAs at once
    add_together: bool = False
    add_triggers: bool = True  # each row's prompt gets its LoRAs' trigger words


@dataclass(frozen=True)
class XYRequest:
    """The LoRA lab's X/Y plot: `base` with one setting changed along the columns and another down the rows."""

    base: GenerationRequest
    x_axis: str | None = None
    x_values: tuple | str = ()  # "0, 0.5, 1" as sent; the axis's values once checked
    y_axis: str | None = None
    y_values: tuple | str = ()


@dataclass(frozen=True)
class TimelineRequest:
    """The Explore tab's denoising timeline: `base` (text mode, one image), every k-th step kept as a frame."""

    base: GenerationRequest
    keep_every: int | None = None


@dataclass(frozen=True)
class NoiseRequest:
    """The Explore tab's forward noising: an image taken to timestep t by a schedule."""

    clean_image: object  # a PIL image or the path of an image file
    schedule: str | None = None
    timestep: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class SweepRequest:
    """The Explore tab's sweeps: `base` (text mode, one image; its seed fixes every cell) across guidance scales,
    step counts, or DDPM against DDIM at several step counts."""

    base: GenerationRequest
    sweep: str | None = None
    guidance_scales: tuple[float, ...] | str | None = None  # "1, 2, 4" as sent
    step_counts: tuple[int, ...] | str | None = None


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    parameters: list[str]
    request: GenerationRequest
    control_map: Image.Image | None = None
    notes: list[str] = field(default_factory=list)
