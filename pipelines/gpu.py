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
