"""Pictures of latents: the VAE's exact decode, and cheap live previews while a run goes on.

A preview shows the model's current estimate of the clean image (x0) where the step gives one, which reads far
better than the noisy sample itself. It is decoded cheaply: by a linear latent-to-RGB map for Stable Diffusion's
VAEs (a 3x4 matrix per pixel instead of a decoder pass), by the model's own VAE where that is small (the embedded
model decodes 16x16 latents in milliseconds). Previews are taken only while their time stays within a share of
the run's, whatever the machine, and they only read the latents, so the final image is the same without them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from pipelines.steps import DenoisingStep
from pipelines.vae import decode_latents

# At most this share of a run's time goes to previews; the rest of the run is the same as without them.
PREVIEW_SHARE = 0.05
# And none sooner than this after the start or the last one: delivering a preview (PNG, cache file, stream, the
# browser's fetch) cost 50-90 ms here, more than its decode, and a run shorter than this ends before anyone could
# look (scripts/benchmark_served.py: the embedded model's 0.34 s run served in 0.59 s with previews, 0.49 s without).
PREVIEW_INTERVAL_S = 0.5
# Linear maps from a latent pixel to RGB in [-1, 1] (rows: latent channels; ComfyUI's latent_formats.py, fitted
# on each family's VAE). SD 2.x shares SD 1.x's VAE.
_SD_RGB = (
    (0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177),
)
_SDXL_RGB = (
    (0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188),
)
LATENT_RGB: dict[str, tuple[tuple, tuple]] = {
    "sd15": (_SD_RGB, (0.0, 0.0, 0.0)),
    "sd2": (_SD_RGB, (0.0, 0.0, 0.0)),
    "sdxl": (_SDXL_RGB, (0.1084, -0.0175, -0.0011)),
}


@dataclass(frozen=True)
class Preview:
    images: list[Image.Image]  # one per image of the run
    step: int
    total: int

    @property
    def caption(self) -> str:
        return f"Preview, step {self.step}/{self.total}"


def preview_images(pipe: DiffusionPipeline, latents: torch.Tensor, family: str) -> list[Image.Image]:
    """A cheap picture of each latent: the linear map where the family has one, else the VAE."""
    if family in LATENT_RGB and latents.shape[1] == len(LATENT_RGB[family][0]):
        factors, bias = (torch.tensor(values, dtype=torch.float32) for values in LATENT_RGB[family])
        rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu(), factors) + bias
        pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        return [Image.fromarray(np.ascontiguousarray(image)) for image in pixels]
    return decode_latents(pipe, latents, mid_run=True)


class Previewer:
    """A step hook that sends a preview every few steps, as often as `share` of the run's time allows.

    A step gets a preview only if `interval` seconds have passed since the start or the last preview, and the
    previews so far plus one more (at their mean cost so far) stay within the share of the run's time so far; the
    last step gets none, since the image itself comes next.
    """

    def __init__(self, family: str, send: Callable[[Preview], None], share: float = PREVIEW_SHARE,
                 clock: Callable[[], float] = time.perf_counter, interval: float = PREVIEW_INTERVAL_S) -> None:
        self.family, self.send, self.share, self.clock, self.interval = family, send, share, clock, interval
        self.started = self.last_sent = clock()
        self.spent = 0.0
        self.count = 0

    def options(self) -> dict[str, object]:
        """What it takes besides `send` and the clock: enough to build the same previewer elsewhere (a remote
        backend runs it where the model is and streams the previews, `serving/wire.py`)."""
        return {"family": self.family, "share": self.share, "interval": self.interval}

    def __call__(self, step: DenoisingStep) -> None:
        now = self.clock()
        expected = self.spent / self.count if self.count else 0.0
        too_soon = now - self.last_sent < self.interval
        if too_soon or step.index >= step.total or self.spent + expected > self.share * (now - self.started):
            return
        latents = step.predicted_x0 if step.predicted_x0 is not None else step.latents
        self.send(Preview(preview_images(step.pipe, latents, self.family), step.index, step.total))
        self.last_sent = self.clock()
        self.spent += self.last_sent - now
        self.count += 1
