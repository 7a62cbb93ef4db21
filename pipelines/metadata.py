"""Generation parameters as the A1111 `parameters` PNG text chunk, which other tools read.

Format: the prompt (LoRAs as `<lora:name:weight>` tags), then `Negative prompt: ...` when there is
one, then one line of `Key: value` pairs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin

_LORA_TAG = re.compile(r"\s*<lora:([^:>]+):([-0-9.eE+]+)>")


def format_parameters(
    prompt: str,
    negative_prompt: str,
    settings: dict[str, object],
    loras: list[tuple[str, float]] | None = None,
) -> str:
    """`settings` keeps its order: Steps, Sampler, CFG scale, Seed, Size, Model, ... as A1111 writes them."""
    tags = "".join(f" <lora:{name}:{weight:g}>" for name, weight in loras or [])
    lines = [prompt + tags]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in settings.items()))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, object]:
    """Read back what `format_parameters` (or A1111) wrote: prompt, negative prompt, LoRAs, settings."""
    head, _, settings_line = text.rpartition("\n")
    prompt, marker, negative = head.partition("\nNegative prompt: ")
    if not marker and prompt.startswith("Negative prompt: "):
        prompt, negative = "", prompt.removeprefix("Negative prompt: ")
    loras = [(name, float(weight)) for name, weight in _LORA_TAG.findall(prompt)]
    return {
        "prompt": _LORA_TAG.sub("", prompt),
        "negative_prompt": negative,
        "loras": loras,
        **_parse_settings(settings_line),
    }


def tag_with_parameters(image: Image.Image, parameters: str) -> Image.Image:
    """Attach `parameters`; Gradio and `save_png` write an image's text `info` into the PNG it saves."""
    image.info["parameters"] = parameters
    return image


def save_png(image: Image.Image, target: str | Path | BinaryIO) -> None:
    """Save as PNG with every text entry of `image.info` as a text chunk."""
    chunks = PngImagePlugin.PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            chunks.add_text(key, value)
    image.save(target, format="PNG", pnginfo=chunks)


def _quote(value: object) -> str:
    text = str(value)
    return f'"{text}"' if any(ch in text for ch in ',:"') else text


def _parse_settings(line: str) -> dict[str, str]:
    pairs = re.findall(r'\s*([^:,]+):\s*("(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)', line)
    return {key.strip(): value.strip().strip('"') for key, value in pairs}
