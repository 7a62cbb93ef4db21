"""Forward noising: an image taken to timestep t by a schedule, in the VAE's latent space and in pixel space.

x_t = sqrt(alpha_bar(t)) x_0 + sqrt(1 - alpha_bar(t)) noise, with alpha_bar from diffusers' own `DDPMScheduler`
(`alphas_cumprod`, `add_noise`) and the signal-to-noise ratio from diffusers' `compute_snr`, so what is shown is
what those schedules really do. Stable Diffusion noises the VAE's latents, not the pixels: decoding a noised
latent shows what its UNet is asked to undo.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from PIL import Image, ImageOps

from pipelines.endpoints import validate_noise
from pipelines.images import prepare_user_image
from pipelines.parameters import PARAMETERS
from pipelines.request import NoiseRequest
from pipelines.vae import decode_latents, encode

# name -> the scheduler config that makes it; every schedule has the same number of training timesteps.
SCHEDULES: dict[str, dict] = {
    "linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},  # DDPM (Ho et al., 2020)
    "scaled linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},  # Stable Diffusion
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},  # improved DDPM (Nichol and Dhariwal, 2021)
}
TRAIN_TIMESTEPS = int(PARAMETERS["timestep"].high) + 1


@dataclass
class NoisedImages:
    latent_view: Image.Image  # x_t in the VAE's latent space, decoded
    pixel_view: Image.Image  # x_t in pixel space
    request: NoiseRequest
    alpha_bar: float
    snr: float
    latent_mean: float
    latent_std: float


@cache
def scheduler(name: str) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, **SCHEDULES[name])


def alpha_bar(name: str) -> np.ndarray:
    """alpha_bar(t) for t = 0 .. TRAIN_TIMESTEPS - 1: the share of the image's variance left at t."""
    return scheduler(name).alphas_cumprod.double().numpy()


def log10_snr(name: str) -> np.ndarray:
    """log10 of the signal-to-noise ratio alpha_bar / (1 - alpha_bar) at every timestep."""
    timesteps = torch.arange(TRAIN_TIMESTEPS)
    return torch.log10(compute_snr(scheduler(name), timesteps).double()).numpy()


def forward_noise(studio, request: NoiseRequest) -> NoisedImages:
    """`request`'s image at its timestep, noised in latent space (decoded) and in pixel space with the same seed."""
    request, _ = validate_noise(request, studio.served)
    side = studio.model.resolution
    picture = prepare_user_image(
        request.clean_image, max_pixels=studio.settings.limits.max_input_pixels, what="image to noise",
        background="white",
    )
    picture = ImageOps.fit(picture, (side, side), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(picture, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    schedule = scheduler(request.schedule)
    timestep = torch.tensor([request.timestep])
    generator = torch.Generator("cpu").manual_seed(request.seed)
    pipe = studio.base
    with torch.no_grad(), studio.lock:  # the VAE is shared with every run (and upcast in place on SDXL fp16)
        latents = encode(pipe, pixels)
        noised_latents = schedule.add_noise(latents, torch.randn(latents.shape, generator=generator), timestep)
        noised_pixels = schedule.add_noise(pixels, torch.randn(pixels.shape, generator=generator), timestep)
        [latent_view] = decode_latents(pipe, noised_latents)
    pixel_view = Image.fromarray(((noised_pixels[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    return NoisedImages(
        latent_view,
        pixel_view,
        request,
        alpha_bar=float(alpha_bar(request.schedule)[request.timestep]),
        snr=float(10 ** log10_snr(request.schedule)[request.timestep]),
        latent_mean=float(noised_latents.mean()),
        latent_std=float(noised_latents.std()),
    )
