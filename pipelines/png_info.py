"""How a PNG made here or by AUTOMATIC1111 was made, as the studio's own parameters for one mode.

The `parameters` text chunk is someone else's text. It is read without decoding a pixel; every value is
converted with the kind its parameter declares (`pipelines/parameters.py`); whatever has no place in the studio
is named in the notes, never dropped silently. A value outside the served range is kept, with a note: the studio
checks every request (`pipelines/validation.py`), so Generate refuses it with the same message as a value typed
by hand, and the person sees what the file asked for.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from pipelines.errors import StudioError
from pipelines.metadata import parse_parameters, parse_settings_line
from pipelines.modes import MODES, Mode
from pipelines.parameters import MAX_LORA_WEIGHT, PARAMETERS, Param, Served, bind, number_text
from pipelines.preprocessors import PREPROCESSORS

CHUNK = "parameters"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROMPT_PARTS = ("prompt", "negative_prompt", "loras", "partly_read_lora_tags")  # the rest of parse_parameters
TEXT_MODE = "text"
# A1111's ControlNet module names for what the studio's preprocessors do; A1111 draws openpose's hands and face
# with separate modules where the studio has two switches.
MODULES: Mapping[str, tuple[str, dict[str, bool]]] = {
    "none": ("none", {}),
    "canny": ("canny", {}),
    "openpose": ("openpose", {"include_hands": False, "include_face": False}),
    "openpose_hand": ("openpose", {"include_hands": True, "include_face": False}),
    "openpose_face": ("openpose", {"include_hands": False, "include_face": True}),
    "openpose_full": ("openpose", {"include_hands": True, "include_face": True}),
    "depth_anything": ("depth_anything", {}),
    "depth_anything_v2": ("depth_anything", {}),
    "depth_midas": ("midas", {}),
    "midas": ("midas", {}),
}
# Which mode a ControlNet unit belongs to, by a word in its module (or, for module "none", its model) name.
MODE_WORDS = (("canny", "edge"), ("openpose", "pose"), ("depth", "depth"))
SETTINGS = (("Steps", "steps"), ("CFG scale", "guidance_scale"), ("Seed", "seed"))
# img2img and inpainting, as AUTOMATIC1111 writes them ("Masked content" is the studio's own)
EDIT_SETTINGS = (("Denoising strength", "strength"), ("Mask blur", "mask_blur"), ("Masked content", "masked_content"))
UNIT_SETTINGS = (("Weight", "controlnet_scale"), ("Guidance Start", "control_start"), ("Guidance End", "control_end"))
PREPROCESSOR_SETTINGS = (
    ("Processor Res", "detect_resolution"), ("Threshold A", "low_threshold"), ("Threshold B", "high_threshold"),
)
# sd-webui-controlnet before version 1.1.2 wrote one unit as separate settings: "ControlNet Module: canny, ...".
_OLD_UNIT_KEY = re.compile(r"ControlNet(?:-0)? ([A-Za-z][A-Za-z ]*)")
_EXTRA_UNIT_KEY = re.compile(r"ControlNet [1-9]")
_SIZE = re.compile(r"\s*(\d+)\s*x\s*(\d+)\s*")
_SHOWN_CHARS = 60
_SHOWN_CHUNKS = 5


@dataclass(frozen=True)
class PngSettings:
    """What a PNG's parameters mean here: the mode tab they belong to, its values by parameter name, and notes."""

    mode: str
    values: dict[str, object]
    notes: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {"mode": self.mode, "values": dict(self.values), "notes": list(self.notes)}


def read_parameters_chunk(path: str | os.PathLike | None) -> str:
    """The `parameters` text chunk of the PNG file at `path`; only the chunks before the pixel data are read."""
    if path is None or not os.fspath(path).strip():
        raise StudioError("No image was given: upload a PNG first.")
    name = Path(path).name
    if not os.path.isfile(path):
        raise StudioError(f"The file {name!r} does not exist.")
    # Pillow warns about large images when they are opened; the pixels are never decoded here.
    with warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning):
        try:
            with Image.open(path, formats=["PNG"]) as opened:
                chunks = {key: value for key, value in opened.info.items() if isinstance(value, str)}
        except Image.DecompressionBombError:
            raise StudioError(f"{name!r} declares a size too large to open safely.") from None
        except (OSError, ValueError, SyntaxError, EOFError):  # UnidentifiedImageError is an OSError
            if not _has_png_signature(path):
                raise StudioError(f"{name!r} is not a PNG image; only a PNG's text chunks are read.") from None
            raise StudioError(f"{name!r} is a damaged PNG: its text chunks cannot be read.") from None
    text = chunks.get(CHUNK, "")
    if not text.strip():
        raise StudioError(f"{name!r} carries no generation parameters (no {CHUNK!r} text chunk{_listed(chunks)}).")
    return text


def settings_from_parameters(text: str, served: Served) -> PngSettings:
    """The studio parameters in `text` (A1111's `parameters` layout), for the mode they were made in."""
    parsed = parse_parameters(text)
    settings = {key: value for key, value in parsed.items() if key not in PROMPT_PARTS}
    unit = _controlnet_unit(settings)
    mode, notes = _mode(settings.pop("Mode", None) or _edit_mode(settings), unit)
    reading = _Reading(_bound_parameters(mode, served), notes=notes)
    reading.put("prompt", parsed["prompt"], "Prompt")
    reading.put("negative_prompt", parsed["negative_prompt"], "Negative prompt")
    _read_loras(reading, parsed["loras"], parsed["partly_read_lora_tags"])
    _read_sampling(reading, settings)
    for key, name in EDIT_SETTINGS:
        if key in settings and name in reading.params:
            reading.put(name, settings.pop(key), key)
    if unit and mode.is_controlled:
        _read_unit(reading, unit)
    extra = [unit] if unit and not mode.is_controlled else []
    extra += [parse_settings_line(settings.pop(key)) for key in list(settings) if _EXTRA_UNIT_KEY.fullmatch(key)]
    if extra:
        _read_extra_units(reading, extra, first=int(mode.is_controlled))
    reading.unused += settings.items()
    return reading.result(mode)


@dataclass
class _Reading:
    params: Mapping[str, Param]  # the mode's, bound to what is served
    values: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unused: list[tuple[str, str]] = field(default_factory=list)  # the file's settings with no place here

    def put(self, name: str, raw: object, source: str) -> None:
        """`raw` (the file's setting `source`) as parameter `name`, converted with its declared kind."""
        param = self.params[name]
        try:
            value = _convert(param, raw)
        except ValueError as reason:
            self.notes.append(f"{source} {_short(raw)!r} was not used: {reason}.")
            return
        self.values[name] = value
        problem = _outside_range(param, value)
        if problem:
            self.notes.append(f"{param.label} {problem}: Generate will refuse it until it is changed.")

    def result(self, mode: Mode) -> PngSettings:
        values = {name: self.values[name] for name in mode.parameters if name in self.values}
        notes = list(self.notes)
        if self.unused:
            listed = "; ".join(f"{key}: {_short(value)}" for key, value in self.unused)
            notes.append(f"Not used: {listed}.")
        return PngSettings(mode.name, values, tuple(notes))


def _bound_parameters(mode: Mode, served: Served) -> dict[str, Param]:
    served = replace(served, preprocessors=mode.preprocessors)
    return {name: bind(PARAMETERS[name], served) for name in mode.parameters}


def _controlnet_unit(settings: dict[str, str]) -> dict[str, str] | None:
    """The first ControlNet unit's settings, taken out of `settings`; the studio runs one ControlNet."""
    if "ControlNet 0" in settings:
        return parse_settings_line(settings.pop("ControlNet 0"))
    old_keys = {match[1]: key for key in list(settings) if (match := _OLD_UNIT_KEY.fullmatch(key))}
    return {name: settings.pop(key) for name, key in old_keys.items()} or None


def _edit_mode(settings: Mapping[str, str]) -> str | None:
    """AUTOMATIC1111 names no mode: a mask blur means inpainting, a denoising strength without a hires pass img2img."""
    if "Mask blur" in settings:
        return "inpaint"
    return "img2img" if "Denoising strength" in settings and "Hires upscale" not in settings else None


def _unit_mode(unit: Mapping[str, str]) -> str | None:
    """The mode a ControlNet unit belongs to, by a word in its module (or, for module "none", its model) name."""
    module, model = unit.get("Module", ""), unit.get("Model", "")
    clue = (model if module.lower() in ("", "none") else module).lower()
    return next((mode for word, mode in MODE_WORDS if word in clue), None)


def _read_extra_units(reading: _Reading, units: list[dict[str, str]], first: int) -> None:
    """Units beyond the mode's own, as `control_units` without their maps (a PNG holds none)."""
    read = []
    for number, unit in enumerate(units, start=first):
        mode = _unit_mode(unit)
        if mode is None:  # no ControlNet here for its module
            reading.unused += [(f"ControlNet {number} {key}", value) for key, value in unit.items()]
            continue
        preprocessor = MODULES.get(unit.get("Module", "none").lower(), ("none", {}))[0]
        try:
            settings = {name: _float(unit.get(key, str(default)), "not a number")
                        for key, name, default in (("Weight", "scale", 1), ("Guidance Start", "start", 0),
                                                   ("Guidance End", "end", 1))}
        except ValueError as reason:
            reading.notes.append(f"ControlNet {number} was not used: {reason}.")
            continue
        preprocessor = preprocessor if preprocessor in MODES[mode].preprocessors else "none"
        read.append({"mode": mode, "preprocessor": preprocessor, **settings})
        reading.notes.append(f"ControlNet {number} ({mode}): a PNG holds no control map; give its unit an image.")
    if read:
        reading.values["control_units"] = read


def _mode(declared: str | None, unit: dict[str, str] | None) -> tuple[Mode, list[str]]:
    """The studio writes `Mode`; for A1111's files the ControlNet unit tells."""
    notes = []
    if declared in MODES:
        return MODES[declared], notes
    if declared is not None:
        notes.append(f"Mode {_short(declared)!r} is not one of the studio's modes ({', '.join(MODES)}).")
    if not unit:
        return MODES[TEXT_MODE], notes
    mode = _unit_mode(unit)
    module, model = unit.get("Module", ""), unit.get("Model", "")
    if mode is None:
        notes.append(
            f"The studio has no mode for ControlNet module {_short(module)!r} (model {_short(model)!r}); "
            "the settings go to the Text tab without it."
        )
        return MODES[TEXT_MODE], notes
    return MODES[mode], notes


def _read_loras(reading: _Reading, loras: list[tuple[str, float]], partly_read: list[str]) -> None:
    """The prompt's LoRA tags as the LoRA box's 'name:weight, ...' text."""
    items = []
    for name, weight in loras:
        if not name or "," in name:
            reading.notes.append(f"The LoRA {_short(name)!r} was not used: the LoRA box takes no name with a comma.")
            continue
        if not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:  # NaN fails too
            reading.notes.append(
                f"The LoRA {_short(name)!r} has weight {weight:g}, outside {-MAX_LORA_WEIGHT:g} to "
                f"{MAX_LORA_WEIGHT:g}: Generate will refuse it until it is changed."
            )
        items.append(f"{name}:{weight:g}")
    reading.values["loras"] = ", ".join(items)
    reading.notes += [
        f"Only the first weight of {_short(tag)} was read: the studio gives a LoRA one weight." for tag in partly_read
    ]


def _read_sampling(reading: _Reading, settings: dict[str, str]) -> None:
    for key, name in SETTINGS:
        if key in settings:
            reading.put(name, settings.pop(key), key)
    if "seed" in reading.values:
        # The file's seed is the point; a tab that draws a new one would not make the same image.
        reading.values["randomize_seed"] = False
    if "Size" in settings:
        _read_size(reading, settings.pop("Size"))
    if "Sampler" in settings:
        _read_sampler(reading, settings.pop("Sampler"), settings.pop("Schedule type", None))


def _read_size(reading: _Reading, size: str) -> None:
    match = _SIZE.fullmatch(size)
    if not match:
        reading.notes.append(f"Size {_short(size)!r} was not used: it is not WIDTHxHEIGHT.")
        return
    reading.put("width", match[1], "Size")
    reading.put("height", match[2], "Size")


def _read_sampler(reading: _Reading, sampler: str, schedule: str | None) -> None:
    """A1111 names the noise schedule apart since version 1.9: "DPM++ 2M" + "Schedule type: Karras"."""
    name = sampler
    if schedule == "Karras" and f"{sampler} Karras" in reading.params["scheduler"].choices:
        name = f"{sampler} Karras"
    elif schedule not in (None, "Automatic"):
        reading.unused.append(("Schedule type", schedule))
    reading.put("scheduler", name, "Sampler")


def _read_unit(reading: _Reading, unit: dict[str, str]) -> None:
    unit = dict(unit)
    for key, name in UNIT_SETTINGS:
        if key in unit:
            reading.put(name, unit.pop(key), f"ControlNet 0 {key}")
    preprocessor = _read_module(reading, unit.pop("Module")) if "Module" in unit else None
    options = PREPROCESSORS[preprocessor].options if preprocessor else ()
    for key, name in PREPROCESSOR_SETTINGS:
        # A1111 writes -1 where the module has no such setting.
        if name in options and key in unit and not _is_unset(unit[key]):
            reading.put(name, unit.pop(key), f"ControlNet 0 {key}")
    reading.unused += [(f"ControlNet 0 {key}", value) for key, value in unit.items()]


def _read_module(reading: _Reading, module: str) -> str | None:
    """The preprocessor for A1111's (or the studio's) module name, with the switches that module implies."""
    preprocessor, switches = MODULES.get(module.lower(), (None, {}))
    choices = reading.params["preprocessor"].choices
    if preprocessor not in choices:
        reading.notes.append(
            f"ControlNet 0 Module {_short(module)!r} was not used: this tab's preprocessors are {', '.join(choices)}."
        )
        return None
    reading.put("preprocessor", preprocessor, "ControlNet 0 Module")
    reading.values.update(switches)
    return preprocessor


def _convert(param: Param, raw: object) -> object:
    """`raw` in the declared kind of `param`; ValueError says why not."""
    text = str(raw).strip()
    if param.kind == "whole":
        return _whole(text)
    if param.kind == "number":
        number = _float(text, "not a number")
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number
    if param.kind == "flag":
        if text not in ("True", "False"):
            raise ValueError("not True or False")
        return text == "True"
    if param.kind == "choice" and raw not in param.choices:
        raise ValueError(f"the studio offers {', '.join(param.choices)}")
    return raw


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        number = _float(text, "not a whole number")  # A1111 writes some whole numbers as "512.0"
    if not math.isfinite(number) or not number.is_integer():
        raise ValueError("not a whole number")
    return int(number)


def _float(text: str, meaning: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(meaning) from None


def _outside_range(param: Param, value: object) -> str:
    """Why `value` is outside what `param` allows as served, or ''."""
    if param.kind == "text":
        too_long = param.high is not None and len(value) > param.high
        return f"has {len(value)} characters; the limit is {number_text(param.high)}" if too_long else ""
    if param.kind not in ("whole", "number"):
        return ""
    if (param.low is not None and value < param.low) or (param.high is not None and value > param.high):
        unit = f" {param.unit}" if param.unit else ""
        return f"{value:g} is outside {number_text(param.low)} to {number_text(param.high)}{unit}"
    return ""


def _has_png_signature(path: str | os.PathLike) -> bool:
    with open(path, "rb") as file:
        return file.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE


def _is_unset(raw: str) -> bool:
    try:
        return float(raw) == -1
    except ValueError:
        return False


def _listed(chunks: Mapping[str, str]) -> str:
    if not chunks:
        return ""
    names = [_short(name) for name in list(chunks)[:_SHOWN_CHUNKS]]
    more = ", ..." if len(chunks) > _SHOWN_CHUNKS else ""
    return f"; its text chunks: {', '.join(names)}{more}"


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."
