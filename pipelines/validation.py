"""Server-side checks of every value, made from the parameter declarations: API callers skip the sliders.

`clean` checks one value against its declaration and returns it in its proper type; every refusal names the
field (its label, and the API name where that differs) and says what is allowed. What one request may be, the
rules between its fields, each endpoint says (`pipelines/endpoints.py`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from pipelines.block_weights import BlockError, canonical_spec, multipliers, split_spec
from pipelines.errors import StudioError
from pipelines.modes import CONTROL_MODES, MODES
from pipelines.parameters import (
    MAX_CONTROL_UNITS,
    MAX_LORA_WEIGHT,
    MAX_STYLE_SCALE,
    PARAMETERS,
    Param,
    number_text,
)
from pipelines.request import ControlUnit, LoraChoice, LoraWeight

MAX_GRID_VALUES = 8  # weights or seeds in one grid
# A range among listed numbers: "0-1 step 0.25", "-1 - 1 step 0.5" (no nested quantifiers: linear on any text).
_RANGE = re.compile(r"(?P<start>[-+]?[\d.]+)\s*-\s*(?P<end>[-+]?[\d.]+)\s+step\s+(?P<step>[\d.]+)", re.IGNORECASE)
# Lists written as text are bounded before they are split: parsing a megabyte of "stripes:1," held the server's
# GIL for 1.4 s. 2000 characters hold far more than the counts below allow.
MAX_LIST_CHARS = 2000
MAX_LORAS = 8  # LoRAs in one request (each loads and runs beside the model)
MAX_NAMES = 64  # LoRA names listed for a grid
MAX_NAME_CHARS = 255  # a file name's limit on common file systems


def clean(param: Param, value: object, notes: list[str]) -> object:
    """`value` checked against `param` (already bound) and converted to its type; None means the default."""
    if value is None and param.kind != "image":
        value = param.default
    return KINDS[param.kind].clean(param, value, notes)


def field_name(param: Param) -> str:
    """The label a person sees, with the API name where it differs."""
    same = param.label.lower().replace(" ", "_") == param.name
    return param.label if same else f"{param.label} ({param.name})"


def _text(param: Param, value: object, notes: list[str]) -> str:
    if not isinstance(value, str):
        raise StudioError(f"{field_name(param)} must be text, not {show(value)}.")
    if param.high is not None and len(value) > param.high:
        raise StudioError(f"{field_name(param)} has {len(value)} characters; the limit is {number_text(param.high)}.")
    _check_characters(field_name(param), value)
    return value


def _whole(param: Param, value: object, notes: list[str]) -> int:
    number = int(_number_in_range(param, value, whole=True))
    multiple = param.multiple_of
    if multiple and number % multiple:
        snapped = max(multiple, number // multiple * multiple)
        notes.append(f"{field_name(param)} {number} was rounded down to {snapped}, a multiple of {multiple} as the "
                     f"model needs.")
        return snapped
    return number


def _number(param: Param, value: object, notes: list[str]) -> float:
    return float(_number_in_range(param, value, whole=False))


def _flag(param: Param, value: object, notes: list[str]) -> bool:
    if not isinstance(value, bool):
        raise StudioError(f"{field_name(param)} must be true or false, not {show(value)}.")
    return value


def _choice(param: Param, value: object, notes: list[str]) -> str:
    if not isinstance(value, str) or value not in param.choices:
        raise StudioError(f"{field_name(param)} must be one of: {', '.join(param.choices)}; got {show(value)}.")
    return value


def _image(param: Param, value: object, notes: list[str]) -> object:
    if value is None or isinstance(value, (str, os.PathLike, Image.Image)):
        return value
    raise StudioError(f"{field_name(param)} must be an image file, not {show(value)}.")


def _loras(param: Param, value: object, notes: list[str]) -> tuple[LoraChoice, ...]:
    """'name:weight@blocks, ...' text (or LoRA choices); a LoRA named twice is one entry with the weights added."""
    if isinstance(value, str):
        _check_list_length(param, value)
        _check_characters(field_name(param), value)
        choices = [_parse_lora(param, item) for item in filter(None, (part.strip() for part in value.split(",")))]
    elif isinstance(value, (tuple, list)) and all(isinstance(choice, LoraChoice) for choice in value):
        choices = list(value)
    else:
        raise StudioError(f"{field_name(param)} must be text like 'stripes:0.8, mono:1', not {show(value)}.")
    if len(choices) > MAX_LORAS:
        raise StudioError(f"{field_name(param)}: at most {MAX_LORAS} LoRAs run at once; got {len(choices)}.")
    merged: dict[str, LoraChoice] = {}
    for choice in choices:
        _check_characters(f"The LoRA name {choice.name[:40]!r}", choice.name)
        if any(len(part) > MAX_NAME_CHARS for part in Path(choice.name).parts):
            raise StudioError(f"{field_name(param)}: the LoRA name {choice.name[:40]!r}... has a part longer than "
                              f"{MAX_NAME_CHARS} characters, which no file name can be.")
        blocks = _blocks(param, choice.blocks, choice.label)
        weight = _lora_weight(param, choice)
        if choice.name in merged:
            merged[choice.name] = _merged(param, merged[choice.name], LoraChoice(choice.name, weight, blocks), notes)
        else:
            merged[choice.name] = LoraChoice(choice.name, weight, blocks)
    for choice in merged.values():
        _lora_weight(param, choice)
    return tuple(merged.values())


def _merged(param: Param, first: LoraChoice, again: LoraChoice, notes: list[str]) -> LoraChoice:
    """A LoRA named twice: one entry with the weights added, where its block weights agree."""
    if first.blocks != again.blocks:
        raise StudioError(f"{field_name(param)}: {first.label!r} is named twice with different block weights "
                          f"(@{first.blocks or 'all'}, @{again.blocks or 'all'}); name it once with one vector, e.g. "
                          f"{first.label}:1@in=0.5:out=1.")
    notes.append(f"The LoRA {first.label!r} was named more than once; its weights were added.")
    return LoraChoice(first.name, first.weight + again.weight, first.blocks)


def _parse_lora(param: Param, item: str) -> LoraChoice:
    """`name`, `name:weight`, `name@blocks` or `name:weight@blocks`."""
    head, blocks = _split_spec(param, item)
    name, colon, weight = head.rpartition(":")
    if not colon:
        return LoraChoice(head.strip(), 1.0, blocks)
    try:
        return LoraChoice(name.strip(), float(weight), blocks)
    except ValueError:
        raise StudioError(
            f"{field_name(param)}: write each LoRA as name:weight, e.g. stripes:0.8 (block weights after @: "
            f"stripes:0.8@out); got {item!r}."
        ) from None


def _split_spec(param: Param, item: str) -> tuple[str, str]:
    try:
        return split_spec(item)
    except BlockError as error:
        raise StudioError(f"{field_name(param)}: {error}") from None


def _blocks(param: Param, spec: object, label: str) -> str:
    """A block-weight spec in its one written form, checked against the served model's blocks where the parameter is
    bound to them (its choices)."""
    if not isinstance(spec, str):
        raise StudioError(f"{field_name(param)}: the block weights of {label!r} must be text like 'out'; got "
                          f"{show(spec)}.")
    if not spec:
        return ""
    try:
        canonical = canonical_spec(spec)
        if isinstance(param.choices, tuple) and param.choices:
            multipliers(canonical, param.choices)
    except BlockError as error:
        raise StudioError(f"{field_name(param)}: the block weights of {label!r}: {error}") from None
    return canonical


def _lora_weight(param: Param, choice: LoraChoice) -> float:
    weight = choice.weight
    if not _is_number(weight) or not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
        raise StudioError(
            f"{field_name(param)}: the weight of {choice.label!r} must be a number from {-MAX_LORA_WEIGHT:g} to "
            f"{MAX_LORA_WEIGHT:g}; got {show(weight)}."
        )
    return float(weight)


def _names(param: Param, value: object, notes: list[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise StudioError(f"{field_name(param)} must be a list of LoRA names, not {show(value)}.")
    if len(value) > MAX_NAMES:
        raise StudioError(f"{field_name(param)}: at most {MAX_NAMES} names; got {len(value)}.")
    for name in value:
        if len(name) > MAX_NAME_CHARS:
            raise StudioError(f"{field_name(param)}: a name has {len(name)} characters; the limit is {MAX_NAME_CHARS}.")
        _check_characters(field_name(param), name)
    return tuple(dict.fromkeys(name.strip() for name in value if name.strip()))


def _lora_weights(param: Param, value: object, notes: list[str]) -> tuple[LoraWeight, ...]:
    """Weights as `_numbers` reads them, each item with block weights after @ if it likes: '0-1 step 0.5, 1@out'."""
    if isinstance(value, str):
        _check_list_length(param, value)
        _check_characters(field_name(param), value)
        items = [item.strip() for item in value.replace(";", ",").split(",") if item.strip()]
        weights = [LoraWeight(weight, blocks) for item in items
                   for weight, blocks in _weights_of_item(param, item)]
    elif isinstance(value, (list, tuple)):
        weights = [item if isinstance(item, LoraWeight) else LoraWeight(item) for item in value]
    else:
        raise StudioError(f"{field_name(param)} must be numbers separated by commas, like '0.5, 1@out'; got "
                          f"{show(value)}.")
    if len(weights) > MAX_GRID_VALUES:
        raise StudioError(f"{field_name(param)}: at most {MAX_GRID_VALUES} values fit in one grid; got {len(weights)}.")
    return tuple(LoraWeight(_number_in_range(param, weight.weight, whole=False),
                            _blocks(param, weight.blocks, str(weight))) for weight in weights)


def _weights_of_item(param: Param, item: str) -> list[tuple[float, str]]:
    number, blocks = _split_spec(param, item)
    return [(weight, blocks) for weight in _parse_item(param, number.strip())]


def _numbers(param: Param, value: object, notes: list[str]) -> tuple[float, ...]:
    return tuple(float(number) for number in _listed_numbers(param, value, whole=False))


def _wholes(param: Param, value: object, notes: list[str]) -> tuple[int, ...]:
    return tuple(int(number) for number in _listed_numbers(param, value, whole=True))


def _listed_numbers(param: Param, value: object, whole: bool) -> list[float]:
    """'0.5, 1' text, ranges like '0-1 step 0.25' among the items, or a list of numbers; each within the declared
    range."""
    if isinstance(value, str):
        _check_list_length(param, value)
        _check_characters(field_name(param), value)
        items = [item.strip() for item in value.replace(";", ",").split(",") if item.strip()]
        numbers = [number for item in items for number in _parse_item(param, item)]
    elif isinstance(value, (list, tuple)):
        numbers = list(value)
    else:
        raise StudioError(f"{field_name(param)} must be numbers separated by commas, like '1, 2'; got {show(value)}.")
    if len(numbers) > MAX_GRID_VALUES:
        raise StudioError(f"{field_name(param)}: at most {MAX_GRID_VALUES} values fit in one grid; got {len(numbers)}.")
    return [_number_in_range(param, number, whole) for number in numbers]


def _check_list_length(param: Param, text: str) -> None:
    if len(text) > MAX_LIST_CHARS:
        raise StudioError(f"{field_name(param)} has {len(text)} characters; the limit is {MAX_LIST_CHARS}.")


def _parse_item(param: Param, item: str) -> list[float]:
    """One number, or a range 'start-end step size' (A1111's X/Y plot and the LoRA Block Weight extension write
    ranges so): its ends included, counted before it is made, so '0-1000000 step 0.001' is refused, not built."""
    found = _RANGE.fullmatch(item)
    if found is None:
        return [_parse_number(param, item)]
    start, end, step = (_parse_number(param, found[name]) for name in ("start", "end", "step"))
    if not (step > 0 and end >= start) or not all(map(math.isfinite, (start, end, step))):
        raise StudioError(f"{field_name(param)}: the range {item!r} must go up from its start to its end by a step "
                          "above 0, like '0-1 step 0.25'.")
    count = math.floor((end - start) / step + 1e-9) + 1
    if count > MAX_GRID_VALUES:
        raise StudioError(f"{field_name(param)}: the range {item!r} has {count} values; at most {MAX_GRID_VALUES} "
                          "fit in one grid.")
    return [round(start + index * step, 10) for index in range(count)]


def _parse_number(param: Param, item: str) -> float:
    try:
        return float(item)
    except ValueError:
        raise StudioError(f"{field_name(param)} must be numbers separated by commas; {item!r} is not one.") from None


def _number_in_range(param: Param, value: object, whole: bool) -> float:
    kind = "whole number" if whole else "number"
    if not _is_number(value) or (whole and not float(value).is_integer()):
        raise StudioError(f"{field_name(param)} must be a {kind}{_range_text(param)}; got {show(value)}.")
    if (param.low is not None and value < param.low) or (param.high is not None and value > param.high):
        raise StudioError(f"{field_name(param)} must be a {kind}{_range_text(param)}; got {value:g}.")
    return value


def _range_text(param: Param) -> str:
    return f" from {param.range_text}" if param.low is not None and param.high is not None else ""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_characters(what: str, text: str) -> None:
    if "\x00" in text:
        raise StudioError(f"{what} contains a NUL character (\\x00); remove it.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise StudioError(f"{what} contains an unpaired surrogate, which is not valid Unicode text.") from None


def show(value: object) -> str:
    """A value as the refusal quotes it: short, and without the contents of a long list or text."""
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)} item{'' if len(value) == 1 else 's'}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Per-block style scales as diffusers' `set_ip_adapter_scale` takes them: a number for a side, or a number or one per
# transformer layer for each block (the blocks the UNet has are checked when the scales are set: pipelines/style.py).
_STYLE_SIDES = ("down", "mid", "up")
_STYLE_BLOCK = re.compile(r"block_\d{1,2}")
MAX_STYLE_LAYERS = 16  # transformer layers a block's list names (SDXL's have 2 or 3)


def _style_mode(param: Param, value: object, notes: list[str]) -> str:
    """A preset's name, or per-block scales (a mapping, or JSON text of one) as canonical JSON text."""
    if isinstance(value, str) and value in param.choices:
        return value
    if isinstance(value, str) and value.lstrip().startswith("{"):
        _check_list_length(param, value)
        try:
            value = json.loads(value)
        except ValueError:
            raise StudioError(f"{field_name(param)}: the per-block scales are not valid JSON.") from None
    if not isinstance(value, Mapping):
        raise StudioError(f"{field_name(param)} must be one of: {', '.join(param.choices)}, or per-block scales like "
                          f'{{"up": {{"block_0": [0, 1, 0]}}}}; got {show(value)}.')
    checked = {side: _side_scales(param, side, scales) for side, scales in value.items()}
    return json.dumps(checked, sort_keys=True, separators=(",", ":"))


def _side_scales(param: Param, side: object, scales: object) -> object:
    if side not in _STYLE_SIDES:
        raise StudioError(f"{field_name(param)}: the per-block scales name {show(side)}; the sides are "
                          f"{', '.join(_STYLE_SIDES)}.")
    if not isinstance(scales, Mapping) or side == "mid":
        return _style_number(param, scales, side)
    blocks = {}
    for block, layers in scales.items():
        where = f"{side}.{block}"
        if not isinstance(block, str) or not _STYLE_BLOCK.fullmatch(block):
            raise StudioError(f"{field_name(param)}: {show(block)} in {side!r} is no block; write block_0, block_1, "
                              "...")
        if isinstance(layers, list) and 0 < len(layers) <= MAX_STYLE_LAYERS:
            blocks[block] = [_style_number(param, layer, where) for layer in layers]
        else:
            blocks[block] = _style_number(param, layers, where)
    return blocks


def _style_number(param: Param, value: object, where: str) -> float:
    if not _is_number(value) or not 0 <= value <= MAX_STYLE_SCALE:
        raise StudioError(f"{field_name(param)}: {where} must be a number from 0 to {MAX_STYLE_SCALE:g}, or for a "
                          f"block a list of them; got {show(value)}.")
    return float(value)


# A control unit's settings and the declared parameter each is checked against
UNIT_FIELDS = {
    "mode": None, "image": "image", "preprocessor": None, "scale": "controlnet_scale", "start": "control_start",
    "end": "control_end",
}


def _units(param: Param, value: object, notes: list[str]) -> tuple[ControlUnit, ...]:
    if value is None or value == "" or (isinstance(value, (list, tuple)) and not value):
        return ()
    if not isinstance(value, (list, tuple)):
        raise StudioError(
            f"{field_name(param)} must be a list of units like [{{'mode': 'depth', 'image': <file>}}]; got "
            f"{show(value)}."
        )
    if len(value) > MAX_CONTROL_UNITS:
        raise StudioError(
            f"{field_name(param)}: at most {MAX_CONTROL_UNITS} ControlNets run at once; got {len(value)}."
        )
    return tuple(_unit(f"{field_name(param)}, unit {number}", unit) for number, unit in enumerate(value, start=1))


def _unit(what: str, unit: object) -> ControlUnit:
    if isinstance(unit, ControlUnit):
        unit = {name: getattr(unit, name) for name in UNIT_FIELDS}
    if not isinstance(unit, Mapping):
        raise StudioError(f"{what} must be a mapping of {', '.join(UNIT_FIELDS)}; got {show(unit)}.")
    unknown = sorted(str(key) for key in unit if key not in UNIT_FIELDS)
    if unknown:
        raise StudioError(f"{what} has settings the studio does not know: {', '.join(unknown)}.")
    mode = unit.get("mode")
    if mode not in CONTROL_MODES:
        raise StudioError(f"{what}: mode must be one of {', '.join(CONTROL_MODES)}; got {show(mode)}.")
    preprocessor = unit.get("preprocessor", "none")
    if preprocessor not in MODES[mode].preprocessors:
        raise StudioError(
            f"{what}: preprocessor must be one of {', '.join(MODES[mode].preprocessors)}; got {show(preprocessor)}."
        )
    image = unit.get("image")
    if isinstance(image, Mapping):  # a file sent with handle_file, already checked by Gradio to be an upload
        image = image.get("path")
    if image is None:
        raise StudioError(f"{what}: no image was given.")
    checked = {}
    for name in ("image", "scale", "start", "end"):
        declared = PARAMETERS[UNIT_FIELDS[name]]
        raw = image if name == "image" else unit.get(name, declared.default)
        try:
            checked[name] = clean(declared, raw, [])
        except StudioError as error:
            raise StudioError(f"{what}: {error}") from None
    if checked["start"] >= checked["end"]:
        raise StudioError(f"{what}: start ({checked['start']:g}) must be below end ({checked['end']:g}).")
    return ControlUnit(mode=mode, preprocessor=preprocessor, **checked)


@dataclass(frozen=True)
class Kind:
    """What a kind of parameter is (`Param.kind` names it), in the spirit of ComfyUI's input types: the type API
    callers send (the endpoint signature's annotation), how a value is checked and converted, and which input
    shows it on the page (`ui/fields.py` makes it)."""

    api_type: type
    clean: Callable[[Param, object, list[str]], object]
    component: Literal["textbox", "slider", "checkbox", "dropdown", "multiselect", "image", "units"]


KINDS: Mapping[str, Kind] = {
    "text": Kind(str, _text, "textbox"),
    "whole": Kind(int, _whole, "slider"),
    "number": Kind(float, _number, "slider"),
    "flag": Kind(bool, _flag, "checkbox"),
    "choice": Kind(str, _choice, "dropdown"),
    "image": Kind(str, _image, "image"),
    "loras": Kind(str, _loras, "textbox"),
    "names": Kind(list, _names, "multiselect"),
    "numbers": Kind(str, _numbers, "textbox"),
    "lora_weights": Kind(str, _lora_weights, "textbox"),
    "wholes": Kind(str, _wholes, "textbox"),
    "units": Kind(list, _units, "units"),
    "style_mode": Kind(str, _style_mode, "dropdown"),
}
