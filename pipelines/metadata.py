"""Generation parameters as the A1111 `parameters` PNG text chunk, which other tools read.

Format: the prompt (LoRAs as `<lora:name:weight>` tags), then `Negative prompt: ...` when there is
one, then one line of `Key: value` pairs. A value with a comma, colon, quote or line break is written as
a JSON string, as A1111 does, so a ControlNet unit (`ControlNet 0: "Module: canny, Weight: 1, ..."`) is one
value whose inside is another such line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin

# A1111's extra-network tags; `lyco` is the older LyCORIS extension's spelling of the same thing.
_LORA_TAG = re.compile(r"<(?:lora|lyco):([^<>]+)>")
# `format_parameters` appends each tag after one space; A1111 users put them anywhere.
_TRAILING_LORA_TAGS = re.compile(r"(?: <(?:lora|lyco):[^<>]+>)+$")
_PAIR = re.compile(r'\s*([^:,]+):\s*("(?:\\.|[^\\"])*"|[^,]*)\s*(?:,|$)')
_NEEDS_QUOTES = (",", ":", '"', "\n")
_NEGATIVE = "\nNegative prompt: "


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
    """Read back what `format_parameters` (or A1111) wrote: prompt, negative prompt, LoRAs, settings.

    `loras` lists (name, weight) from the prompt's tags; `partly_read_lora_tags` lists the tags with more than a
    weight (A1111's separate text-encoder and UNet weights), of which only the first weight was read.
    """
    head, settings = _split_settings_line(text.replace("\r\n", "\n"))
    prompt, marker, negative = head.partition(_NEGATIVE)
    if not marker and prompt.startswith(_NEGATIVE[1:]):
        prompt, negative = "", prompt.removeprefix(_NEGATIVE[1:])
    tags = [_lora_from_tag(inner) for inner in _LORA_TAG.findall(prompt)]
    return {
        "prompt": _without_lora_tags(prompt),
        "negative_prompt": negative,
        "loras": [(name, weight) for name, weight, _ in tags],
        "partly_read_lora_tags": [tag for _, _, tag in tags if tag],
        **settings,
    }


def parse_settings_line(line: str) -> dict[str, str]:
    """`Key: value, Key: "quoted, value"` as a dict of text values, quotes removed."""
    return {key.strip(): _unquote(value.strip()) for key, value in _PAIR.findall(line)}


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


def _split_settings_line(text: str) -> tuple[str, dict[str, str]]:
    """The prompt part and the settings; like A1111, a last line counts as settings only if it looks like them."""
    head, _, last = text.rpartition("\n")
    settings = parse_settings_line(last)
    if len(settings) >= 3 or "Steps" in settings:
        return head, settings
    return text, {}


def _without_lora_tags(prompt: str) -> str:
    """The prompt the model was conditioned on: A1111 removes each tag alone, leaving the text around it."""
    return _LORA_TAG.sub("", _TRAILING_LORA_TAGS.sub("", prompt))


def _lora_from_tag(inner: str) -> tuple[str, float, str]:
    """A1111's `name:weight`, `name:te:unet` or `name:te=0.8:unet=0.5`: name, weight, the tag if partly read.

    Arguments are the trailing parts that are numbers or `key=value`, so a name with a colon (`hub:owner/repo`)
    stays whole. A1111's first weight is the text encoder's and the UNet's unless a second one is given.
    """
    parts = inner.split(":")
    arguments: list[str] = []
    while len(parts) > 1 and _is_tag_argument(parts[-1]):
        arguments.insert(0, parts.pop())
    name = ":".join(parts).strip()
    if not arguments:
        return name, 1.0, ""
    first = arguments[0].removeprefix("te=")
    try:
        weight = float(first)
    except ValueError:
        return name, 1.0, f"<lora:{inner}>"
    return name, weight, f"<lora:{inner}>" if len(arguments) > 1 else ""


def _is_tag_argument(part: str) -> bool:
    key, equals, value = part.partition("=")
    try:
        float(value if equals else key)
    except ValueError:
        return False
    return not equals or key.strip().isidentifier()


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(mark in text for mark in _NEEDS_QUOTES) else text


def _unquote(value: str) -> str:
    if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value[1:-1]
