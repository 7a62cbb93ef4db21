"""Every endpoint, declared once: what a caller reaches at `/<name>`, and what one request of it may be.

An `Endpoint` names its parameters (in the order the API lists them), builds its typed request from the
arguments (`pipelines/request.py`), checks the request whole (each value against its declaration through
`pipelines/validation.py`, then the rules between its fields), and says what its GPU time depends on. This is the
only place that binds parameters to what is served: the tab's components, the endpoint's signature, its checks
and its ZeroGPU duration all start from `Endpoint.params`.

The modes' endpoints are made from `MODES` (`pipelines/modes.py`); the LoRA grid, the denoising timeline, forward
noising and sweeps are declared here. A tab (`ui/`) lays out an endpoint's components and formats its outputs;
`ui/endpoints.py` makes its handler.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

from pipelines.errors import StudioError
from pipelines.gpu import FALLBACK_SECONDS, GpuWork, gpu_seconds
from pipelines.modes import MODES, PROMPTING, SAMPLING, STYLE, Mode
from pipelines.parameters import MAX_CONTROL_UNITS, MAX_SEED, PARAMETERS, Param, Served, bind
from pipelines.preprocessors import available_preprocessors
from pipelines.presets import NO_PRESET, apply_preset, preset_named
from pipelines.request import (
    GenerationRequest,
    GridRequest,
    LoraChoice,
    LoraWeight,
    NoiseRequest,
    SweepRequest,
    TimelineRequest,
    XYRequest,
)
from pipelines.validation import MAX_GRID_VALUES, clean, show

Request = TypeVar("Request")

MAX_CELLS = 48  # images in one LoRA grid
SAMPLERS = ("DDPM", "DDIM")  # a samplers sweep: stochastic against deterministic, with the same noise schedule
REFERENCE_STEPS = 50  # a steps sweep compares every image with its sampler's image at this many steps


@dataclass(frozen=True)
class Endpoint(Generic[Request]):
    """One endpoint: its name (the API's `/<name>`), its tab's title, the API page's line for it, its parameters,
    and how a request of it is built, checked and weighed for the GPU."""

    name: str
    title: str
    description: str
    parameters: tuple[str, ...]
    build: Callable[[dict[str, object]], Request]
    rules: Callable[[Request, Served], tuple[Request, list[str]]]
    work: Callable[[Request], GpuWork]
    mode: Mode | None = None  # a generation mode's endpoint
    # What is served as this endpoint's parameters see it (a mode's preprocessors, say).
    served_for: Callable[[Served], Served] = field(default=lambda served: served)

    def params(self, served: Served) -> list[Param]:
        """The parameters, bound to what is served, in API order."""
        served = self.served_for(served)
        return [bind(PARAMETERS[name], served) for name in self.parameters]

    def request(self, arguments: Mapping[str, object]) -> Request:
        """The typed request for `arguments` (values by parameter name, as sent: not yet checked)."""
        unknown = set(arguments) - set(self.parameters)
        if unknown:
            raise StudioError(f"/{self.name} takes no {', '.join(sorted(unknown))}.")
        return self.build(dict(arguments))

    def validate(self, request: Request, served: Served) -> tuple[Request, list[str]]:
        """`request` as it will run, with notes for the person; a StudioError names what is wrong."""
        return self.rules(request, served)

    def gpu_seconds(self, arguments: Mapping[str, object], served: Served) -> int:
        """The ZeroGPU duration for `arguments`, read off the checked request: a request the studio refuses gets
        the fallback, and is refused before any GPU work."""
        try:
            request, _ = self.validate(self.request(arguments), served)
        except StudioError:
            return FALLBACK_SECONDS
        return gpu_seconds(self.work(request))

    def checked_values(self, request: object, served: Served, notes: list[str]) -> dict[str, object]:
        """Each of this endpoint's fields of `request`, checked against its bound declaration."""
        return {param.name: clean(param, getattr(request, param.name), notes) for param in self.params(served)}


# ------------------------------------------------------------------ generation modes


def validate_request(request: GenerationRequest, served: Served) -> tuple[GenerationRequest, list[str]]:
    """Check `request` and resolve its defaults; returns the request as it will run and notes for the person."""
    mode = mode_of(request.mode, served)
    notes: list[str] = []
    values = MODE_ENDPOINTS[mode.name].checked_values(request, served, notes)
    check_inputs(mode, values)
    if values.get("preset", NO_PRESET) != NO_PRESET:
        notes += apply_preset(values, preset_named(served.family, values["preset"]))
    if values["randomize_seed"]:
        values["seed"] = random.randint(0, MAX_SEED)
    values["randomize_seed"] = False
    return replace(request, **values), notes


def for_mode(served: Served, mode: Mode) -> Served:
    """`served` with the mode's preprocessors, those whose weights are here first (the first is the default)."""
    ready = available_preprocessors(mode.preprocessors, served.detectors)  # looks on disk once per call
    unavailable = tuple(name for name in mode.preprocessors if name not in ready)
    return replace(served, preprocessors=(*ready, *unavailable), unavailable_preprocessors=unavailable)


def mode_of(name: object, served: Served) -> Mode:
    allowed = served.modes or tuple(MODES)
    if not isinstance(name, str) or name not in allowed:
        raise StudioError(f"Mode (mode) must be one of: {', '.join(allowed)}; got {show(name)}.")
    return MODES[name]


def check_inputs(mode: Mode, values: Mapping[str, object]) -> None:
    """Rules between a generation's fields; each value on its own is already checked."""
    units = int(mode.is_controlled) + len(values.get("control_units", ()))
    if units > MAX_CONTROL_UNITS:
        raise StudioError(
            f"{mode.title} mode has its own ControlNet, so at most {MAX_CONTROL_UNITS - 1} more control units "
            f"(control_units) fit; got {units - 1}."
        )
    if mode.is_controlled and values["control_start"] >= values["control_end"]:
        raise StudioError(
            f"Control guidance start ({values['control_start']:g}) must be below control guidance end "
            f"({values['control_end']:g})."
        )
    if values.get("preprocessor") == "canny" and values["low_threshold"] > values["high_threshold"]:
        raise StudioError(
            f"Canny low threshold ({values['low_threshold']}) must not be above the high threshold "
            f"({values['high_threshold']})."
        )


def generation_work(request: GenerationRequest, images: int | None = None) -> GpuWork:
    """A checked generation's GPU work: `images` images (by default the request's own number)."""
    mode = MODES[request.mode]
    units = request.control_units
    detectors = int(mode.is_controlled and request.preprocessor != "none")
    detectors += sum(unit.preprocessor != "none" for unit in units)
    return GpuWork(
        denoising_steps=request.steps * (request.num_images if images is None else images),
        width=request.width,
        height=request.height,
        controlnets=int(mode.is_controlled) + len(units),
        loras=tuple(choice.name for choice in request.loras),
        detectors=detectors,
    )


def mode_endpoint(mode: Mode) -> Endpoint[GenerationRequest]:
    return Endpoint(
        mode.endpoint,
        mode.title,
        f"{mode.title} mode: {mode.hint}",
        mode.parameters,
        build=lambda arguments: GenerationRequest(mode=mode.name, **arguments),
        rules=validate_request,
        work=generation_work,
        mode=mode,
        served_for=lambda served: for_mode(served, mode),
    )


MODE_ENDPOINTS: Mapping[str, Endpoint[GenerationRequest]] = {name: mode_endpoint(mode) for name, mode in MODES.items()}


# ------------------------------------------------------------------ the LoRA lab's grid

GRID_FIELDS = ("lora_names", "weights", "seeds", "together", "add_together", "add_triggers")
GRID_BASE_FIELDS = ("prompt", "negative_prompt", "mode", "image", "steps", "guidance_scale", *STYLE)


def validate_grid(grid: GridRequest, served: Served) -> tuple[GridRequest, list[str]]:
    """The base request as the grid runs it (its seed comes from the columns), the lists checked, and at most
    MAX_CELLS images."""
    base, notes = validate_request(replace(grid.base, randomize_seed=False), served)
    served = replace(served, modes=tuple(MODES))
    checked = {name: clean(bind(PARAMETERS[name], served), getattr(grid, name), notes) for name in GRID_FIELDS}
    if not checked["lora_names"]:
        raise StudioError("Choose at least one LoRA for the grid (lora_names).")
    for name in ("weights", "seeds"):
        if not checked[name]:
            raise StudioError(f"Give at least one value for the {name} of the grid, separated by commas.")
    together = _together_row(checked["together"], checked["lora_names"])
    checked["together"] = together if checked["add_together"] else ()
    grid = replace(grid, base=base, **checked)
    if grid_cells(grid) > MAX_CELLS:
        raise StudioError(
            f"This grid would have {grid_cells(grid)} images; the limit is {MAX_CELLS}. Use fewer LoRAs, weights "
            "or seeds."
        )
    return grid, notes


def grid_cells(grid: GridRequest) -> int:
    """A checked grid's images: the baseline row, a row per LoRA and weight, the 'together' row, the style reference's
    row; a column per seed."""
    rows = 1 + len(grid.lora_names) * len(grid.weights) + int(bool(grid.together)) + int(has_style_row(grid))
    return rows * len(grid.seeds)


def has_style_row(grid: GridRequest) -> bool:
    """A grid with a style image ends with a row of the baseline and that picture: the two ways to give a style, LoRAs
    and a reference, side by side; the other rows run without it."""
    return grid.base.style_image is not None


def _together_row(together: tuple[LoraChoice, ...], lora_names: tuple[str, ...]) -> tuple[LoraChoice, ...]:
    """The 'together' weights name chosen LoRAs by file name; a chosen LoRA left out gets weight 1."""
    if not together:
        return ()
    by_file = {Path(name).name: name for name in lora_names}
    unknown = [choice.name for choice in together if Path(choice.name).name not in by_file]
    if unknown:
        raise StudioError(
            f"The 'together' weights (together) name LoRAs that are not chosen: {', '.join(sorted(unknown))}."
        )
    strengths = {by_file[Path(choice.name).name]: choice.strength for choice in together}
    return tuple(LoraChoice(name).at(strengths.get(name, LoraWeight(1.0))) for name in lora_names)


def _grid_request(arguments: dict[str, object]) -> GridRequest:
    # The grid's images are ready control maps: no detector runs.
    base = GenerationRequest(preprocessor="none", **{name: arguments.pop(name) for name in GRID_BASE_FIELDS
                                                      if name in arguments})
    return GridRequest(base, **arguments)


def _grid_work(grid: GridRequest) -> GpuWork:
    names = {*grid.lora_names, *(choice.name for choice in grid.together)}
    return replace(generation_work(grid.base, images=grid_cells(grid)), loras=tuple(sorted(names)))


LORA_GRID: Endpoint[GridRequest] = Endpoint(
    "lora_grid",
    "LoRA lab",
    "Compare style LoRAs side by side: a 'no LoRA' row, then each LoRA at each weight, one column per seed "
    "(the same seed down each column), and with a style reference a last row of it without LoRAs. In pose, edge and "
    "depth mode the image is a ready control map.",
    (
        "lora_names", "weights", "seeds", "prompt", "negative_prompt", "mode", "image", "steps", "guidance_scale",
        "add_triggers", "together", "add_together", *STYLE,
    ),
    build=_grid_request,
    rules=validate_grid,
    work=_grid_work,
    served_for=lambda served: replace(served, preprocessors=("none",)),
)


# ------------------------------------------------------------------ the LoRA lab's X/Y plot


@dataclass(frozen=True)
class Axis:
    """One setting an X/Y plot can vary: the parameter whose declaration checks a list of its values, how a value
    changes a request, and how it reads as a row or column label."""

    checked_as: str
    apply: Callable[[GenerationRequest, object], GenerationRequest]
    label: Callable[[object], str]


def _with_lora_weight(request: GenerationRequest, strength: LoraWeight) -> GenerationRequest:
    """Every LoRA of the request at this weight; with block weights (`1@out`) those replace the LoRAs' own."""
    return replace(request, loras=tuple(choice.at(strength) for choice in request.loras))


def _with_lora(request: GenerationRequest, choice: LoraChoice | None) -> GenerationRequest:
    return replace(request, loras=() if choice is None else (choice,))


def _replaced(request: GenerationRequest, pair: tuple[str, str]) -> GenerationRequest:
    """A1111's prompt S/R: the search text replaced in the prompt and the negative prompt."""
    search, value = pair
    return replace(request, prompt=request.prompt.replace(search, value),
                   negative_prompt=request.negative_prompt.replace(search, value))


AXES: Mapping[str, Axis] = {
    "LoRA weight": Axis("weights", _with_lora_weight, lambda strength: f"weight {strength}"),
    "LoRA": Axis("loras", _with_lora, lambda choice: "no LoRA" if choice is None else
                 f"{choice.label} @ {choice.strength}"),
    "seed": Axis("seeds", lambda request, seed: replace(request, seed=seed), lambda seed: f"seed {seed}"),
    "steps": Axis("step_counts", lambda request, steps: replace(request, steps=steps), lambda steps: f"{steps} steps"),
    "guidance": Axis("guidance_scales", lambda request, scale: replace(request, guidance_scale=scale),
                     lambda scale: f"guidance {scale:g}"),
    "sampler": Axis("scheduler", lambda request, name: replace(request, scheduler=name), str),
    "prompt S/R": Axis("prompt", _replaced, lambda pair: pair[1]),
}
NO_LORA = "none"


def validate_xy(plot: XYRequest, served: Served) -> tuple[XYRequest, list[str]]:
    """The base as every cell starts from (its seed fixed), each axis's values checked by its parameter's own
    declaration, the two axes different, and at most MAX_CELLS images."""
    base, notes = validate_request(replace(plot.base, randomize_seed=False, num_images=1), served)
    with_axes = replace(served, axes=tuple(AXES))
    axes = {name: clean(bind(PARAMETERS[name], with_axes), getattr(plot, name), notes) for name in ("x_axis", "y_axis")}
    if axes["x_axis"] == axes["y_axis"]:
        raise StudioError(f"The X and Y axes (x_axis, y_axis) must differ; both are {axes['x_axis']!r}.")
    # Each list checked as text first (its length, its characters), then as the axis's values.
    texts = {name: clean(bind(PARAMETERS[name], served), getattr(plot, name), notes)
             for name in ("x_values", "y_values")}
    values = {f"{side}_values": _axis_values(axes[f"{side}_axis"], texts[f"{side}_values"], base, side, served, notes)
              for side in ("x", "y")}
    plot = XYRequest(base, axes["x_axis"], values["x_values"], axes["y_axis"], values["y_values"])
    cells = len(plot.x_values) * len(plot.y_values)
    if cells > MAX_CELLS:
        raise StudioError(f"This plot would have {cells} images; the limit is {MAX_CELLS}. Use fewer values.")
    return plot, notes


def _axis_values(axis: str, text: object, base: GenerationRequest, side: str, served: Served,
                 notes: list[str]) -> tuple:
    """`text` as the values of `axis`, each checked as the axis's parameter checks it."""
    what = f"{side.upper()} values"
    if not isinstance(text, str) or not text.strip():
        raise StudioError(f"{what} must be values separated by commas, like '1, 2'; got {show(text)}.")
    if not base.loras and axis == "LoRA weight":
        raise StudioError("The LoRA weight axis changes the weight of the LoRAs in LoRAs (loras); name at least one.")
    param = replace(bind(PARAMETERS[AXES[axis].checked_as], served), name=f"{side}_values", label=what)
    if param.kind in ("numbers", "lora_weights", "wholes"):
        return clean(param, text, notes)
    items = [item.strip() for item in text.split(",") if item.strip()]
    if len(items) > MAX_GRID_VALUES:
        raise StudioError(f"{what}: at most {MAX_GRID_VALUES} values fit in one plot; got {len(items)}.")
    if axis == "sampler":
        return tuple(clean(param, item, notes) for item in items)
    if axis == "LoRA":
        return tuple(None if item == NO_LORA else clean(param, item, notes)[0] for item in items)
    search = items[0]
    if search not in base.prompt and search not in base.negative_prompt:
        raise StudioError(f"{what}: prompt S/R replaces its first value, {search!r}, which is not in the prompt.")
    return tuple((search, clean(param, item, notes)) for item in items)


def xy_cells(plot: XYRequest) -> list[list[GenerationRequest]]:
    """A checked plot's requests: a row per Y value, a column per X value."""
    x_axis, y_axis = AXES[plot.x_axis], AXES[plot.y_axis]
    return [[x_axis.apply(y_axis.apply(plot.base, y), x) for x in plot.x_values] for y in plot.y_values]


def _xy_request(arguments: dict[str, object]) -> XYRequest:
    plotted = {name: arguments.pop(name) for name in ("x_axis", "x_values", "y_axis", "y_values") if name in arguments}
    return XYRequest(GenerationRequest(preprocessor="none", **arguments), **plotted)


def _xy_work(plot: XYRequest) -> GpuWork:
    cells = [cell for row in xy_cells(plot) for cell in row]
    names = sorted({choice.name for cell in cells for choice in cell.loras})
    return replace(generation_work(plot.base), denoising_steps=sum(cell.steps for cell in cells), loras=tuple(names))


XY_PLOT: Endpoint[XYRequest] = Endpoint(
    "xy_plot",
    "X/Y plot",
    "Any two settings against each other: LoRA, LoRA weight, seed, prompt S/R, guidance, steps or sampler along the "
    "columns and the rows, every cell labelled, the plot's PNG carrying each cell's parameters.",
    ("x_axis", "x_values", "y_axis", "y_values", "prompt", "negative_prompt", "loras", "mode", "image", "seed",
     "steps", "guidance_scale", "scheduler"),
    build=_xy_request,
    rules=validate_xy,
    work=_xy_work,
    served_for=lambda served: replace(served, preprocessors=("none",), axes=tuple(AXES)),
)


# ------------------------------------------------------------------ the Explore tab: every image a text-mode run


def validate_timeline(timeline: TimelineRequest, served: Served) -> tuple[TimelineRequest, list[str]]:
    if timeline.base.mode != "text" or timeline.base.num_images not in (None, 1):
        raise StudioError("The denoising timeline follows one text-mode image.")
    base, notes = validate_request(timeline.base, served)
    keep_every = clean(bind(PARAMETERS["keep_every"], served), timeline.keep_every, notes)
    return TimelineRequest(base, keep_every), notes


def _timeline_request(arguments: dict[str, object]) -> TimelineRequest:
    keep_every = arguments.pop("keep_every", None)
    return TimelineRequest(GenerationRequest(mode="text", **arguments), keep_every)


DENOISE_TIMELINE: Endpoint[TimelineRequest] = Endpoint(
    "denoise_timeline",
    "Denoising timeline",
    "Watch one text-mode run denoise: every k-th step's current latent, decoded, beside the model's predicted clean "
    "image (x0); the last frame is the image the Text tab makes with the same settings.",
    (*PROMPTING, *(name for name in SAMPLING if name != "num_images"), "keep_every"),
    build=_timeline_request,
    rules=validate_timeline,
    work=lambda timeline: generation_work(timeline.base),
)


def validate_noise(request: NoiseRequest, served: Served) -> tuple[NoiseRequest, list[str]]:
    """Every value checked against its declaration (the image is checked when it is opened)."""
    notes: list[str] = []
    return NoiseRequest(**FORWARD_NOISE.checked_values(request, served, notes)), notes


FORWARD_NOISE: Endpoint[NoiseRequest] = Endpoint(
    "forward_noise",
    "Forward noising",
    "Noise an image to timestep t with a schedule from diffusers: in the VAE's latent space (decoded), as Stable "
    "Diffusion trains, and in pixel space, side by side.",
    ("clean_image", "schedule", "timestep", "seed"),
    build=lambda arguments: NoiseRequest(**arguments),
    rules=validate_noise,
    work=lambda request: GpuWork(denoising_steps=1),  # one VAE encode and decode
)

SWEEP_FIELDS = ("sweep", "guidance_scales", "step_counts")


def validate_sweep(sweep: SweepRequest, served: Served) -> tuple[SweepRequest, list[str]]:
    """Every value checked before the first cell is made; the base request runs in text mode, one image."""
    base, notes = validate_request(replace(sweep.base, mode="text", num_images=1), served)
    values = {name: clean(bind(PARAMETERS[name], served), getattr(sweep, name), notes) for name in SWEEP_FIELDS}
    listed = "guidance_scales" if values["sweep"] == "guidance scale" else "step_counts"
    if not values[listed]:
        raise StudioError(f"Give at least one value for {PARAMETERS[listed].label} ({listed}), separated by commas.")
    return SweepRequest(base, **values), notes


def _sweep_request(arguments: dict[str, object]) -> SweepRequest:
    swept = {name: arguments.pop(name) for name in SWEEP_FIELDS if name in arguments}
    return SweepRequest(GenerationRequest(mode="text", **arguments), **swept)


def _sweep_work(sweep: SweepRequest) -> GpuWork:
    """Every image the sweep makes, its references included."""
    if sweep.sweep == "guidance scale":
        return generation_work(sweep.base, images=len(sweep.guidance_scales))
    rows = len(SAMPLERS) if sweep.sweep == "samplers" else 1
    steps = rows * (sum(sweep.step_counts) + REFERENCE_STEPS)
    return replace(generation_work(sweep.base), denoising_steps=steps)


SWEEP: Endpoint[SweepRequest] = Endpoint(
    "sweep",
    "Sweeps",
    "One prompt and seed across guidance scales, step counts, or DDPM against DDIM at several step counts: a "
    "labelled grid with a measured figure under every column.",
    ("sweep", "prompt", "negative_prompt", "loras", "seed", "guidance_scales", "step_counts", "steps",
     "guidance_scale", "scheduler"),
    build=_sweep_request,
    rules=validate_sweep,
    work=_sweep_work,
)

EXPLORE = (DENOISE_TIMELINE, FORWARD_NOISE, SWEEP)
ENDPOINTS: Mapping[str, Endpoint] = {
    endpoint.name: endpoint for endpoint in (*MODE_ENDPOINTS.values(), LORA_GRID, XY_PLOT, *EXPLORE)
}
