"""Block weights: a LoRA's strength per UNet block, declared once (syntax, presets, the blocks of a model).

In the `loras` field a LoRA takes block weights after an `@`, as a preset or as a vector:

    stripes:0.8@out                 the up blocks only (a preset; `in+out` joins presets)
    stripes:1@in=0:mid=1:out=0.5    SD.Next's `<lora:stripes:1:in=0:mid=1:out=0.5>`, one multiplier per side
    stripes:1@out=0:OUT03=1         one block by its LoRA Block Weight name; a block not named keeps 1

Blocks are named as the LoRA Block Weight extension (hako-mikan/sd-webui-lora-block-weight) names them, after the
original UNet's `input_blocks` / `output_blocks`: SD 1.x/2.x has IN01 IN02 IN04 IN05 IN07 IN08 MID OUT03-OUT11 (its
17-block layout without BASE, the text encoder), SDXL IN04 IN05 IN07 IN08 MID OUT00-OUT05, and any other UNet
(the embedded model: IN03 IN05 MID OUT00-OUT03) the blocks its config gives by the same numbering. The extension's
presets for the 17-block layout (INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL) work on SD 1.x/2.x; its NONE and ALL0.5
are the weights 0 and 0.5.

A block is one transformer (attention) block of the UNet: what diffusers' per-block `set_adapters` scales
(`{"unet": {"down": {"block_1": [..]}, "mid": .., "up": {..}}}`); the ResNets beside an attention block follow it.
diffusers cannot scale the text encoders by block, nor LoRA layers outside the blocks with attention (the ResNets of
a block without attention, the middle block's ResNets): they run at the LoRA's weight, and a request says so.

This module is plain Python (no torch): validation, the docs' text and the field's help read it, and the LoRA
manager turns a checked spec into diffusers' scales for the model it serves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipelines.errors import StudioError

SEPARATOR = "@"  # between a LoRA's weight and its block weights
VECTOR_SEPARATOR = ":"  # between a vector's key=value pairs, as SD.Next writes them in a tag
JOIN = "+"  # between presets joined into one
MAX_MULTIPLIER = 2.0  # a block's multiplier, beside the LoRA's weight (-2 to 2)
SIDES = ("in", "mid", "out")  # SD.Next's keys; diffusers calls them down, mid and up
SIDE_ALIASES = {"down": "in", "up": "out"}
MID = "MID"
_BLOCK_NAME = re.compile(r"(IN|OUT)(\d\d)|MID", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)")

# The LoRA Block Weight extension's 17-block layout (SD 1.x/2.x) without BASE: where its presets apply.
SD_17_BLOCKS = ("IN01", "IN02", "IN04", "IN05", "IN07", "IN08", MID, *(f"OUT{n:02d}" for n in range(3, 12)))


@dataclass(frozen=True)
class BlockPreset:
    name: str
    blocks: tuple[str, ...] | None  # the blocks at 1 (the rest at 0); None: a side (`SIDES`) or all of them
    what: str  # one line for the docs and the field's help
    layout: tuple[str, ...] | None = None  # the model blocks it is defined on; None: any model


def _lbw(name: str, mask: str, what: str) -> BlockPreset:
    """A LoRA Block Weight preset from its 17-value line without BASE (always 1 in these, as the text encoder is
    here: it runs at the LoRA's weight)."""
    return BlockPreset(name, tuple(block for block, on in zip(SD_17_BLOCKS, mask) if on == "1"), what, SD_17_BLOCKS)


PRESETS: Mapping[str, BlockPreset] = {preset.name.lower(): preset for preset in (
    BlockPreset("all", None, "every block: the same as no block weights"),
    BlockPreset("in", None, "the down (input) blocks"),
    BlockPreset("mid", None, "the middle block"),
    BlockPreset("out", None, "the up (output) blocks"),
    _lbw("INS", "1110000000000000", "LoRA Block Weight: the shallow input blocks IN01 IN02 IN04"),
    _lbw("IND", "0001110000000000", "LoRA Block Weight: the deep input blocks IN05 IN07 IN08"),
    _lbw("INALL", "1111110000000000", "LoRA Block Weight: every input block"),
    _lbw("MIDD", "0001111111100000", "LoRA Block Weight: the deep blocks IN05-OUT06"),
    _lbw("OUTD", "0000000111100000", "LoRA Block Weight: the deep output blocks OUT03-OUT06"),
    _lbw("OUTS", "0000000000011111", "LoRA Block Weight: the shallow output blocks OUT07-OUT11"),
    _lbw("OUTALL", "0000000111111111", "LoRA Block Weight: every output block"),
)}

SYNTAX = (
    "block weights after @: a preset (all, in, mid, out, joined like in+out; on SD 1.x/2.x also LoRA Block "
    "Weight's INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL) or a vector as SD.Next writes it (in=0:mid=1:out=0.5, or "
    "blocks by LoRA Block Weight name: IN04=0:OUT03=1), e.g. stripes:0.8@out"
)


class BlockError(StudioError):
    """A block spec that is not one, or that names blocks the model lacks; the caller names the field."""


# ------------------------------------------------------------------ the syntax, without a model


def split_spec(item: str) -> tuple[str, str]:
    """`name:weight@spec` as (`name:weight`, spec); spec "" where there is none. The last @ splits, and only where
    what follows could be a spec: `ink@v2.safetensors:0.8` is a name and a weight."""
    head, separator, tail = item.rpartition(SEPARATOR)
    if separator and head.strip() and not tail.strip():
        raise BlockError(f"nothing follows @ in {item.strip()!r}; write {SYNTAX}.")
    if not separator or not head.strip() or "/" in tail or ".safetensors" in tail.lower():
        return item, ""
    return head, tail.strip()


def canonical_spec(spec: str) -> str:
    """`spec` checked as syntax (a model's own blocks are checked by `multipliers`) and written one way: presets as
    declared, joined by +; a vector's keys as sides (in, mid, out) then blocks in order, values as %g."""
    if not spec:
        raise BlockError(f"nothing follows @; write {SYNTAX}.")
    if "=" in spec:
        return VECTOR_SEPARATOR.join(f"{key}={value:g}" for key, value in _vector(spec).items())
    return JOIN.join(_preset(name).name for name in spec.split(JOIN))


def _preset(name: str) -> BlockPreset:
    preset = PRESETS.get(name.strip().lower())
    if preset is None:
        known = ", ".join(preset.name for preset in PRESETS.values())
        raise BlockError(f"{name.strip()!r} is no block preset; the presets are {known} (a vector: "
                         "in=0:mid=1:out=0.5).")
    return preset


def _vector(spec: str) -> dict[str, float]:
    """key -> multiplier, sides first then blocks in order; a key twice is refused."""
    values: dict[str, float] = {}
    for pair in spec.split(VECTOR_SEPARATOR):
        key, equals, value = (part.strip() for part in pair.partition("="))
        name = _key(key)
        if not equals or not _NUMBER.fullmatch(value):
            raise BlockError(f"{pair.strip()!r} is not key=number; a vector is written in=0:mid=1:out=0.5.")
        if name in values:
            raise BlockError(f"the block {name} is named twice in {spec!r}.")
        number = float(value)
        if not (math.isfinite(number) and -MAX_MULTIPLIER <= number <= MAX_MULTIPLIER):
            raise BlockError(f"the multiplier of {name} must be from {-MAX_MULTIPLIER:g} to {MAX_MULTIPLIER:g}; "
                             f"got {value}.")
        values[name] = number
    return dict(sorted(values.items(), key=lambda item: _key_order(item[0])))


def is_block_key(key: str) -> bool:
    """Whether `key` names a side or a block (of any model), as a vector's key."""
    return key.strip().lower() in (*SIDES, *SIDE_ALIASES) or _BLOCK_NAME.fullmatch(key.strip()) is not None


def _key(key: str) -> str:
    lowered = SIDE_ALIASES.get(key.lower(), key.lower())
    if lowered in SIDES:
        return lowered
    if _BLOCK_NAME.fullmatch(key):
        return key.upper()
    raise BlockError(f"{key!r} is no block; a vector's keys are in, mid, out (down, up) or LoRA Block Weight "
                     "block names like IN04, MID, OUT03.")


def _key_order(key: str) -> tuple[int, int]:
    if key in SIDES:
        return 0, SIDES.index(key)
    return 1, block_order(key)


def block_order(name: str) -> int:
    """IN blocks, then MID, then OUT blocks, each by number: the order of the UNet's flow."""
    found = _BLOCK_NAME.fullmatch(name)
    if found is None or found[1] is None:
        return 100
    return int(found[2]) + (0 if found[1].upper() == "IN" else 200)


# ------------------------------------------------------------------ a model's blocks


@dataclass(frozen=True)
class UnetBlock:
    """One transformer block of a UNet: its LoRA Block Weight name and where diffusers keeps it."""

    name: str  # IN04, MID, OUT03
    side: str  # "down", "mid" or "up", as diffusers' scales dict keys it
    index: int  # down_blocks.<index> / up_blocks.<index>
    layer: int  # .attentions.<layer>

    @property
    def address(self) -> str:
        """The module path of the block in diffusers' UNet."""
        if self.side == "mid":
            return "mid_block.attentions.0"
        return f"{self.side}_blocks.{self.index}.attentions.{self.layer}"

    @property
    def coarse(self) -> str:
        return {"down": "in", "mid": "mid", "up": "out"}[self.side]


def unet_blocks(config: Mapping[str, object]) -> tuple[UnetBlock, ...]:
    """The blocks with attention of a diffusers UNet2DConditionModel config, in the UNet's flow, named as A1111 names
    the original UNet's: a down level holds layers_per_block ResNet/attention pairs and a downsampler (IN00 is
    conv_in), an up level one pair more, so down_blocks.1.attentions.0 of SD 1.5 is IN04 and up_blocks.1's are
    OUT03-OUT05."""
    per_block = config.get("layers_per_block", 2)
    down_types, up_types = config.get("down_block_types", ()), config.get("up_block_types", ())
    blocks = []
    for index, kind in enumerate(down_types):
        if "Attn" in kind:
            start = 1 + sum(_layers(per_block, i) + 1 for i in range(index))
            blocks += [UnetBlock(f"IN{start + layer:02d}", "down", index, layer)
                       for layer in range(_layers(per_block, index))]
    if "Attn" in str(config.get("mid_block_type", "UNetMidBlock2DCrossAttn")):
        blocks.append(UnetBlock(MID, "mid", 0, 0))
    reversed_layers = list(reversed([_layers(per_block, i) for i in range(len(down_types))]))
    for index, kind in enumerate(up_types):
        if "Attn" in kind:
            start = sum(reversed_layers[i] + 1 for i in range(index))
            blocks += [UnetBlock(f"OUT{start + layer:02d}", "up", index, layer)
                       for layer in range(reversed_layers[index] + 1)]
    return tuple(blocks)


def _layers(per_block: int | Sequence[int], index: int) -> int:
    return per_block[index] if isinstance(per_block, Sequence) else per_block


def multipliers(spec: str, names: Sequence[str]) -> dict[str, float]:
    """Each of a model's blocks (`names`, in order) -> the multiplier `spec` gives it. A preset sets its blocks to 1
    and the rest to 0; a vector starts every block at 1, sets sides, then single blocks."""
    if "=" in spec:
        values = dict.fromkeys(names, 1.0)
        for key, value in _vector(spec).items():
            for name in _named_blocks(key, names):
                values[name] = value
        return values
    chosen: set[str] = set()
    for part in spec.split(JOIN):
        chosen |= _preset_blocks(_preset(part), names)
    return {name: float(name in chosen) for name in names}


def _named_blocks(key: str, names: Sequence[str]) -> list[str]:
    if key in SIDES:
        return [name for name in names if _side_of(name) == key]
    if key not in names:
        raise BlockError(f"this model has no block {key}; its blocks are {', '.join(names)}.")
    return [key]


def _preset_blocks(preset: BlockPreset, names: Sequence[str]) -> set[str]:
    if preset.layout is not None and tuple(names) != preset.layout:
        raise BlockError(f"{preset.name} is a LoRA Block Weight preset for SD 1.x/2.x's blocks; this model's are "
                         f"{', '.join(names)}: use {', '.join(SIDES)} or a vector.")
    if preset.blocks is not None:
        return set(preset.blocks)
    return {name for name in names if preset.name == "all" or _side_of(name) == preset.name}


def _side_of(name: str) -> str:
    return "mid" if name == MID else "in" if name.startswith("IN") else "out"


def diffusers_scales(scales: Mapping[UnetBlock, float]) -> dict[str, object]:
    """The UNet's part of diffusers' `set_adapters` weights: {"down": {"block_1": [..]}, "mid": .., "up": {..}},
    every block with attention listed (diffusers gives an unlisted one 1.0, not the LoRA's weight)."""
    result: dict[str, object] = {"down": {}, "up": {}}
    for block, scale in sorted(scales.items(), key=lambda item: (item[0].side, item[0].index, item[0].layer)):
        if block.side == "mid":
            result["mid"] = scale
        else:
            result[block.side].setdefault(f"block_{block.index}", []).append(scale)
    return result
