"""Settings read from environment variables, so a Space is configured without code changes.

Command-line flags in `app.py` override the model and LoRA folder; every other limit comes from here
and is enforced on the server whatever the sliders allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_MODEL = PROJECT_ROOT / "models" / "embedded"
EMBEDDED_LORAS = PROJECT_ROOT / "models" / "loras"


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Limits:
    max_side: int = 1024
    max_images: int = 4
    max_steps: int = 100
    max_guidance: float = 30.0
    max_input_pixels: int = 4096 * 4096
    max_prompt_chars: int = 2000

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_side=_int("STUDIO_MAX_SIDE", cls.max_side),
            max_images=_int("STUDIO_MAX_IMAGES", cls.max_images),
            max_steps=_int("STUDIO_MAX_STEPS", cls.max_steps),
            max_input_pixels=_int("STUDIO_MAX_INPUT_PIXELS", cls.max_input_pixels),
        )


@dataclass(frozen=True)
class Settings:
    model: str = str(EMBEDDED_MODEL)
    lora_dir: str = str(EMBEDDED_LORAS)
    device: str | None = None
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            model=os.environ.get("STUDIO_MODEL", cls.model),
            lora_dir=os.environ.get("STUDIO_LORA_DIR", cls.lora_dir),
            device=os.environ.get("STUDIO_DEVICE") or None,
            limits=Limits.from_env(),
        )
