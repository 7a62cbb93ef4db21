"""What fits in GPU memory: the served limits derived from the GPU's memory and the model family, and an
out-of-memory error turned into a message that says what to lower.

The settings' limits (STUDIO_MAX_SIDE, STUDIO_MAX_IMAGES) are what a person may ask for; on a GPU they are lowered to
what its memory holds. Twice the native side with 4 images is a UNet batch of 8 samples of 4 native images' pixels
each under guidance: for SDXL that is far more than a 16-24 GB card holds. The figures below are estimates for fp16
with PyTorch's SDPA attention, from published peak-memory reports of diffusers (not measured on this project's
machines, which have no GPU); scripts/gpu_check.py prints the peaks on a real one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from pipelines.errors import StudioError
from pipelines.settings import Limits

logger = logging.getLogger(__name__)

GIB = 2**30
# The CUDA context, cuBLAS workspaces and what the caching allocator cannot reuse.
RESERVED_GIB = 1.0


@dataclass(frozen=True)
class Footprint:
    """A family's GPU memory in fp16, in GiB."""

    weights: float  # the base model, and one ControlNet beside it
    sample: float  # the activations of one UNet sample at the native size (guidance runs two per image)
    decode: float  # the VAE decoding one native-size image

    def needed(self, images: int, width: int, height: int, resolution: int) -> float:
        """GiB for `images` images of `width` x `height` from a model of native side `resolution`. Activations grow
        with the pixel count (SDPA's memory is linear in the tokens); the studio decodes a batch of more than two
        native images one at a time and an image above 1.5x the native side in tiles, so decoding holds at most
        about two native images' worth."""
        share = width * height / resolution**2
        return RESERVED_GIB + self.weights + 2 * images * share * self.sample + self.decode * min(images * share, 2.25)


# Weights: parameter counts in fp16 (SD1.5's UNet 860 M, SDXL's 2.6 B and its two text encoders 0.8 B, a ControlNet
# 360 M / 1.25 B). Activations and decoding: SDXL in fp16 at 1024 px peaks near 11 GiB for one image and SD1.5 at
# 512 px near 3 GiB in diffusers' published figures, the VAE's decode a good part of it.
FOOTPRINTS = {
    "sd15": Footprint(weights=2.7, sample=0.35, decode=1.0),
    "sd2": Footprint(weights=3.1, sample=0.8, decode=2.2),
    "sdxl": Footprint(weights=9.0, sample=0.9, decode=2.5),
}


def gpu_gib(device: str) -> float | None:
    """The memory of the GPU `device` names, or None off CUDA."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.device(device)).total_memory / GIB


def fitting_limits(limits: Limits, family: str, memory_gib: float | None, resolution: int,
                   multiple: int) -> tuple[Limits, str]:
    """`limits` lowered to what `memory_gib` of GPU holds for `family`, and a note saying what was lowered ("" when
    nothing was). Off a GPU, or for a family without figures, the limits are as set."""
    footprint = FOOTPRINTS.get(family)
    if memory_gib is None or footprint is None:
        return limits, ""
    side = limits.side_for(resolution)
    images = max((n for n in range(1, limits.max_images + 1)
                  if footprint.needed(n, resolution, resolution, resolution) <= memory_gib), default=1)
    fitting_side = max((s for s in range(multiple, side + 1, multiple)
                        if footprint.needed(1, s, s, resolution) <= memory_gib), default=resolution)
    fitting_side = max(fitting_side, min(side, resolution))  # the native size is what the model is for
    if (fitting_side, images) == (side, limits.max_images):
        return limits, ""
    note = (f"This GPU has {memory_gib:.0f} GiB: up to {images} image{'s' if images != 1 else ''} at {resolution} px "
            f"and a side of up to "
            f"{fitting_side} px fit, so those are the limits (STUDIO_MAX_IMAGES and STUDIO_MAX_SIDE allow "
            f"{limits.max_images} and {side}).")
    return replace(limits, max_side=fitting_side, max_images=images), note


def check_fits(family: str, memory_gib: float | None, images: int, width: int, height: int, resolution: int) -> None:
    """Refuse, before any GPU work, a request that each limit allows but whose images and size together do not fit."""
    footprint = FOOTPRINTS.get(family)
    if memory_gib is None or footprint is None:
        return
    needed = footprint.needed(images, width, height, resolution)
    if needed > memory_gib:
        fit = max((n for n in range(1, images) if footprint.needed(n, width, height, resolution) <= memory_gib),
                  default=0)
        raise StudioError(_too_large(images, width, height, fit, f"need about {needed:.0f} GiB of GPU memory and "
                                                                 f"this GPU has {memory_gib:.0f} GiB"))


@contextmanager
def out_of_memory_as_message(images: int, width: int, height: int) -> Iterator[None]:
    """An out-of-memory error as a message that says what to lower; the memory the failed run held is freed."""
    try:
        yield
    except torch.OutOfMemoryError:
        logger.warning("out of GPU memory for %d images of %dx%d", images, width, height)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise StudioError(_too_large(images, width, height, None, "did not fit in the GPU's memory")) from None


def _too_large(images: int, width: int, height: int, fit: int | None, why: str) -> str:
    lower = (f"lower the number of images (num_images; {fit} fit at this size) or the size (width, height)"
             if fit else "lower the number of images (num_images) or the size (width, height)")
    return f"{images} image{'s' if images != 1 else ''} of {width}x{height} {why}: {lower}, and try again."
