"""GPU work on Hugging Face ZeroGPU Spaces: `spaces.GPU` with a duration estimated from each request.

ZeroGPU checks a visitor's quota against the duration a call declares (60 s unless told), and runs each call
in a forked worker. Elsewhere `spaces.GPU` returns the function unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
FALLBACK_SECONDS = 60  # for a request the studio refuses before any GPU work anyway


@dataclass(frozen=True)
class GpuWork:
    """What a call's GPU time depends on, read off its checked request (`pipelines/endpoints.py`)."""

    denoising_steps: int  # over all its images
    width: int = 1024
    height: int = 1024
    controlnets: int = 0  # ControlNets at every step
    loras: tuple[str, ...] = ()  # the names it loads ("hub:" ones may have to be fetched)
    detectors: int = 0  # preprocessors that run a model


def gpu_seconds(work: GpuWork) -> int:
    """The duration to declare for `work`."""
    pixels = work.width * work.height / 512**2
    steps = work.denoising_steps * SECONDS_PER_STEP_AT_512 * pixels * (1 + CONTROLNET_SHARE * work.controlnets)
    hub = sum(name.startswith("hub:") for name in work.loras)
    loading = SECONDS_PER_LORA * len(work.loras) + SECONDS_PER_HUB_LORA * hub + SECONDS_PER_DETECTOR * work.detectors
    return int(min(MAX_SECONDS, max(SECONDS_PER_CALL, SECONDS_PER_CALL + loading + steps)))


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
