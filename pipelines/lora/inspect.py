"""What a LoRA file is and where its weights are, for the LoRA lab's inspector.

From the header: every `__metadata__` field, readable and bounded (a kohya header can hold megabytes of dataset
tags), the training facts trainers look for (kohya `ss_*`, `modelspec.*`), the trigger words and each dataset
folder's tag counts. From the tensors: the change each layer makes, ||up @ down||_F x alpha / rank, summed per UNet
block. The blocks are those of the LoRA Block Weight extension (hako-mikan/sd-webui-lora-block-weight, whose
`BLOCKID17/26` and `BLOCKID12/20` lists are followed): it weights a layer by the block its A1111 name falls in, and
A1111 names kohya/diffusers layers after the original UNet (`down_blocks_0_attentions_0` is `input_blocks_1_1`, so
IN01). Other families get BASE (text encoders), IN, MID and OUT.

The norm never forms up @ down: ||U D||_F^2 = trace((U^T U)(D D^T)) costs (out + in) x rank^2 instead of
out x in x rank, in float32 on the CPU, one layer in memory at a time.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from pipelines.lora.formats import ALPHA_OUTSIDE_KOHYA, detect_layout, family_from_shapes
from pipelines.lora.library_internals import pattern_value
from pipelines.lora.metadata import MAX_SHOWN_CHARS, describe_metadata, family_from_metadata
from pipelines.lora.safety import DEFAULT_MAX_FILE_BYTES, read_header

MAX_VALUE_CHARS = 4000  # one header field as shown; `ss_tag_frequency` alone can be megabytes
MAX_HEADER_ROWS = 500
TOP_TAGS = 20  # per dataset folder
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' PEFT config, the alphas of a non-kohya file
TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "text_encoder_", "text_encoder_2_")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
FACTOR_SUFFIXES = {  # how each layout names a layer's two factors
    ".lora_down.weight": "down", ".lora_up.weight": "up",  # kohya, LoCon
    ".lora_A.weight": "down", ".lora_B.weight": "up",  # PEFT
    ".lora.down.weight": "down", ".lora.up.weight": "up",  # diffusers
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",  # diffusers text encoders
    "_lora.down.weight": "down", "_lora.up.weight": "up",  # diffusers attention processors (`to_k_lora`)
}
BASE, OTHER = "BASE", "OTHER"  # the text encoders; layers in no block (time embedding, conv_out)
COARSE_BLOCKS = (BASE, "IN", "MID", "OUT")


def _numbered(prefix: str, numbers: Iterable[int]) -> tuple[str, ...]:
    return tuple(f"{prefix}{number:02d}" for number in numbers)


@dataclass(frozen=True)
class BlockLayout:
    name: str
    blocks: tuple[str, ...]


SD_FULL = BlockLayout(
    "LoRA Block Weight, 26 blocks (SD 1.x/2.x, with LoCon layers)",
    (BASE, *_numbered("IN", range(12)), "MID", *_numbered("OUT", range(12))),
)
SD_17 = BlockLayout(
    "LoRA Block Weight, 17 blocks (SD 1.x/2.x)",
    (BASE, *_numbered("IN", (1, 2, 4, 5, 7, 8)), "MID", *_numbered("OUT", range(3, 12))),
)
XL_FULL = BlockLayout(
    "LoRA Block Weight, 20 blocks (SDXL, with LoCon layers)",
    (BASE, *_numbered("IN", range(9)), "MID", *_numbered("OUT", range(9))),
)
XL_12 = BlockLayout(
    "LoRA Block Weight, 12 blocks (SDXL)", (BASE, *_numbered("IN", (4, 5, 7, 8)), "MID", *_numbered("OUT", range(6)))
)
COARSE = BlockLayout("BASE (text encoders), IN, MID, OUT", COARSE_BLOCKS)
# The fewest blocks that hold every layer first: the full layouts exist for LoCon layers outside the attention blocks.
BLOCK_LAYOUTS = {"sd15": (SD_17, SD_FULL), "sd2": (SD_17, SD_FULL), "sdxl": (XL_12, XL_FULL)}

# A UNet layer's LoRA Block Weight block, from its name with dots as underscores. Diffusers' names are converted as
# A1111 converts them (three layers a level, the down/upsampler last); SD 1.x/2.x and SDXL both have two per level.
UNET_BLOCKS: tuple[tuple[re.Pattern, Callable[[re.Match], str]], ...] = (
    (re.compile(r"conv_in(_|$)"), lambda m: "IN00"),
    (re.compile(r"down_blocks_(\d+)_(attentions|resnets)_(\d+)_"), lambda m: f"IN{1 + 3 * int(m[1]) + int(m[3]):02d}"),
    (re.compile(r"down_blocks_(\d+)_downsamplers_"), lambda m: f"IN{3 + 3 * int(m[1]):02d}"),
    (re.compile(r"input_blocks_(\d+)_"), lambda m: f"IN{int(m[1]):02d}"),
    (re.compile(r"(mid_block|middle_block)_"), lambda m: "MID"),
    (re.compile(r"up_blocks_(\d+)_(attentions|resnets)_(\d+)_"), lambda m: f"OUT{3 * int(m[1]) + int(m[3]):02d}"),
    (re.compile(r"up_blocks_(\d+)_upsamplers_"), lambda m: f"OUT{2 + 3 * int(m[1]):02d}"),
    (re.compile(r"output_blocks_(\d+)_"), lambda m: f"OUT{int(m[1]):02d}"),
)


@dataclass(frozen=True)
class Fact:
    label: str
    keys: tuple[str, ...]  # the first one present is shown
    total: str | None = None  # shown as "<value> of <total>"


TRAINING_FACTS = (
    Fact("title", ("modelspec.title", "ss_output_name")),
    Fact("base model", ("ss_sd_model_name",)),
    Fact("architecture", ("modelspec.architecture", "ss_base_model_version")),
    Fact("network module", ("ss_network_module",)),
    Fact("network dim (rank)", ("ss_network_dim",)),
    Fact("network alpha", ("ss_network_alpha",)),
    Fact("network arguments", ("ss_network_args",)),
    Fact("epoch", ("ss_epoch",), total="ss_num_epochs"),
    Fact("steps", ("ss_steps",), total="ss_max_train_steps"),
    Fact("resolution", ("ss_resolution", "modelspec.resolution")),
    Fact("learning rate", ("ss_learning_rate",)),
    Fact("UNet learning rate", ("ss_unet_lr",)),
    Fact("text encoder learning rate", ("ss_text_encoder_lr",)),
    Fact("optimizer", ("ss_optimizer",)),
    Fact("training images", ("ss_num_train_images",)),
    Fact("regularisation images", ("ss_num_reg_images",)),
    Fact("author", ("modelspec.author",)),
    Fact("comment", ("ss_training_comment", "modelspec.description")),
)


@dataclass(frozen=True)
class TagFolder:
    """One dataset folder of a kohya run (`<repeats>_<name>`) and its captions' most frequent tags."""

    name: str
    images: int | None
    repeats: int | None
    tags: tuple[tuple[str, int], ...]
    distinct_tags: int


@dataclass(frozen=True)
class LayerChange:
    layer: str  # as the file names it, without the factor's suffix
    block: str
    rank: int
    scale: float  # alpha / rank (alpha / sqrt(rank) with rsLoRA)
    norm: float  # ||up @ down||_F x scale


@dataclass(frozen=True)
class LoraInspection:
    file_name: str
    file_bytes: int
    layout: str
    family: str | None
    header: tuple[tuple[str, str], ...]  # every metadata field, values bounded
    facts: tuple[tuple[str, str], ...]  # the training facts the file records
    trigger_words: tuple[str, ...]
    top_tags: tuple[tuple[str, int], ...]  # over all dataset folders
    tag_folders: tuple[TagFolder, ...]
    block_layout: BlockLayout
    blocks: dict[str, float]  # the layout's blocks in order: summed change
    coarse: dict[str, float]  # BASE, IN, MID, OUT (and OTHER when some layer is in no block)
    layers: tuple[LayerChange, ...]
    notes: tuple[str, ...]  # what was cut or not measured

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted({layer.rank for layer in self.layers}))

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(sorted({round(layer.scale, 6) for layer in self.layers}))


def inspect_lora(path: str | Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> LoraInspection:
    """Read everything the inspector shows from a `.safetensors` LoRA (checked by `read_header` first)."""
    path = Path(path)
    header = read_header(path, max_file_bytes)
    shapes = {key: info.shape for key, info in header.tensors.items()}
    metadata = header.metadata
    family = family_from_shapes(shapes) or family_from_metadata(metadata)
    layout = detect_layout(list(shapes))
    layers, notes = measure_layers(path, layout, metadata)
    blocks, block_layout = sum_blocks(layers, family)
    rows, header_notes = header_rows(metadata)
    described = describe_metadata(header)
    return LoraInspection(
        file_name=path.name,
        file_bytes=header.file_bytes,
        layout=layout,
        family=family,
        header=rows,
        facts=training_facts(metadata),
        trigger_words=described.trigger_words,
        top_tags=described.top_tags,
        tag_folders=tag_folders(metadata),
        block_layout=block_layout,
        blocks=blocks,
        coarse=sum_coarse(layers),
        layers=tuple(layers),
        notes=(*header_notes, *notes),
    )


def change_norm(down: torch.Tensor, up: torch.Tensor) -> float:
    """||up @ down||_F of one layer's factors (linear, or conv: down [r, in, k, k], up [out, r, 1, 1]), by whichever
    costs fewer multiplications: the two rank x rank Gram matrices, or the product itself."""
    down = down.reshape(down.shape[0], -1).float()
    up = up.reshape(up.shape[0], -1).float()
    rank, (size_out, size_in) = down.shape[0], (up.shape[0], down.shape[1])
    if (size_out + size_in) * rank >= size_out * size_in:
        return math.sqrt(float((up @ down).square().sum()))  # torch's float32 norms drift by 1e-4; its sum does not
    squared = ((up.T @ up) * (down @ down.T)).sum()  # both Gram matrices are symmetric: the trace of their product
    return math.sqrt(max(float(squared), 0.0))


def measure_layers(path: Path, layout: str, metadata: dict[str, str]) -> tuple[list[LayerChange], list[str]]:
    """Every layer with both factors, in the file's order; notes on the keys left out."""
    kohya = layout.startswith(("kohya", "LoCon"))
    factors: dict[str, dict[str, str]] = defaultdict(dict)
    left_out: dict[str, list[str]] = defaultdict(list)
    peft_config = _adapter_config(metadata)
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            stem, role = _factor(key)
            if role == "alpha" and not kohya:
                left_out[ALPHA_OUTSIDE_KOHYA].append(key)
            elif role is None:
                left_out["no LoRA factors (LoHa, LoKr, DoRA scales, full weights: diffusers applies none)"].append(key)
            else:
                factors[stem][role] = key
        layers = []
        for stem, parts in factors.items():
            if "down" not in parts or "up" not in parts:
                left_out["parts of layers without both a down and an up factor"] += parts.values()
                continue
            down, up = handle.get_tensor(parts["down"]), handle.get_tensor(parts["up"])
            rank = down.shape[0]
            if up.reshape(up.shape[0], -1).shape[1] != rank:
                left_out["layers whose factors' ranks differ"] += [parts["down"], parts["up"]]
                continue
            alpha = float(handle.get_tensor(parts["alpha"])) if "alpha" in parts else None
            scale = _scale(stem, rank, alpha, peft_config)
            layers.append(LayerChange(stem, layer_block(stem), rank, scale, change_norm(down, up) * abs(scale)))
    notes = [f"{len(keys)} key(s) left out: {reason} (for example {keys[0]})." for reason, keys in left_out.items()]
    return layers, notes


def layer_block(stem: str) -> str:
    """The LoRA Block Weight block of a layer named as any layout names it; BASE for text encoders."""
    flat = stem.replace(".", "_")
    if flat.startswith(TEXT_ENCODER_PREFIXES):
        return BASE
    unet_path = flat.removeprefix("lora_unet_").removeprefix("unet_")
    for pattern, block in UNET_BLOCKS:
        match = pattern.match(unet_path)
        if match:
            return block(match)
    return OTHER


def sum_blocks(layers: list[LayerChange], family: str | None) -> tuple[dict[str, float], BlockLayout]:
    """Summed change per block of the family's LoRA Block Weight layout (IN/MID/OUT for other families)."""
    present = {layer.block for layer in layers} - {OTHER}
    block_layout = next((each for each in BLOCK_LAYOUTS.get(family, ()) if present <= set(each.blocks)), COARSE)
    if block_layout is COARSE:
        return sum_coarse(layers), COARSE
    return _summed(block_layout.blocks, ((layer.block, layer.norm) for layer in layers)), block_layout


def sum_coarse(layers: list[LayerChange]) -> dict[str, float]:
    return _summed(COARSE_BLOCKS, ((_coarse(layer.block), layer.norm) for layer in layers))


def header_rows(metadata: dict[str, str]) -> tuple[tuple[tuple[str, str], ...], list[str]]:
    """Every field, sorted by name; JSON values pretty-printed; each value cut at `MAX_VALUE_CHARS` saying so."""
    names = sorted(metadata)
    notes = []
    if len(names) > MAX_HEADER_ROWS:
        notes.append(f"The header has {len(names):,} fields; the first {MAX_HEADER_ROWS} by name are shown.")
    return tuple((name, bounded(readable(metadata[name]))) for name in names[:MAX_HEADER_ROWS]), notes


def readable(value: str) -> str:
    """JSON objects and lists (kohya stores tags, datasets and arguments as JSON text) pretty-printed."""
    if not value.lstrip().startswith(("{", "[")):
        return value
    try:
        return json.dumps(json.loads(value), indent=1, ensure_ascii=False)
    except json.JSONDecodeError:
        return value


def bounded(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… cut here: {len(text) - limit:,} more characters ({len(text):,} in all)."


def training_facts(metadata: dict[str, str]) -> tuple[tuple[str, str], ...]:
    facts = []
    for fact in TRAINING_FACTS:
        value = next((metadata[key] for key in fact.keys if metadata.get(key, "").strip()), None)
        if value is None:
            continue
        if fact.total and metadata.get(fact.total, "").strip() not in ("", "None"):
            value = f"{value} of {metadata[fact.total]}"
        facts.append((fact.label, bounded(value, MAX_SHOWN_CHARS)))
    return tuple(facts)


def tag_folders(metadata: dict[str, str]) -> tuple[TagFolder, ...]:
    """kohya's `ss_tag_frequency` ({folder: {tag: count}}) with `ss_dataset_dirs` ({folder: {n_repeats, img_count}})."""
    tags_by_folder = _json_object(metadata.get("ss_tag_frequency"))
    dirs = _json_object(metadata.get("ss_dataset_dirs"))
    folders = []
    for name, tags in tags_by_folder.items():
        counts = {tag.strip(): count for tag, count in (tags.items() if isinstance(tags, dict) else ())
                  if isinstance(count, int) and isinstance(tag, str) and tag.strip()}
        top = tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_TAGS])
        folder = dirs.get(name) if isinstance(dirs.get(name), dict) else {}
        folders.append(TagFolder(name, _int(folder.get("img_count")), _int(folder.get("n_repeats")), top, len(counts)))
    return tuple(folders)


def _factor(key: str) -> tuple[str, str | None]:
    """(layer, "down" | "up" | "alpha"), or (key, None) for a key that is no LoRA factor."""
    for suffix, role in FACTOR_SUFFIXES.items():
        if key.endswith(suffix):
            return key.removesuffix(suffix), role
    if key.endswith(".alpha"):
        return key.removesuffix(".alpha"), "alpha"
    return key, None


def _adapter_config(metadata: dict[str, str]) -> dict[str, dict]:
    """diffusers' saved PEFT config per component (`unet.lora_alpha`, ...), or one config for all (an adapter saved
    from a single model)."""
    config = _json_object(metadata.get(ADAPTER_METADATA_KEY))
    by_component = {
        component: {key.removeprefix(f"{component}."): value for key, value in config.items()
                    if key.startswith(f"{component}.")}
        for component in COMPONENTS
    }
    return {component: part or config for component, part in by_component.items()}


def _scale(stem: str, rank: int, alpha: float | None, peft_config: dict[str, dict]) -> float:
    """alpha / rank as diffusers applies it: kohya's `.alpha`, else diffusers' saved config, else alpha = rank."""
    if alpha is not None:
        return alpha / rank
    component, _, layer = stem.partition(".")
    if component not in COMPONENTS:  # attention-processor files name UNet layers without a prefix
        component, layer = "unet", stem
    config = peft_config[component]
    if "lora_alpha" not in config:
        return 1.0
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, layer, config["lora_alpha"]))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _coarse(block: str) -> str:
    return block.rstrip("0123456789")


def _summed(order: tuple[str, ...], norms: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Per block in `order`, zero where nothing lands; OTHER last, only when some layer is in no block."""
    totals = dict.fromkeys(order, 0.0)
    for block, norm in norms:
        totals[block] = totals.get(block, 0.0) + norm
    return totals


def _json_object(raw: str | None) -> dict:
    try:
        value = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
