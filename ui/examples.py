"""Clickable examples from `examples/<set>/prompts.json`: the embedded model's own, or real-SD ones.

Each entry has a `mode` and a `prompt`, and may name a ready `control_map` (used with preprocessor
"none"), a `source_image` (a photo for the mode's default preprocessor), for img2img and inpainting an `image`,
a `mask` and a `strength`, and a `lora`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.modes import MODES
from pipelines.settings import PROJECT_ROOT

EXAMPLES_ROOT = PROJECT_ROOT / "examples"
TEXT_COLUMNS = ("prompt", "loras")
CONTROL_COLUMNS = ("prompt", "image", "preprocessor", "loras")
EDIT_COLUMNS = {"img2img": ("prompt", "image", "strength", "loras"), "inpaint": ("prompt", "image", "mask", "strength",
                                                                              "loras")}


def example_set(family: str) -> Path:
    """Examples made for the embedded model suit no other model, and the other way round."""
    return EXAMPLES_ROOT / ("embedded" if family == "embedded" else "sd")


def example_columns(mode: str) -> tuple[str, ...]:
    return TEXT_COLUMNS if mode == "text" else EDIT_COLUMNS.get(mode, CONTROL_COLUMNS)


def mode_examples(family: str, mode: str, hidden: tuple[str, ...] = ()) -> list[list[str]]:
    """Rows of values for `example_columns(mode)`, leaving out those that need a `hidden` preprocessor."""
    folder = example_set(family)
    index = folder / "prompts.json"
    if not index.is_file():
        return []
    rows = []
    for example in json.loads(index.read_text()):
        if example["mode"] != mode:
            continue
        lora = f"{example['lora']}:1" if example.get("lora") else ""
        if mode == "text":
            rows.append([example["prompt"], lora])
            continue
        if MODES[mode].starts_from_image:
            images = [str(folder / example[name]) for name in ("image", "mask") if name in example]
            rows.append([example["prompt"], *images, example["strength"], lora])
            continue
        if "control_map" in example:
            rows.append([example["prompt"], str(folder / example["control_map"]), "none", lora])
        preprocessor = example.get("preprocessor", MODES[mode].preprocessors[0])
        if "source_image" in example and preprocessor not in hidden:
            rows.append([example["prompt"], str(folder / example["source_image"]), preprocessor, lora])
    return rows
