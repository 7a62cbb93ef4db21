"""The one request type that flows from the UI (or an API caller) through the studio, and its result.

The UI builds a `GenerationRequest`; `Studio.generate` validates it against the limits in `Settings`,
runs it, and returns a `GenerationResult` that carries the images and the exact parameters that made
them (seeds resolved, sizes snapped, prompts as actually used).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from pipelines.errors import StudioError

CONTROL_MODES = ("pose", "edge", "depth")
MODES = ("text", *CONTROL_MODES)


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA and its weight.

    `name` is a file name in the LoRA folder, the path of a file uploaded in this session, or
    `hub:owner/repo` / `hub:owner/repo/file.safetensors`.
    """

    name: str
    weight: float = 1.0


def parse_lora_list(text: str) -> tuple[LoraChoice, ...]:
    """`"stripes:0.8, pastel"` -> LoRA choices; a name without a weight gets 1.0."""
    choices = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, colon, weight = item.rpartition(":")
        if not colon:
            name, weight = item, "1"
        try:
            choices.append(LoraChoice(name.strip(), float(weight)))
        except ValueError:
            raise StudioError(f"LoRA {item!r}: write it as name:weight, e.g. stripes:0.8.") from None
    return tuple(choices)


@dataclass(frozen=True)
class GenerationRequest:
    mode: str = "text"
    prompt: str = ""
    negative_prompt: str = ""
    image: Image.Image | str | None = None  # a path is decoded (and checked) by the studio
    preprocessor: str = "none"
    low_threshold: int = 100
    high_threshold: int = 200
    include_hands: bool = False
    include_face: bool = False
    detect_resolution: int = 512
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = -1
    scheduler: str | None = None  # None: the model's default
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    controlnet_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    loras: tuple[LoraChoice, ...] = ()


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    parameters: list[str]
    request: GenerationRequest
    control_map: Image.Image | None = None
    notes: list[str] = field(default_factory=list)
