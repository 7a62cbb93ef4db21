"""The ControlNets a request runs: its mode's own unit, then its extra control units, each with its map.

One unit runs as a plain ControlNet; several as diffusers' multi-ControlNet, each with its own map, scale and
start/end, or, where the family has a ControlNet Union model, as that one model with a control type per map.
The PNG parameters record every unit as AUTOMATIC1111's ControlNet does ("ControlNet 0", ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image

from pipelines.a1111 import UNIT_SETTINGS, module_name, unit_key, written_settings
from pipelines.images import prepare_user_image
from pipelines.modes import MODES
from pipelines.parameters import PARAMETERS
from pipelines.preprocessors import PREPROCESSORS, make_control_map
from pipelines.preprocessors.resize import crop_note
from pipelines.preprocessors.weights import DetectorSources
from pipelines.request import ControlUnit, GenerationRequest


@dataclass(frozen=True)
class UsedControl:
    mode: str  # which ControlNet
    map: Image.Image
    scale: float
    start: float
    end: float
    preprocessor: str
    options: Mapping[str, object]  # the preprocessor's options, as run
    notes: tuple[str, ...] = ()  # what was cropped, for the person to read


def controls_of(request: GenerationRequest, max_pixels: int, sources: DetectorSources) -> list[UsedControl]:
    """The request's units with their maps at the request's size, the mode's own first."""
    units = list(request.control_units)
    if MODES[request.mode].is_controlled:
        own = ControlUnit(request.mode, request.image, request.preprocessor, request.controlnet_scale,
                          request.control_start, request.control_end)
        units.insert(0, own)
    size = (request.width, request.height)
    controls = []
    for number, unit in enumerate(units):
        own_options = number == 0 and MODES[request.mode].is_controlled
        options = vars(request) if own_options else _declared_options(unit.preprocessor)
        what = f"{unit.mode} image" if own_options else f"image of control unit {number} ({unit.mode})"
        image = prepare_user_image(unit.image, max_pixels=max_pixels, what=what)
        control_map = make_control_map(unit.preprocessor, image, size, options, sources)
        used_options = {name: options[name] for name in PREPROCESSORS[unit.preprocessor].options}
        notes = tuple(filter(None, [crop_note(what, image.size, size)]))
        controls.append(UsedControl(unit.mode, control_map, unit.scale, unit.start, unit.end, unit.preprocessor,
                                    used_options, notes))
    return controls


def _declared_options(preprocessor: str) -> dict[str, object]:
    return {name: PARAMETERS[name].default for name in PREPROCESSORS[preprocessor].options}


def control_kwargs(controls: list[UsedControl], starts_from_image: bool, union: bool = False) -> dict[str, object]:
    """The pipeline arguments for `controls`: single values for one ControlNet, lists for several; a Union model
    takes every map with its control type, and one weight and range for all (the first unit's)."""
    if not controls:
        return {}
    if union:
        first = controls[0]
        return {
            "control_image": [control.map for control in controls],
            "control_mode": [MODES[control.mode].union_type for control in controls],
            "controlnet_conditioning_scale": first.scale,
            "control_guidance_start": first.start,
            "control_guidance_end": first.end,
        }
    several = len(controls) > 1

    def value(name: str) -> object:
        values = [getattr(control, name) for control in controls]
        return values if several else values[0]

    # Image-to-image and inpainting pipelines take the start image as `image`, the maps as `control_image`.
    return {
        "control_image" if starts_from_image else "image": value("map"),
        "controlnet_conditioning_scale": value("scale"),
        "control_guidance_start": value("start"),
        "control_guidance_end": value("end"),
    }


def union_note(controls: list[UsedControl]) -> list[str]:
    """A Union model runs its units with one weight and range: say so when the units asked for different ones."""
    if len({(control.scale, control.start, control.end) for control in controls}) == 1:
        return []
    return ["ControlNet Union applies one weight and one start/end to all its units: unit 0's were used."]


def maps_side_by_side(controls: list[UsedControl]) -> Image.Image | None:
    """Every map used, left to right in unit order (one image, so the API's output keeps its type)."""
    if not controls:
        return None
    width, height = controls[0].map.size
    shown = Image.new("RGB", (width * len(controls), height))
    for index, control in enumerate(controls):
        shown.paste(control.map, (index * width, 0))
    return shown


def png_units(controls: list[UsedControl], model_names: Mapping[str, str]) -> dict[str, str]:
    """"ControlNet <n>" entries as AUTOMATIC1111's ControlNet writes them, so PNG info can read them back."""
    return {unit_key(number): _unit_line(control, model_names[control.mode]) for number, control in enumerate(controls)}


def _unit_line(control: UsedControl, model_name: str) -> str:
    """The unit's settings line; a detector's options are written where it has them (a ready map has none)."""
    values = {
        **control.options,
        "module": module_name(MODES[control.mode].a1111_modules, control.preprocessor, control.options),
        "model": model_name,
        **{setting.fields[0]: getattr(control, setting.unit_field) for setting in UNIT_SETTINGS if setting.unit_field},
    }
    return ", ".join(f"{key}: {value}" for key, value in written_settings(UNIT_SETTINGS, values).items())
