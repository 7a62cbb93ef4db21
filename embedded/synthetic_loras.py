"""Random LoRA files that fit a given pipeline, in the layouts people download.

Used by the benchmark and the tests: real LoRA weights cannot be fetched here, and a random LoRA
exercises the same loading, mapping and switching paths as a trained one. It lives here, beside training,
because serving never needs it and scripts import nothing from tests/.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_tensors(
    pipe: DiffusionPipeline,
    *,
    layout: str = "kohya",
    rank: int = 4,
    seed: int = 0,
    strength: float = 0.5,
    text_encoder: bool = True,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """LoRA factors for the attention layers of `pipe` in `layout` "kohya" (A1111) or "peft" (diffusers)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    parts = [("unet", pipe.unet, UNET_TARGETS)]
    if text_encoder:
        parts.append(("text_encoder", pipe.text_encoder, TEXT_TARGETS))
    for component, module, targets in parts:
        for name, layer in module.named_modules():
            layer = getattr(layer, "base_layer", layer)
            if isinstance(layer, torch.nn.Linear) and name.endswith(targets) and ".lora_" not in name:
                down = torch.randn(rank, layer.in_features, generator=generator) / layer.in_features**0.5
                up = torch.randn(layer.out_features, rank, generator=generator) * strength
                tensors.update(_named(component, name, down.to(dtype), up.to(dtype), rank, layout))
    return tensors


def write_lora(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path), metadata=metadata or {})
    return path


def kohya_metadata(
    *, base: str = "sd_v1", tags: dict[str, int] | None = None, title: str | None = None
) -> dict[str, str]:
    metadata = {"ss_base_model_version": base, "ss_network_module": "networks.lora"}
    if tags:
        metadata["ss_tag_frequency"] = json.dumps({"10_style": tags})
    if title:
        metadata["ss_output_name"] = title
    return metadata


def _named(component: str, name: str, down, up, rank: int, layout: str) -> dict[str, torch.Tensor]:
    if layout == "peft":
        return {f"{component}.{name}.lora_A.weight": down, f"{component}.{name}.lora_B.weight": up}
    if layout != "kohya":
        raise ValueError(f"unknown layout {layout!r}")
    if component == "unet":
        kohya = "lora_unet_" + name.replace(".", "_")
    else:  # kohya keeps CLIP's `text_model.` even where transformers flattened it away
        kohya = "lora_te_" + ("" if name.startswith("text_model.") else "text_model_") + name.replace(".", "_")
    return {
        f"{kohya}.lora_down.weight": down,
        f"{kohya}.lora_up.weight": up,
        f"{kohya}.alpha": torch.tensor(float(rank), dtype=down.dtype),
    }


SAFETENSORS_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}


def write_layout_file(path: str | Path, layout: dict, unknown_rank: int = 4) -> Path:
    """A safetensors file with exactly the keys, shapes, dtypes and metadata of a published layout.

    The data section is left sparse (all zeros, no disk blocks, nothing in memory), so a 400 MB SDXL
    layout costs only its header: enough for everything that reads headers and maps keys.
    """
    header, offset = {}, 0
    for key, entry in layout["tensors"].items():
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"] or "float16", "F16")
        shape = [unknown_rank if size is None else size for size in entry["shape"]]
        nbytes = _element_count(shape) * (2 if dtype in ("F16", "BF16") else 4 if dtype == "F32" else 8)
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if layout.get("metadata"):
        header["__metadata__"] = {key: str(value) for key, value in layout["metadata"].items()}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        handle.truncate(8 + len(raw) + offset)
    return path


def _element_count(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
