"""The one request type that flows from the UI (or an API caller) through the studio, and its result.

The UI builds a `GenerationRequest`; `Studio.generate` validates it against the limits in `Settings`,
runs it, and returns a `GenerationResult` that carries the images and the exact parameters that made
them (seeds resolved, sizes snapped, prompts as actually used).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

MODES = ("text", "pose", "edge", "depth")


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA and its weight.

    `name` is a file name in the LoRA folder, the path of a file uploaded in this session, or
    `hub:owner/repo` / `hub:owner/repo/file.safetensors`.
    """

    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    mode: str = "text"
    prompt: str = ""
    negative_prompt: str = ""
    control_image: Image.Image | None = None
    preprocessor: str = "none"
    low_threshold: int = 100
    high_threshold: int = 200
    include_hands: bool = False
    include_face: bool = False
    detect_resolution: int = 512
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int = -1
    scheduler: str = "Euler a"
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
