"""How an image made here or by another tool was made, as the studio's own parameters for one mode.

Where each tool keeps its settings: the studio, AUTOMATIC1111 and Forge in a PNG's `parameters` text chunk, and
A1111 and Forge in a JPEG's or WEBP's EXIF UserComment; ComfyUI in a PNG's `prompt` chunk (its API-format graph);
InvokeAI in `invokeai_metadata` (3.0 and later) or `sd-metadata` (2.x). Only the file's header is read: Pillow
reads a PNG's text chunks before the pixel data and a JPEG's or WEBP's EXIF without decoding a pixel, and a
declared size past its decompression-bomb limit is refused unopened.

The text is someone else's: its length is checked against a stated limit before it is parsed
(`pipelines/metadata.py`), every value is converted with the kind its parameter declares
(`pipelines/parameters.py`), and whatever has no place in the studio is named in the notes, never dropped
silently. A value outside what the studio serves becomes the nearest value it serves, with a note saying so (a
seed of -1 turns Randomize seed on), so "Send" never fills a tab with a value Generate would refuse.
"""

from __future__ import annotations

import math
import os
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from pipelines.a1111 import (
    CONTROLNET,
    DENOISING_STRENGTH,
    HIRES_UPSCALE,
    LORA_HASHES,
    MASK_BLUR,
    MODE,
    MODEL,
    MODULE,
    NEGATIVE_PROMPT,
    READY_MAP,
    SAMPLER,
    SCHEDULE_TYPE,
    SEED,
    SETTINGS,
    SIZE,
    STYLE_REFERENCE,
    THRESHOLD_A,
    THRESHOLD_B,
    UNIT_SETTINGS,
    ControlModule,
    Setting,
    lora_hash_name,
    module_named,
    read_lora_hashes,
    unit_key,
)
from pipelines.block_weights import BlockError, multipliers
from pipelines.endpoints import MODE_ENDPOINTS
from pipelines.errors import StudioError
from pipelines.lora.hashes import MAX_SEARCH_BYTES, find_local, local_name, short_hash
from pipelines.metadata import (
    A1111,
    MAX_JSON_CHARS,
    MAX_PARAMETERS_CHARS,
    check_length,
    decode_user_comment,
    parse_generation_text,
    parse_settings_line,
)
from pipelines.modes import MODES, Mode
from pipelines.parameters import (
    MAX_CONTROL_UNITS,
    MAX_LORA_WEIGHT,
    MAX_SEED,
    PARAMETERS,
    Param,
    Served,
    number_text,
)
from pipelines.preprocessors import PREPROCESSORS
from pipelines.validation import MAX_LORAS, clean

if TYPE_CHECKING:
    from pipelines.lora import LoraManager

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# PNG text chunks that hold a tool's settings, in the order tried, with the most of each that is read
TEXT_CHUNKS = (
    ("parameters", MAX_PARAMETERS_CHARS),  # the studio, AUTOMATIC1111, Forge
    ("invokeai_metadata", MAX_JSON_CHARS),  # InvokeAI 3.0 and later
    ("sd-metadata", MAX_JSON_CHARS),  # InvokeAI 2.x
    ("prompt", MAX_JSON_CHARS),  # ComfyUI's API graph (its `workflow` chunk is the editor's layout)
)
EXIF_IFD = 0x8769  # the Exif sub-IFD, where UserComment lives
USER_COMMENT = 0x9286
# An EXIF block big enough for a UserComment at the text limit (UTF-16: two bytes a character) and a camera's
# usual tags; Pillow parses EXIF in Python, so its size is checked before.
MAX_EXIF_BYTES = 4 * MAX_PARAMETERS_CHARS
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")  # PNG, JPEG; WEBP is "RIFF", a size, then "WEBP"
TEXT_MODE = "text"
# A ControlNet unit's settings every unit has (weight, start, end), and its preprocessor's options.
OWN_UNIT_SETTINGS = tuple(setting for setting in UNIT_SETTINGS if setting.unit_field)
OPTION_SETTINGS = tuple(setting for setting in UNIT_SETTINGS if setting.read == "declared" and not setting.unit_field)
# Every A1111 module some mode has; a mode's own are in its declaration (pipelines/modes.py).
MODULES: Mapping[str, ControlModule] = {name: module for mode in MODES.values() for name, module in
                                        mode.a1111_modules.items()}
_OLD_UNIT_KEY = re.compile(rf"{CONTROLNET}(?:-0)? ([A-Za-z][A-Za-z ]*)")
_EXTRA_UNIT_KEY = re.compile(rf"{CONTROLNET} [1-9]")
_WORD_BREAKS = re.compile(r"[^a-z0-9]+")
_SIZE = re.compile(r"\s*(\d+)\s*x\s*(\d+)\s*")
# What validation refuses in any text (pipelines/validation.py): NUL, and halves of surrogate pairs from JSON.
_NOT_TEXT = re.compile(r"[\x00\ud800-\udfff]")
_SHOWN_CHARS = 60
_SHOWN_CHUNKS = 5
_SHOWN_UNUSED = 40
_SHOWN_NOTES = 40


@dataclass(frozen=True)
class PngSettings:
    """What an image's parameters mean here: the mode tab they belong to, its values by parameter name, and notes."""

    mode: str
    values: dict[str, object]
    notes: tuple[str, ...]
    source: str = A1111  # the tool whose layout was read

    def as_json(self) -> dict[str, object]:
        return {"mode": self.mode, "values": dict(self.values), "notes": list(self.notes), "source": self.source}


def read_parameters_text(path: str | os.PathLike | None) -> str:
    """The generation settings text in the image at `path` (see the module's docstring for where each tool keeps
    it); only the file's header is read."""
    if path is None or not os.fspath(path).strip():
        raise StudioError("No image was given: upload a PNG, JPEG or WEBP first.")
    name = Path(path).name
    if not os.path.isfile(path):
        raise StudioError(f"The file {name!r} does not exist.")
    chunks, comment = _header_text(path, name)
    for key, limit in TEXT_CHUNKS:
        text = chunks.get(key, "")
        if text.strip() and (key != "prompt" or text.lstrip().startswith("{")):
            return _checked(name, f"{key!r} text chunk", text, limit)
    if comment.strip():
        return _checked(name, "EXIF UserComment", comment, MAX_PARAMETERS_CHARS)
    if "workflow" in chunks:
        raise StudioError(
            f"{name!r} holds a ComfyUI 'workflow' chunk but not the API-format 'prompt' chunk the settings are read "
            "from; save the image again with ComfyUI's SaveImage node."
        )
    raise StudioError(
        f"{name!r} carries no generation parameters (no 'parameters' text chunk, no EXIF UserComment, no ComfyUI "
        f"or InvokeAI metadata{_listed(chunks)})."
    )


def settings_from_parameters(text: str, served: Served, loras: LoraManager | None = None) -> PngSettings:
    """The studio parameters in `text` (any layout `read_parameters_text` returns), for the mode they were made in.

    With `loras`, the LoRAs the text names by hash (`Lora hashes`) are looked for in its LoRA folder, by hash.
    """
    parsed = parse_generation_text(text)
    settings = dict(parsed.settings)
    unit = _controlnet_unit(settings)
    mode, notes = _mode(settings.pop(MODE.key, None) or _edit_mode(settings), unit)
    reading = _Reading(_bound_parameters(mode, served), notes=notes + parsed.notes)
    reading.put("prompt", parsed.prompt, "Prompt")
    reading.put("negative_prompt", parsed.negative_prompt, NEGATIVE_PROMPT)
    hashes = settings.pop(LORA_HASHES.key) if loras is not None and LORA_HASHES.key in settings else ""
    instead = _read_lora_hashes(reading, hashes, [name for name, _ in parsed.loras], loras) if hashes else {}
    _read_loras(reading, [(instead.get(name, name), weight, parsed.lora_blocks.get(name, ""))
                          for name, weight in parsed.loras], parsed.partly_read_lora_tags)
    _read_settings(reading, settings)
    if unit and mode.is_controlled:
        _read_unit(reading, unit)
    extra = [unit] if unit and not mode.is_controlled else []
    extra += [parse_settings_line(settings.pop(key)) for key in list(settings) if _EXTRA_UNIT_KEY.fullmatch(key)]
    if extra:
        _read_extra_units(reading, extra, first=int(mode.is_controlled))
    reading.unused += settings.items()
    return reading.result(mode, parsed.source)


@dataclass
class _Reading:
    params: Mapping[str, Param]  # the mode's, bound to what is served
    values: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    unused: list[tuple[str, str]] = field(default_factory=list)  # the file's settings with no place here

    def put(self, name: str, raw: object, source: str) -> None:
        """`raw` (the file's setting `source`) as parameter `name`: converted with its declared kind, then fitted
        into what is served."""
        param = self.params[name]
        try:
            value = _convert(param, raw)
        except ValueError as reason:
            self.notes.append(f"{source} {_short(raw)!r} was not used: {reason}.")
            return
        value, note = _fitted(param, value)
        if note:
            self.notes.append(note)
        self.values[name] = value

    def result(self, mode: Mode, source: str) -> PngSettings:
        values = {name: self.values[name] for name in mode.parameters if name in self.values}
        notes = self.notes[:_SHOWN_NOTES]
        if len(self.notes) > _SHOWN_NOTES:
            notes.append(f"And {len(self.notes) - _SHOWN_NOTES} more notes like these.")
        if self.unused:
            listed = "; ".join(f"{_short(key)}: {_short(value)}" for key, value in self.unused[:_SHOWN_UNUSED])
            more = f"; and {len(self.unused) - _SHOWN_UNUSED} more" if len(self.unused) > _SHOWN_UNUSED else ""
            notes.append(f"Not used: {listed}{more}.")
        return PngSettings(mode.name, values, tuple(notes), source)


# Reading the file


def _header_text(path: str | os.PathLike, name: str) -> tuple[dict[str, str], str]:
    """The text chunks and the EXIF UserComment ('' if none), read from the header without decoding pixels."""
    # Pillow warns about large images when they are opened; the pixels are never decoded here.
    with warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning):
        try:
            with Image.open(path, formats=IMAGE_FORMATS) as opened:
                chunks = {key: value for key, value in opened.info.items() if isinstance(value, str)}
                return chunks, _user_comment(opened, name)
        except Image.DecompressionBombError:
            raise StudioError(f"{name!r} declares a size too large to open safely.") from None
        except (OSError, ValueError, SyntaxError, EOFError):  # UnidentifiedImageError is an OSError
            if not _has_image_signature(path):
                raise StudioError(f"{name!r} is not a PNG, JPEG or WEBP image; only their metadata is read.") from None
            raise StudioError(f"{name!r} is a damaged image: its metadata cannot be read.") from None


def _user_comment(opened: Image.Image, name: str) -> str:
    """EXIF UserComment, where A1111 and Forge write a JPEG's or WEBP's parameters (modules/images.py save_image)."""
    # Only EXIF found in the header: Pillow's PNG `getexif` decodes the whole image to look for a later eXIf chunk.
    raw = opened.info.get("exif")
    if not isinstance(raw, bytes):
        return ""
    if len(raw) > MAX_EXIF_BYTES:
        raise StudioError(f"{name!r} has {len(raw):,} bytes of EXIF data; the studio reads at most {MAX_EXIF_BYTES:,}.")
    try:
        comment = opened.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except (OSError, ValueError, SyntaxError, EOFError, KeyError, IndexError, TypeError, struct.error):
        raise StudioError(f"{name!r} has damaged EXIF data: its UserComment cannot be read.") from None
    return decode_user_comment(comment) if isinstance(comment, (bytes, str)) else ""


def _checked(name: str, where: str, text: str, limit: int) -> str:
    try:
        check_length(text, limit)
    except StudioError as refused:
        raise StudioError(f"{name!r}, {where}: {refused}") from None
    return text


def _has_image_signature(path: str | os.PathLike) -> bool:
    with open(path, "rb") as file:
        start = file.read(12)
    return start.startswith(SIGNATURES) or (start[:4] == b"RIFF" and start[8:12] == b"WEBP")


# The mode and its ControlNet unit


def _bound_parameters(mode: Mode, served: Served) -> dict[str, Param]:
    return {param.name: param for param in MODE_ENDPOINTS[mode.name].params(served)}


def _controlnet_unit(settings: dict[str, str]) -> dict[str, str] | None:
    """The first ControlNet unit's settings, taken out of `settings`; the studio runs one ControlNet."""
    if unit_key(0) in settings:
        return parse_settings_line(settings.pop(unit_key(0)))
    old_keys = {match[1]: key for key in list(settings) if (match := _OLD_UNIT_KEY.fullmatch(key))}
    return {name: settings.pop(key) for name, key in old_keys.items()} or None


def _edit_mode(settings: Mapping[str, str]) -> str | None:
    """AUTOMATIC1111 names no mode: a mask blur means inpainting, a denoising strength without a hires pass img2img."""
    if MASK_BLUR.key in settings:
        return "inpaint"
    return "img2img" if DENOISING_STRENGTH.key in settings and HIRES_UPSCALE not in settings else None


def _unit_mode(unit: Mapping[str, str]) -> str | None:
    """The mode a ControlNet unit belongs to, by the mode's A1111 word in its module name (depth_leres) or, for
    module "none", in its model name (control_v11p_sd15_canny), where the mode's own name as a word also tells: the
    studio writes its ControlNets' names, and a local one is named as it likes (embedded-controlnet-edge)."""
    module, model = unit.get(MODULE.key, "").lower(), unit.get(MODEL.key, "").lower()
    if module not in ("", READY_MAP):
        return next((mode.name for mode in MODES.values() if mode.a1111_word and mode.a1111_word in module), None)
    words = set(_WORD_BREAKS.split(model))
    return next((mode.name for mode in MODES.values()
                 if mode.a1111_word and (mode.a1111_word in model or mode.name in words)), None)


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
    module, model = unit.get(MODULE.key, ""), unit.get(MODEL.key, "")
    if mode is None:
        notes.append(
            f"The studio has no mode for ControlNet module {_short(module)!r} (model {_short(model)!r}); "
            "the settings go to the Text tab without it."
        )
        return MODES[TEXT_MODE], notes
    return MODES[mode], notes


def _read_unit(reading: _Reading, unit: dict[str, str]) -> None:
    unit, name = dict(unit), unit_key(0)
    for setting in OWN_UNIT_SETTINGS:
        if setting.key in unit:
            reading.put(setting.fields[0], unit.pop(setting.key), f"{name} {setting.key}")
    _keep_start_below_end(reading.values, reading.notes, "control_start", "control_end", name)
    preprocessor = _read_module(reading, unit.pop(MODULE.key)) if MODULE.key in unit else None
    options = PREPROCESSORS[preprocessor].options if preprocessor else ()
    for setting in OPTION_SETTINGS:
        # A1111 writes -1 where the module has no such setting.
        if setting.fields[0] in options and setting.key in unit and not _is_unset(unit[setting.key]):
            reading.put(setting.fields[0], unit.pop(setting.key), f"{name} {setting.key}")
    _keep_thresholds_in_order(reading)
    reading.unused += [(f"{name} {key}", value) for key, value in unit.items()]


def _read_module(reading: _Reading, module: str) -> str | None:
    """The preprocessor for A1111's (or the studio's) module name, with the switches that module implies."""
    found = module_named(MODULES, module)
    choices = reading.params["preprocessor"].choices
    source = f"{unit_key(0)} {MODULE.key}"
    if found is None or found.preprocessor not in choices:
        reading.notes.append(f"{source} {_short(module)!r} was not used: this tab's preprocessors are "
                             f"{', '.join(choices)}.")
        return None
    reading.put("preprocessor", found.preprocessor, source)
    reading.values.update(found.switches)
    return found.preprocessor


def _read_extra_units(reading: _Reading, units: list[dict[str, str]], first: int) -> None:
    """Units beyond the mode's own, as `control_units` without their maps (a PNG holds none)."""
    room = MAX_CONTROL_UNITS - first  # the mode's own unit counts
    read = []
    for number, unit in enumerate(units, start=first):
        mode = _unit_mode(unit)
        if mode is None or len(read) == room:  # no ControlNet here for its module, or no room for it
            if mode is not None:
                reading.notes.append(f"{unit_key(number)} was not used: at most {MAX_CONTROL_UNITS} ControlNets "
                                     "run at once.")
            reading.unused += [(f"{unit_key(number)} {key}", value) for key, value in unit.items()]
            continue
        unit = dict(unit)
        # A module of another mode, or none of the mode's: the map is taken as it is.
        found = module_named(MODES[mode].a1111_modules, unit.pop(MODULE.key, READY_MAP))
        read_unit = {"mode": mode, "preprocessor": found.preprocessor if found else READY_MAP}
        for setting in OWN_UNIT_SETTINGS:
            _read_unit_setting(reading, read_unit, setting, unit.pop(setting.key, None), unit_key(number))
        _keep_start_below_end(read_unit, reading.notes, "start", "end", unit_key(number))
        read.append(read_unit)
        reading.unused += [(f"{unit_key(number)} {key}", value) for key, value in unit.items()]
        reading.notes.append(f"{unit_key(number)} ({mode}): a PNG holds no control map; give its unit an image.")
    if read:
        reading.values["control_units"] = read


def _read_unit_setting(reading: _Reading, unit: dict, setting: Setting, raw: str | None, unit_name: str) -> None:
    """One of an extra unit's numbers, fitted like the mode's own; the parameter's default when absent or unusable."""
    param = PARAMETERS[setting.fields[0]]
    value = param.default
    if raw is not None:
        try:
            value, note = _fitted(param, _convert(param, raw))
        except ValueError as reason:
            note = (f"{unit_name} {setting.key} {_short(raw)!r} was not used: {reason}; "
                    f"{number_text(param.default)} is sent.")
        if note:
            reading.notes.append(note)
    unit[setting.unit_field] = value


def _keep_start_below_end(values: dict, notes: list[str], start: str, end: str, unit: str) -> None:
    """Validation refuses a control start at or past its end: send the defaults, 0 to 1, instead."""
    low, high = values.get(start, 0.0), values.get(end, 1.0)
    if low >= high:
        notes.append(f"{unit}: the guidance start {low:g} is not below its end {high:g}; 0 to 1 is sent instead.")
        values[start], values[end] = 0.0, 1.0


def _keep_thresholds_in_order(reading: _Reading) -> None:
    """Validation refuses a Canny low threshold above the high one: the file's two values swap places."""
    low, high = reading.values.get("low_threshold"), reading.values.get("high_threshold")
    if low is not None and high is not None and low > high:
        reading.notes.append(f"{unit_key(0)} {THRESHOLD_A.key} {low} is above {THRESHOLD_B.key} {high}; they are sent "
                             "swapped.")
        reading.values["low_threshold"], reading.values["high_threshold"] = high, low


# Prompting and sampling


def _read_loras(reading: _Reading, loras: list[tuple[str, float, str]], partly_read: list[str]) -> None:
    """The LoRAs as the LoRA box's 'name:weight@blocks, ...' text; a name twice is one LoRA, its weights added (and
    its first block weights kept)."""
    weights: dict[str, float] = {}
    times: dict[str, int] = {}
    blocks: dict[str, str] = {}
    for name, weight, spec in loras:
        if not name or "," in name or _NOT_TEXT.search(name):
            reading.notes.append(f"The LoRA {_short(name)!r} was not used: the LoRA box takes no name with a comma "
                                 "or a character that is not text.")
        elif not math.isfinite(weight):
            reading.notes.append(f"The LoRA {_short(name)!r} was not used: its weight {weight} is not a number.")
        else:
            weights[name] = weights.get(name, 0.0) + weight
            times[name] = times.get(name, 0) + 1
            blocks.setdefault(name, _served_blocks(reading, name, spec))
    reading.notes += [f"The LoRA {_short(name)!r} is named {count} times; its weights were added."
                      for name, count in times.items() if count > 1]
    items = []
    for name, weight in weights.items():
        sent = min(max(weight, -MAX_LORA_WEIGHT), MAX_LORA_WEIGHT)
        if sent != weight:
            reading.notes.append(
                f"The LoRA {_short(name)!r} has weight {weight:g}, outside {-MAX_LORA_WEIGHT:g} to "
                f"{MAX_LORA_WEIGHT:g}: {sent:g} is sent instead."
            )
        items.append(f"{name}:{sent:g}" + (f"@{blocks[name]}" if blocks[name] else ""))
    if len(items) > MAX_LORAS:
        reading.notes.append(f"The file names {len(items)} LoRAs; at most {MAX_LORAS} run at once, so these were not "
                             f"sent: {_short(', '.join(items[MAX_LORAS:]))}.")
        items = items[:MAX_LORAS]
    reading.values["loras"] = ", ".join(items)
    if partly_read:
        tags = ", ".join(_short(tag) for tag in partly_read[:_SHOWN_CHUNKS])
        more = f", and {len(partly_read) - _SHOWN_CHUNKS} more" if len(partly_read) > _SHOWN_CHUNKS else ""
        reading.notes.append(f"Only the first weight of {tags}{more} was read: the studio gives a LoRA one weight, "
                             "and block weights as a preset (lbw=OUTALL) or key=value (in=0:mid=1:out=0.5).")


def _served_blocks(reading: _Reading, name: str, spec: str) -> str:
    """A LoRA's block weights where the model served has the blocks they name; else none, with a note."""
    blocks = reading.params["loras"].choices
    if not spec or not isinstance(blocks, tuple) or not blocks:
        return spec
    try:
        multipliers(spec, blocks)
    except BlockError as error:
        reading.notes.append(f"The block weights of the LoRA {_short(name)!r} (@{spec}) were not used: {error}")
        return ""
    return spec


def _read_lora_hashes(reading: _Reading, text: str, tags: list[str], loras: LoraManager) -> dict[str, str]:
    """Which of the LoRAs `text` (a `Lora hashes` value) names by hash are in the LoRA folder, and under which file
    name, said in the notes with the ones that are not; none is left out.

    Returns the prompt's LoRA names to send as another file of the folder: the file with the hash the image names,
    where the name is no file here or another file (a LoRA renamed, or named by another tool's folder). The hash
    is what says which file made the image; A1111 swaps the names the same way when it pastes parameters. A name
    that is the right file here, or whose hash is not here, is sent as it is.
    """
    by_hash_name = {lora_hash_name(name): name for name in tags}
    pairs = read_lora_hashes(text)
    wanted = {name: digits for name, raw in pairs if (digits := short_hash(raw))}
    unreadable = [f"{_short(name)} ({_short(raw)!r})" for name, raw in pairs if not short_hash(raw)]
    found, unsearched = find_local(loras.library, set(wanted.values()), loras.max_file_bytes,
                                   first=[by_hash_name.get(name, name) for name in wanted])
    here, missing, untagged, instead = [], [], [], {}
    for name, digits in wanted.items():
        tag, local = by_hash_name.get(name), found.get(digits)
        named_file = local_name(loras.library, tag or name)
        if local is None:
            missing.append(f"{_short(name)} (hash {digits})")
            if named_file:
                reading.notes.append(f"The LoRA folder's {_short(named_file)} is not the file the image used: its "
                                     f"hashes are not {digits}.")
        elif local == named_file:
            here.append(_short(name))
        else:
            sent = ", which is sent" if tag is not None else ""
            here.append(f"{_short(name)} (as {_short(local)}{sent})")
            if tag is not None:
                instead[tag] = local
        if tag is None:
            untagged.append(_short(name))
    if here:
        reading.notes.append(f"In the LoRA folder, by {LORA_HASHES.key}: {_some(here)}.")
    if missing:
        reading.notes.append(f"Not in the LoRA folder: {_some(missing)}.")
    if missing and unsearched:
        reading.notes.append(f"{unsearched} file(s) of the LoRA folder were not searched: one lookup reads at most "
                             f"{MAX_SEARCH_BYTES >> 30} GiB of files not hashed yet (a file is hashed once used).")
    if untagged:
        reading.notes.append(f"{LORA_HASHES.key} names LoRAs the prompt has no <lora:...> tag for, so no weight to "
                             f"send: {_some(untagged)}.")
    if unreadable:
        reading.notes.append(f"{LORA_HASHES.key}: not a hash the studio matches (10 to 64 hex digits): "
                             f"{_some(unreadable)}.")
    return instead


def _read_settings(reading: _Reading, settings: dict[str, str]) -> None:
    """The settings this tab has a place for, each read as its entry in the A1111 table says; the rest stay."""
    for setting in SETTINGS:
        if setting.read in ("none", "lora hashes"):  # the hashes are read with the LoRAs, before
            continue
        if setting.read == "style hash" and setting.key in settings:
            _read_style_hash(reading, settings.pop(setting.key))
            continue
        if setting.key not in settings or not set(setting.fields) <= reading.params.keys():
            continue
        raw = settings.pop(setting.key)
        if setting.read == "seed":
            _read_seed(reading, raw)
        elif setting.read == "size":
            _read_size(reading, raw)
        elif setting.read == "sampler":
            _read_sampler(reading, raw, settings.pop(SCHEDULE_TYPE, None))
        else:
            reading.put(setting.fields[0], raw, setting.key)


def _read_style_hash(reading: _Reading, raw: str) -> None:
    """A PNG names its style image by hash only: the tab gets the scale and mode, the person the picture to find."""
    reading.notes.append(f"{STYLE_REFERENCE.key} {_short(raw)!r}: the PNG holds the style image's hash, not the "
                         "picture; give the same picture again as the style reference (style_image) to make the same "
                         "image.")


def _read_seed(reading: _Reading, raw: str) -> None:
    """The file's seed, which is the point: Randomize seed goes off, so the tab makes the same image.

    A1111 writes -1 for "a new seed every run": that turns Randomize seed on. ComfyUI draws seeds up to 2**64;
    the studio's are below 2**32. Such a seed is reduced modulo 2**32 rather than randomized: the same file
    then always gives the same image here, which is what a person reading it back expects (the original's noise
    cannot be had at any seed the studio takes).
    """
    try:
        seed = _whole(str(raw).strip())
    except ValueError as reason:
        reading.notes.append(f"{SEED.key} {_short(raw)!r} was not used: {reason}.")
        return
    if seed < 0:
        reading.values["randomize_seed"] = True
        reading.notes.append(f"{SEED.key} {seed} means a new random seed for every run: Randomize seed is on.")
        return
    if seed > MAX_SEED:
        reduced = seed % (MAX_SEED + 1)
        reading.notes.append(
            f"{SEED.key} {_short(seed)} is past {MAX_SEED}, the largest seed here: {reduced}, its remainder modulo "
            "2**32, is sent, so the noise differs from the original's."
        )
        seed = reduced
    reading.values["seed"] = seed
    reading.values["randomize_seed"] = False


def _read_size(reading: _Reading, size: str) -> None:
    match = _SIZE.fullmatch(size)
    if not match:
        reading.notes.append(f"{SIZE.key} {_short(size)!r} was not used: it is not WIDTHxHEIGHT.")
        return
    try:
        width, height = _whole(match[1]), _whole(match[2])
    except ValueError:
        reading.notes.append(f"{SIZE.key} {_short(size)!r} was not used: its numbers are too long.")
        return
    if not width or not height:
        reading.notes.append(f"{SIZE.key} {_short(size)!r} was not used: a side of 0 px.")
        return
    param = reading.params["width"]
    sent_width, sent_height, why = _fitted_size(width, height, param)
    if why:
        reading.notes.append(
            f"{SIZE.key} {_short(width)}x{_short(height)} {why}: {sent_width}x{sent_height} is sent instead."
        )
    reading.values["width"], reading.values["height"] = sent_width, sent_height


def _fitted_size(width: int, height: int, param: Param) -> tuple[int, int, str]:
    """Both sides within the served range and multiples of what the model needs; a large size keeps its shape.

    Whole-number arithmetic: a file's side may have hundreds of digits, past any float.
    """
    multiple = int(param.multiple_of or 1)
    smallest = int(param.low or multiple)
    longest, largest = max(width, height), int(param.high or max(width, height))
    too_large = longest > largest
    sides = [side * largest // longest if too_large else side for side in (width, height)]
    sides = [max(smallest, side // multiple * multiple) for side in sides]
    if too_large:
        why = f"has a side past {number_text(param.high)} px, the most served; scaled down, keeping its shape"
    elif sides != [width, height] and min(width, height) < smallest:
        why = f"has a side under {smallest} px, the least served"
    elif sides != [width, height]:
        why = f"is not in multiples of {multiple} px, as the model needs; rounded down"
    else:
        why = ""
    return sides[0], sides[1], why


def _read_sampler(reading: _Reading, sampler: str, schedule: str | None) -> None:
    """A1111 names the noise schedule apart since version 1.9: "DPM++ 2M" + "Schedule type: Karras"."""
    name = sampler
    if schedule and f"{sampler} {schedule}" in reading.params["scheduler"].choices:
        name = f"{sampler} {schedule}"  # "DPM++ 2M Karras", "Euler SGM Uniform"
    elif schedule not in (None, "Automatic"):
        reading.unused.append((SCHEDULE_TYPE, schedule))
    reading.put("scheduler", name, SAMPLER.key)


# Values


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
        raise ValueError(f"the studio offers {', '.join(param.choices)}; the tab keeps its own")
    if param.kind == "style_mode":
        try:
            return clean(param, text, [])
        except StudioError as error:
            raise ValueError(str(error).rstrip(".")) from None
    return raw


def _fitted(param: Param, value: object) -> tuple[object, str]:
    """`value` within what `param` allows as served, and a note when it had to change; '' when it did not."""
    if param.kind == "text":
        return _fitted_text(param, value)
    if param.kind not in ("whole", "number"):
        return value, ""
    fitted = value
    if param.low is not None and fitted < param.low:
        fitted = param.low
    if param.high is not None and fitted > param.high:
        fitted = param.high
    multiple = param.multiple_of
    if param.kind == "whole" and multiple and fitted % multiple:
        fitted = max(multiple, fitted // multiple * multiple)
    if fitted == value:
        return value, ""
    fitted = int(fitted) if param.kind == "whole" else float(fitted)
    shown = _number_shown(value)
    return fitted, f"{param.label} {shown} is outside {param.range_text} here: {fitted:g} is sent instead."


def _fitted_text(param: Param, text: str) -> tuple[str, str]:
    """Text the studio takes: without NUL or lone surrogates, and cut at the served limit."""
    notes = []
    if _NOT_TEXT.search(text):
        text = _NOT_TEXT.sub("", text)
        notes.append(f"{param.label} had NUL characters or halves of surrogate pairs; they were removed.")
    if param.high is not None and len(text) > param.high:
        notes.append(f"{param.label} has {len(text):,} characters, more than the {number_text(param.high)} served: "
                     f"its first {number_text(param.high)} are sent.")
        text = text[: int(param.high)]
    return text, " ".join(notes)


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # also past Python's 4,300 digits, refused before any quadratic work
        number = _float(text, "not a whole number")  # A1111 writes some whole numbers as "512.0"
    if not math.isfinite(number) or not number.is_integer():
        raise ValueError("not a whole number")
    return int(number)


def _float(text: str, meaning: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(meaning) from None


def _is_unset(raw: str) -> bool:
    try:
        return float(raw) == -1
    except ValueError:
        return False


def _some(items: list[str]) -> str:
    more = f"; and {len(items) - _SHOWN_UNUSED} more" if len(items) > _SHOWN_UNUSED else ""
    return ", ".join(items[:_SHOWN_UNUSED]) + more


def _listed(chunks: Mapping[str, str]) -> str:
    if not chunks:
        return ""
    names = [_short(name) for name in list(chunks)[:_SHOWN_CHUNKS]]
    more = ", ..." if len(chunks) > _SHOWN_CHUNKS else ""
    return f"; its text chunks: {', '.join(names)}{more}"


def _number_shown(value: float) -> str:
    """A number as a note shows it; a whole number of hundreds of digits is no float, so `:g` cannot show it."""
    return _short(value) if isinstance(value, int) else f"{value:g}"


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."
