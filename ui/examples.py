"""Clickable examples from `examples/<set>/prompts.json`: the embedded model's own, or real-SD ones.

Each entry has a `mode`, a `prompt` and a `seed`, and may name a ready `control_map` (used with preprocessor
"none"), a `source_image` (a photo for the mode's default preprocessor), for img2img and inpainting an `image`,
a `mask` and a `strength`, and a `lora`. An example fixes its seed (and turns "Randomize seed" off): a person who
clicks it sees what its prompt says, the picture `tests/test_embedded_examples.py` checks, not a random one.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.endpoints import for_mode
from pipelines.modes import MODES
from pipelines.request import GenerationRequest
from pipelines.settings import PROJECT_ROOT
from pipelines.studio import Studio

EXAMPLES_ROOT = PROJECT_ROOT / "examples"


def example_set(family: str) -> Path:
    """Examples made for the embedded model suit no other model, and the other way round."""
    return EXAMPLES_ROOT / ("embedded" if family == "embedded" else "sd")


def mode_examples(family: str, mode: str, hidden: tuple[str, ...] = ()) -> list[list[str]]:
    """Rows of values for the mode's `example_columns`, leaving out those that need a `hidden` preprocessor."""
    folder = example_set(family)
    index = folder / "prompts.json"
    if not index.is_file():
        return []
    rows = []
    for example in json.loads(index.read_text()):
        if example["mode"] != mode:
            continue
        lora = f"{example['lora']}:1" if example.get("lora") else ""
        seeded = [example["seed"], False]
        if mode == "text":
            rows.append([example["prompt"], lora, *seeded])
            continue
        if MODES[mode].starts_from_image:
            images = [str(folder / example[name]) for name in ("image", "mask") if name in example]
            rows.append([example["prompt"], *images, example["strength"], lora, *seeded])
            continue
        if "control_map" in example:
            rows.append([example["prompt"], str(folder / example["control_map"]), "none", lora, *seeded])
        preprocessor = example.get("preprocessor", MODES[mode].preprocessors[0])
        if "source_image" in example and preprocessor not in hidden:
            rows.append([example["prompt"], str(folder / example["source_image"]), preprocessor, lora, *seeded])
    return rows


def example_requests(studio: Studio, mode: str) -> list[GenerationRequest]:
    """The requests the page sends for each example row `mode`'s tab shows (rows whose detector's weights are not
    here are not shown)."""
    columns = MODES[mode].example_columns
    hidden = for_mode(studio.served, MODES[mode]).unavailable_preprocessors
    return [GenerationRequest(mode=mode, **dict(zip(columns, row, strict=True)))
            for row in mode_examples(studio.model.family, mode, hidden=hidden)]
