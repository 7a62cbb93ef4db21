"""Clickable examples from `examples/<set>/examples.json`: the embedded model's own, or real-SD ones."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.settings import PROJECT_ROOT

EXAMPLES_ROOT = PROJECT_ROOT / "examples"


def example_set(family: str) -> Path:
    """Examples made for the embedded model suit no other model, and the other way round."""
    return EXAMPLES_ROOT / ("embedded" if family == "embedded" else "sd")


def mode_examples(family: str, mode: str) -> list[list[str]]:
    """Rows of [prompt] or [prompt, image path, preprocessor] for `mode`."""
    folder = example_set(family)
    index = folder / "examples.json"
    if not index.is_file():
        return []
    rows = []
    for example in json.loads(index.read_text()).get(mode, []):
        row = [example["prompt"]]
        if "image" in example:
            row += [str(folder / example["image"]), example.get("preprocessor", "none")]
        rows.append(row)
    return rows
