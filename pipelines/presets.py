"""Few-step presets: one choice sets a published few-step recipe for the family served (a distillation LoRA with
the sampler, steps and guidance its authors give), or, for the embedded model, fewer steps at a measured quality.

A preset is applied in validation (`apply_preset`), so the page, the API and the PNG parameters all see the
concrete sampler, steps, guidance and LoRA it stands for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.lora.sources import HUB_PREFIX, parse_hub_spec
from pipelines.request import LoraChoice

NO_PRESET = "none"


@dataclass(frozen=True)
class Preset:
    name: str
    scheduler: str
    steps: int
    guidance_scale: float | None  # None keeps the request's; 1 turns classifier-free guidance off, as LoRAs ask
    lora: str | None = None  # hub:owner/repo/file.safetensors
    why: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}: {self.steps} steps, {self.scheduler}"


def _lcm(repo: str) -> Preset:
    return Preset("LCM-LoRA", "LCM", 4, 1.0, f"{HUB_PREFIX}{repo}/pytorch_lora_weights.safetensors",
                  "Latent Consistency distillation as a LoRA (Luo et al., 2023)")


def _tcd(repo: str) -> Preset:
    return Preset("TCD", "TCD", 4, 1.0, f"{HUB_PREFIX}{repo}/pytorch_lora_weights.safetensors",
                  "Trajectory Consistency Distillation as a LoRA (Zheng et al., 2024)")


PRESETS: Mapping[str, tuple[Preset, ...]] = {
    "sd15": (_lcm("latent-consistency/lcm-lora-sdv1-5"), _tcd("h1t/TCD-SD15-LoRA")),
    "sdxl": (
        _lcm("latent-consistency/lcm-lora-sdxl"),
        Preset("SDXL-Lightning", "Euler SGM Uniform", 4, 1.0,
               f"{HUB_PREFIX}ByteDance/SDXL-Lightning/sdxl_lightning_4step_lora.safetensors",
               "progressive adversarial distillation as a LoRA (Lin et al., 2024); trailing timesteps"),
        _tcd("h1t/TCD-SDXL-LoRA"),
    ),
    # Measured on 48 validation prompts (scripts/evaluate_embedded.py --validation --steps 20 12 10 8 6 4) at the
    # model's default guidance: at 8 DDIM steps the colour was
    # right in 48 of 48 with mean colour error 22.6 and the shape in 77%, as at 20 steps (48, 22.5, 75%); at 6
    # steps the shape fell to 71%, at 4 the colour error rose to 25.3.
    "embedded": (Preset("Fast", "DDIM", 8, None, why="the embedded model's quality holds down to 8 DDIM steps"),),
}


def presets_for(family: str) -> tuple[Preset, ...]:
    return PRESETS.get(family, ())


def preset_names(family: str) -> tuple[str, ...]:
    return (NO_PRESET, *(preset.name for preset in presets_for(family)))


def preset_named(family: str, name: str) -> Preset:
    """The family's preset `name` (validation has checked it is one of `preset_names`)."""
    return next(preset for preset in presets_for(family) if preset.name == name)


def apply_preset(values: dict, preset: Preset) -> list[str]:
    """Set `values`' sampler, steps and guidance to `preset`'s and add its LoRA (once); returns a note."""
    values.update(scheduler=preset.scheduler, steps=preset.steps)
    if preset.guidance_scale is not None:
        values["guidance_scale"] = preset.guidance_scale
    if preset.lora and preset.lora not in {choice.name for choice in values["loras"]}:
        values["loras"] = (*values["loras"], LoraChoice(preset.lora, 1.0))
    return [f"Preset {preset.name}: {preset.steps} steps of {preset.scheduler}, guidance {values['guidance_scale']:g}"
            + (f", with the LoRA {preset.lora.removeprefix(HUB_PREFIX)}." if preset.lora else ".")]


def is_cached(preset: Preset) -> bool:
    """Whether the preset's LoRA is in the local Hugging Face cache (always true without one)."""
    if not preset.lora:
        return True
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = parse_hub_spec(preset.lora)
    return isinstance(try_to_load_from_cache(repo_id, filename), str)
