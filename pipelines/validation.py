"""Server-side checks of every request: API callers skip the sliders, so every limit is enforced here."""

from __future__ import annotations

import math
import random
from dataclasses import replace

from pipelines.errors import StudioError
from pipelines.loader import ModelInfo
from pipelines.request import MODES, GenerationRequest
from pipelines.schedulers import SCHEDULERS
from pipelines.settings import Limits

MAX_SEED = 2**32 - 1


def validate_request(
    request: GenerationRequest, model: ModelInfo, limits: Limits, size_multiple: int
) -> tuple[GenerationRequest, list[str]]:
    """Check `request` and resolve its defaults; returns the request as it will run and notes for the person."""
    notes: list[str] = []
    _check_choice("mode", request.mode, MODES)
    scheduler = _or_default(request.scheduler, model.default_scheduler)
    _check_choice("scheduler", scheduler, tuple(SCHEDULERS))
    _check_text("prompt", request.prompt, limits)
    _check_text("negative prompt", request.negative_prompt, limits)
    steps = _or_default(request.steps, model.default_steps)
    guidance = _or_default(request.guidance_scale, model.default_guidance)
    _check_range("steps", steps, 1, limits.max_steps, whole=True)
    _check_range("guidance scale", guidance, 0.0, limits.max_guidance)
    _check_range("number of images", request.num_images, 1, limits.max_images, whole=True)
    _check_range("seed", request.seed, -1, MAX_SEED, whole=True)
    _check_range("ControlNet conditioning scale", request.controlnet_scale, 0.0, 2.0)
    _check_range("control guidance start", request.control_start, 0.0, 1.0)
    _check_range("control guidance end", request.control_end, 0.0, 1.0)
    if request.control_start >= request.control_end:
        raise StudioError("Control guidance start must be below control guidance end.")
    for lora in request.loras:
        _check_range(f"weight of LoRA {lora.name!r}", lora.weight, -2.0, 2.0)
    width = _snap_side("width", _or_default(request.width, model.resolution), size_multiple, limits, notes)
    height = _snap_side("height", _or_default(request.height, model.resolution), size_multiple, limits, notes)
    seed = request.seed if request.seed >= 0 else random.randint(0, MAX_SEED)
    # Sliders and JSON send 1 for 1.0; diffusers insists on floats for some arguments.
    resolved = replace(
        request,
        steps=int(steps),
        guidance_scale=float(guidance),
        scheduler=scheduler,
        width=width,
        height=height,
        seed=int(seed),
        num_images=int(request.num_images),
        controlnet_scale=float(request.controlnet_scale),
        control_start=float(request.control_start),
        control_end=float(request.control_end),
        detect_resolution=int(request.detect_resolution),
    )
    return resolved, notes


def _or_default(value: object, default: object) -> object:
    return default if value is None else value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise StudioError(f"Unknown {name} {value!r}. Choose one of: {', '.join(choices)}.")


def _check_text(name: str, value: object, limits: Limits) -> None:
    if not isinstance(value, str):
        raise StudioError(f"The {name} must be text.")
    if len(value) > limits.max_prompt_chars:
        raise StudioError(f"The {name} has {len(value)} characters; the limit is {limits.max_prompt_chars}.")


def _check_range(name: str, value: object, low: float, high: float, whole: bool = False) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not is_number or (whole and value != int(value)):
        raise StudioError(f"The {name} must be a {'whole ' if whole else ''}number, not {value!r}.")
    if not low <= value <= high:
        raise StudioError(f"The {name} must be between {low:g} and {high:g}; got {value:g}.")


def _snap_side(name: str, value: object, multiple: int, limits: Limits, notes: list[str]) -> int:
    _check_range(name, value, multiple, limits.max_side, whole=True)
    snapped = max(multiple, int(value) // multiple * multiple)
    if snapped != value:
        notes.append(f"The {name} {value} was rounded down to {snapped}, a multiple of {multiple} as the model needs.")
    return snapped
