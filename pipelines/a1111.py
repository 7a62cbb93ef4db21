"""AUTOMATIC1111's `parameters` vocabulary, spelled once: the studio writes it and PNG info reads it.

Each `Setting` is one `Key: value` of A1111's settings line: the request fields it holds, how the writer
writes their values, and how PNG info reads it back (`pipelines/png_info.py`). ComfyUI's and InvokeAI's
metadata are read into the same keys (`pipelines/metadata.py`). A ControlNet unit is one more such line, the
value of "ControlNet <n>"; which A1111 module a preprocessor is written as is part of its mode's declaration
(`Mode.a1111_modules` in `pipelines/modes.py`).

Two fields are the writer's rather than a request's: `model` (the checkpoint's or the ControlNet's name) and
`module` (the unit's A1111 module).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pipelines.block_weights import VECTOR_SEPARATOR, BlockError, canonical_spec, is_block_key

# How PNG info reads a setting: as its one field's declared kind (pipelines/parameters.py), or by a reader of its
# own: the seed (-1 means a new one each run), the size (WIDTHxHEIGHT), the sampler (with "Schedule type"), the
# module (a preprocessor and its switches), the LoRAs' hashes (matched to the LoRA folder's files), the style image's
# hash (said in a note: the picture must be given again); "none": a tab has no place for it, so it is listed as not
# used.
Reading = Literal["declared", "seed", "size", "sampler", "module", "lora hashes", "style hash", "none"]


@dataclass(frozen=True)
class Setting:
    key: str  # as A1111 writes it
    fields: tuple[str, ...]  # what it holds: request fields, or a value of the writer's (the docstring above)
    text: str = "{}"  # the fields' values, as written (str.format)
    read: Reading = "declared"
    unit_field: str = ""  # for what every ControlNet unit has: its field in `ControlUnit`

    def written(self, values: Mapping[str, object]) -> str:
        return self.text.format(*(values[name] for name in self.fields))


STEPS = Setting("Steps", ("steps",))
SAMPLER = Setting("Sampler", ("scheduler",), read="sampler")
CFG_SCALE = Setting("CFG scale", ("guidance_scale",))
SEED = Setting("Seed", ("seed",), read="seed")
SIZE = Setting("Size", ("width", "height"), text="{}x{}", read="size")
MODEL = Setting("Model", ("model",), read="none")  # the studio serves one model: a file's is no choice in a tab
MODE = Setting("Mode", ("mode",), read="none")  # the studio's own; PNG info reads it first, to pick the tab
DENOISING_STRENGTH = Setting("Denoising strength", ("strength",))
MASK_BLUR = Setting("Mask blur", ("mask_blur",))
MASKED_CONTENT = Setting("Masked content", ("masked_content",))  # the studio's own
# Each LoRA of the prompt's tags by its label there and its file's hash (pipelines/lora/hashes.py), as A1111's Lora
# extension writes them: `lora_hashes_text`. Written only for a request with LoRAs.
LORA_HASHES = Setting("Lora hashes", ("lora_hashes",), read="lora hashes")
VERSION = Setting("Version", (), read="none")  # STUDIO_VERSION, written last, after the ControlNet units
# The style reference (the studio's own keys): the picture by its hash (pipelines/style.py `picture_hash`), never the
# picture, then its scale and mode. Written only for a request with a style image.
STYLE_REFERENCE = Setting("Style reference", ("style_hash",), read="style hash")
STYLE_SCALE = Setting("Style scale", ("style_scale",), text="{:g}")
STYLE_MODE = Setting("Style mode", ("style_mode",))
STYLE_SETTINGS = (STYLE_REFERENCE, STYLE_SCALE, STYLE_MODE)
# In the order A1111 writes them
SETTINGS = (STEPS, SAMPLER, CFG_SCALE, SEED, SIZE, MODEL, MODE, DENOISING_STRENGTH, MASK_BLUR, MASKED_CONTENT,
            LORA_HASHES, *STYLE_SETTINGS)

# Read, never written: since A1111 1.9 "DPM++ 2M" + "Schedule type: Karras" is the studio's "DPM++ 2M Karras";
# a hires pass makes A1111 write a denoising strength for a text-to-image run.
SCHEDULE_TYPE = "Schedule type"
HIRES_UPSCALE = "Hires upscale"
# What a ComfyUI graph's latent batch is said as; no tab takes it (each image's PNG carries its own seed).
BATCH_SIZE = "Batch size"
NEGATIVE_PROMPT = "Negative prompt"  # the line after the prompt: "Negative prompt: ..."
STUDIO_VERSION = "diffusion-studio"

MODULE = Setting("Module", ("module",), read="module")
WEIGHT = Setting("Weight", ("controlnet_scale",), text="{:g}", unit_field="scale")
GUIDANCE_START = Setting("Guidance Start", ("control_start",), text="{:g}", unit_field="start")
GUIDANCE_END = Setting("Guidance End", ("control_end",), text="{:g}", unit_field="end")
# The preprocessor's options, written when it has them; A1111 writes -1 for an option its module lacks.
PROCESSOR_RES = Setting("Processor Res", ("detect_resolution",))
THRESHOLD_A = Setting("Threshold A", ("low_threshold",))
THRESHOLD_B = Setting("Threshold B", ("high_threshold",))
UNIT_SETTINGS = (MODULE, MODEL, WEIGHT, GUIDANCE_START, GUIDANCE_END, PROCESSOR_RES, THRESHOLD_A, THRESHOLD_B)
# sd-webui-controlnet 1.1.2 and later: "ControlNet 0: "Module: canny, ...""; before, one unit as separate settings
# ("ControlNet Module: canny, ...").
CONTROLNET = "ControlNet"

# A1111's module for a ready map, which is also the studio's preprocessor of that name.
READY_MAP = "none"
_LORA_NAME_BREAKS = re.compile("[:,]")
LBW_KEY = "lbw"  # the LoRA Block Weight extension's tag argument: <lora:name:1:lbw=OUTALL>


@dataclass(frozen=True)
class ControlModule:
    """What an A1111 ControlNet module is here: a preprocessor, with the switches the module implies (A1111 draws
    OpenPose's hands and face with separate modules where the studio has two switches)."""

    preprocessor: str
    switches: Mapping[str, bool] = field(default_factory=dict)


def written_settings(table: Iterable[Setting], values: Mapping[str, object]) -> dict[str, str]:
    """The settings of `table` whose fields `values` has, in the table's order, as written."""
    return {setting.key: setting.written(values) for setting in table if all(name in values for name in setting.fields)}


def lora_hashes_text(hashes: Iterable[tuple[str, str]]) -> str:
    """`name: hash, name: hash`: A1111 leaves colons and commas out of a name, so the text splits back apart."""
    return ", ".join(f"{lora_hash_name(name)}: {digits}" for name, digits in hashes)


def read_lora_hashes(text: str) -> list[tuple[str, str]]:
    """(name, hash) pairs of a `Lora hashes` value, names as `lora_hashes_text` writes them; the hash is '' where an
    item has none. The last colon splits an item: a hash has none, a name another tool wrote may."""
    pairs = []
    for item in text.split(","):
        name, colon, digits = item.rpartition(":")
        if item.strip():
            pairs.append((lora_hash_name(name), digits.strip()) if colon else (lora_hash_name(item), ""))
    return pairs


def lora_hash_name(name: str) -> str:
    """A LoRA's name as `Lora hashes` holds it: what matches a prompt tag's name to its hash."""
    return _LORA_NAME_BREAKS.sub("", name).strip()


def lora_tag(name: str, weight: float, blocks: str = "") -> str:
    """A LoRA as A1111's prompt tag, `<lora:name:0.8>`, its block weights (`LoraChoice.blocks`) written as the tools
    that read them write them: a preset as the LoRA Block Weight extension's `lbw=OUTALL`, a vector as SD.Next's
    `in=0:mid=1:out=0.5` (which is the spec itself)."""
    if not blocks:
        return f"<lora:{name}:{weight:g}>"
    return f"<lora:{name}:{weight:g}:{blocks if '=' in blocks else f'{LBW_KEY}={blocks}'}>"


def is_block_argument(argument: str) -> bool:
    """A tag argument that is block weights: `lbw=<preset>`, or `key=value` with a block's or a side's key."""
    key, equals, _ = argument.partition("=")
    return bool(equals) and (key.strip().lower() == LBW_KEY or is_block_key(key))


def read_block_arguments(arguments: list[str]) -> tuple[str, list[str]]:
    """A tag's block-weight arguments as the `loras` field's spec, and the other arguments; block arguments not
    readable here (a LoRA Block Weight vector `lbw=1,0,0,...`, a preset and a vector at once) stay with the others."""
    blocks = [argument for argument in arguments if is_block_argument(argument)]
    rest = [argument for argument in arguments if not is_block_argument(argument)]
    if not blocks:
        return "", rest
    pairs = [argument.partition("=") for argument in blocks]
    presets = [value for key, _, value in pairs if key.strip().lower() == LBW_KEY]
    try:
        if presets and len(presets) < len(blocks) or len(presets) > 1:
            raise BlockError("a preset and a vector at once")
        return canonical_spec(presets[0] if presets else VECTOR_SEPARATOR.join(blocks)), rest
    except BlockError:
        return "", rest + blocks


def unit_key(number: int) -> str:
    return f"{CONTROLNET} {number}"


def module_name(modules: Mapping[str, ControlModule], preprocessor: str, options: Mapping[str, object]) -> str:
    """The A1111 module that does what `preprocessor` did with `options`: of a mode's `modules`, the first listed
    for it whose switches match (the others are other tools' names, read too)."""
    if preprocessor == READY_MAP:
        return READY_MAP
    return next(name for name, module in modules.items()
                if module.preprocessor == preprocessor and _switched(module, options))


def _switched(module: ControlModule, options: Mapping[str, object]) -> bool:
    return all(bool(options.get(name)) == on for name, on in module.switches.items())


def module_named(modules: Mapping[str, ControlModule], name: str) -> ControlModule | None:
    """What A1111's module `name` is among a mode's `modules`; None for a module the mode does not have."""
    name = name.lower()
    return ControlModule(READY_MAP) if name == READY_MAP else modules.get(name)
