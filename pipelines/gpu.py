"""GPU work on Hugging Face ZeroGPU Spaces: `spaces.GPU` with a duration estimated from each request.

ZeroGPU checks a visitor's quota against the duration a call declares (60 s unless told), and runs each call
in a forked worker. Elsewhere `spaces.GPU` returns the function unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from spaces import GPU

# Published plain-PyTorch rates on an H100: SD1.5 at 512 px about 55 it/s with guidance, SDXL at 1024 px about
# 15 it/s: 0.018 and 0.017 s a step per 512x512 of pixels. ZeroGPU's default slot is a MIG slice of an H200 with
# about 0.45 of an H100's SMs, so about 0.04 s there; a step is budgeted twice that.
SECONDS_PER_STEP_AT_512 = 0.08
# A ControlNet unit runs a copy of the UNet's encoder at every step: about half a UNet's work more each.
CONTROLNET_SHARE = 0.5
SECONDS_PER_CALL = 5  # text encoding, the VAE decode, handing the images back
# What a call loads itself: a forked worker has what was loaded before the fork (the base model, every ControlNet
# the registry names and the detectors whose weights are here, `Studio.load_before_the_fork`), not LoRAs.
SECONDS_PER_LORA = 3  # read a LoRA file and load it as an adapter
SECONDS_PER_HUB_LORA = 20  # a Hub LoRA (or a preset's) may have to be fetched first
SECONDS_PER_DETECTOR = 3  # a detector's weights moved to the GPU in a fresh worker, and its first run
MAX_SECONDS = 300
FALLBACK_SECONDS = 60  # for values that are not numbers: the studio refuses them before any GPU work anyway


def gpu_seconds(values: Mapping[str, object], images: int = 1, *, controlled: bool = False) -> int:
    """The duration to declare for generating `images` images with the raw request values `values`; `controlled`:
    the mode runs a ControlNet of its own. Read before the values are checked, so nothing here trusts them."""
    try:
        steps = float(values.get("steps") or 30)
        pixels = float(values.get("width") or 1024) * float(values.get("height") or 1024)
        count = images * float(values.get("num_images") or 1)
        units = int(controlled) + len(_listed(values.get("control_units")))
        work = steps * count * SECONDS_PER_STEP_AT_512 * pixels / 512**2 * (1 + CONTROLNET_SHARE * units)
        estimate = SECONDS_PER_CALL + _loading_seconds(values, controlled) + work
    except (TypeError, ValueError, OverflowError):
        return FALLBACK_SECONDS
    return FALLBACK_SECONDS if not math.isfinite(estimate) else int(min(MAX_SECONDS, max(SECONDS_PER_CALL, estimate)))


def _loading_seconds(values: Mapping[str, object], controlled: bool) -> float:
    loras = [item.strip() for item in str(values.get("loras") or "")[:2000].split(",") if item.strip()]
    preset = values.get("preset") not in (None, "", "none")  # its distillation LoRA comes from the Hub
    hub = sum(item.startswith("hub:") for item in loras) + preset
    units = values.get("control_units")
    detectors = (controlled and values.get("preprocessor") not in (None, "none")) + sum(
        isinstance(unit, Mapping) and unit.get("preprocessor", "none") != "none" for unit in _listed(units)
    )
    return SECONDS_PER_LORA * (len(loras) + preset) + SECONDS_PER_HUB_LORA * hub + SECONDS_PER_DETECTOR * detectors


def _listed(items: object) -> list | tuple:
    return items if isinstance(items, list | tuple) else ()


def gpu_task(duration: Callable[..., int]) -> Callable[[Callable], Callable]:
    """`spaces.GPU` with `duration`, called with the task's own arguments."""
    return GPU(duration=duration)


# ------------------------------------------------------------------ ahead-of-time compilation on ZeroGPU

# Exporting and compiling an SDXL UNet took several minutes in Hugging Face's published examples; the quota is
# charged for the time used, not the time declared.
AOT_COMPILE_SECONDS = 1500


def on_zero_gpu() -> bool:
    """Whether this runs on a ZeroGPU Space (the `spaces` package reads its own variable)."""
    from spaces.config import Config

    return bool(Config.zero_gpu)


class AheadOfTimeForward:
    """The UNet's forward on ZeroGPU: the ahead-of-time compiled graph for calls shaped like the one it was exported
    from with no LoRA active, the eager forward otherwise. The exported graph holds its weights as they were at
    export, so LoRAs (loaded later, into the eager module) and other sizes or inputs (a ControlNet's residuals) run
    eagerly rather than wrongly."""

    def __init__(self, unet, compiled: Callable, signature: tuple, lora_active: Callable[[], bool]) -> None:
        self.eager = type(unet).forward.__get__(unet)
        self.compiled = compiled
        self.lora_active = lora_active
        self.signature = signature  # `call_signature` of the exported call

    def fits(self, args: tuple, kwargs: dict) -> bool:
        return not self.lora_active() and call_signature(args, kwargs) == self.signature

    def __call__(self, *args, **kwargs):
        return (self.compiled if self.fits(args, kwargs) else self.eager)(*args, **kwargs)


def call_signature(args: tuple, kwargs: dict) -> tuple:
    """Positions and names of the tensor arguments with their shapes, dtypes and devices, and the names of the other
    non-None ones. The dtype matters as much as the shape: the Euler samplers hand the UNet float32 timesteps, DPM++,
    DDIM, UniPC, LCM and TCD int64 ones, and an AOTInductor graph does not check dtypes: fed the other one, it would
    read the timestep's bits as garbage."""

    def describe(value: object) -> object:
        if hasattr(value, "shape"):
            return tuple(value.shape), str(value.dtype), str(value.device)
        if isinstance(value, dict):
            return tuple(sorted((key, describe(item)) for key, item in value.items()))
        return type(value).__name__

    named = tuple(sorted((key, describe(value)) for key, value in kwargs.items() if value is not None))
    return tuple(describe(value) for value in args), named


def compile_unet_ahead_of_time(pipe, resolution: int, lora_active: Callable[[], bool], scheduler) -> None:
    """Capture one UNet call of a native-size run with `scheduler` (the studio's default sampler, so the graph gets
    the timestep dtype most requests give), export it, compile it ahead of time on a ZeroGPU worker, and install it
    as the UNet's forward for calls of that signature (spaces.aoti_capture / aoti_compile)."""
    import spaces
    import torch

    @GPU(duration=AOT_COMPILE_SECONDS)
    def compile_on_gpu():
        served_scheduler, pipe.scheduler = pipe.scheduler, scheduler
        try:
            with spaces.aoti_capture(pipe.unet) as call:
                pipe("", num_inference_steps=1, width=resolution, height=resolution, output_type="latent")
        finally:
            pipe.scheduler = served_scheduler
        exported = torch.export.export(pipe.unet, args=call.args, kwargs=call.kwargs)
        return spaces.aoti_compile(exported), call_signature(call.args, call.kwargs)

    compiled, signature = compile_on_gpu()
    # Not spaces.aoti_apply: it empties the module's own parameters, which LoRA requests still run on.
    pipe.unet.forward = AheadOfTimeForward(pipe.unet, compiled, signature, lora_active)
