"""GPU work on Hugging Face ZeroGPU Spaces: `spaces.GPU` with a duration estimated from each request.

ZeroGPU checks a visitor's quota against the duration a call declares (60 s unless told), and runs each call
in a forked worker. Elsewhere `spaces.GPU` returns the function unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from spaces import GPU

# Published plain-PyTorch rates on an H100: SD1.5 at 512 px about 55 it/s with guidance, SDXL at 1024 px about
# 15 it/s; with a ControlNet about two thirds of that. A step at 512x512 is budgeted 0.05 s, twice the SD1.5 rate,
# and scales with the pixel count; every call adds the VAE decode and hand-over.
SECONDS_PER_STEP_AT_512 = 0.05
SECONDS_PER_CALL = 5
MAX_SECONDS = 300
FALLBACK_SECONDS = 60  # for values that are not numbers: the studio refuses them before any GPU work anyway


def gpu_seconds(values: Mapping[str, object], images: int = 1) -> int:
    """The duration to declare for generating `images` images with the request values `values`."""
    try:
        steps = float(values.get("steps") or 30)
        pixels = float(values.get("width") or 1024) * float(values.get("height") or 1024)
        count = images * float(values.get("num_images") or 1)
        estimate = SECONDS_PER_CALL + steps * count * SECONDS_PER_STEP_AT_512 * pixels / 512**2
    except (TypeError, ValueError):
        return FALLBACK_SECONDS
    return FALLBACK_SECONDS if not math.isfinite(estimate) else int(min(MAX_SECONDS, max(SECONDS_PER_CALL, estimate)))


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
    """Positions and names of the tensor arguments with their shapes, and the names of the other non-None ones."""

    def describe(value: object) -> object:
        if hasattr(value, "shape"):
            return tuple(value.shape)
        if isinstance(value, dict):
            return tuple(sorted((key, describe(item)) for key, item in value.items()))
        return type(value).__name__

    named = tuple(sorted((key, describe(value)) for key, value in kwargs.items() if value is not None))
    return tuple(describe(value) for value in args), named


def compile_unet_ahead_of_time(pipe, resolution: int, lora_active: Callable[[], bool]) -> None:
    """Capture one UNet call of a native-size run, export it, compile it ahead of time on a ZeroGPU worker, and
    install it as the UNet's forward for calls of that shape (spaces.aoti_capture / aoti_compile)."""
    import spaces
    import torch

    @GPU(duration=AOT_COMPILE_SECONDS)
    def compile_on_gpu():
        with spaces.aoti_capture(pipe.unet) as call:
            pipe("", num_inference_steps=1, width=resolution, height=resolution, output_type="latent")
        exported = torch.export.export(pipe.unet, args=call.args, kwargs=call.kwargs)
        return spaces.aoti_compile(exported), call_signature(call.args, call.kwargs)

    compiled, signature = compile_on_gpu()
    # Not spaces.aoti_apply: it empties the module's own parameters, which LoRA requests still run on.
    pipe.unet.forward = AheadOfTimeForward(pipe.unet, compiled, signature, lora_active)
