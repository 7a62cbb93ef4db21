"""Schedulers by the names people know from other tools, built from the model's own scheduler config."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from pipelines.errors import StudioError

# Latent-diffusion samples are not confined to [-1, 1]; clipping them (DDIM's default) saturates images.
_NO_CLIP = {"clip_sample": False}

# name -> (class, extra config); the extra config overrides the model's scheduler config.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "DPM++ 2M": (DPMSolverMultistepScheduler, {}),
    "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "DDIM": (DDIMScheduler, _NO_CLIP),
    "DDPM": (DDPMScheduler, _NO_CLIP),
    "UniPC": (UniPCMultistepScheduler, {}),
    "LCM": (LCMScheduler, _NO_CLIP),
    "TCD": (TCDScheduler, _NO_CLIP),
    # Timesteps that end at the last training step, as few-step LoRAs (SDXL-Lightning) are trained with; the
    # name is AUTOMATIC1111's schedule type for it.
    "Euler SGM Uniform": (EulerDiscreteScheduler, {"timestep_spacing": "trailing"}),
}

# What most web UIs default to; a model folder's studio.json may name its own.
DEFAULT_SCHEDULER = "Euler a"


def scheduler_names() -> list[str]:
    return list(SCHEDULERS)


def make_scheduler(name: str, base_config: dict) -> SchedulerMixin:
    """Build scheduler `name` from the model's scheduler config (betas, timestep spacing, prediction type)."""
    if name not in SCHEDULERS:
        raise StudioError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SCHEDULERS)}.")
    scheduler_class, extra = SCHEDULERS[name]
    return scheduler_class.from_config(base_config, **extra)
