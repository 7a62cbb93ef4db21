"""Which ControlNet serves each mode, and a cache that loads each one once, on first use.

Defaults per family can be overridden per mode with `--controlnet MODE=SOURCE` or the environment
variable `STUDIO_CONTROLNET_<MODE>`; a model folder's `studio.json` names its own.
"""

from __future__ import annotations

import os

import torch
from diffusers import ControlNetModel
from huggingface_hub.errors import HFValidationError

from pipelines.errors import StudioError
from pipelines.request import CONTROL_MODES

DEFAULT_CONTROLNETS: dict[str, dict[str, str]] = {
    "sd15": {
        "pose": "lllyasviel/control_v11p_sd15_openpose",
        "edge": "lllyasviel/control_v11p_sd15_canny",
        "depth": "lllyasviel/control_v11f1p_sd15_depth",
    },
    "sd2": {
        "pose": "thibaud/controlnet-sd21-openpose-diffusers",
        "edge": "thibaud/controlnet-sd21-canny-diffusers",
        "depth": "thibaud/controlnet-sd21-depth-diffusers",
    },
    "sdxl": {
        "pose": "thibaud/controlnet-openpose-sdxl-1.0",
        "edge": "diffusers/controlnet-canny-sdxl-1.0",
        "depth": "diffusers/controlnet-depth-sdxl-1.0",
    },
}


def controlnet_registry(
    family: str, model_controlnets: dict[str, str] | None = None, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """mode -> ControlNet source: family default, then the model's own, then env, then flags."""
    registry = dict(DEFAULT_CONTROLNETS.get(family, {}))
    registry.update(model_controlnets or {})
    for mode in CONTROL_MODES:
        if env_source := os.environ.get(f"STUDIO_CONTROLNET_{mode.upper()}"):
            registry[mode] = env_source
    registry.update(overrides or {})
    return registry


class ControlNetCache:
    def __init__(self, registry: dict[str, str], device: str, dtype: torch.dtype) -> None:
        self.registry = registry
        self.device = device
        self.dtype = dtype
        self._loaded: dict[str, ControlNetModel] = {}

    def get(self, mode: str) -> ControlNetModel:
        source = self.registry.get(mode)
        if source is None:
            raise StudioError(f"No ControlNet is configured for {mode} mode with this model.")
        if source not in self._loaded:
            self._loaded[source] = self._load(mode, source)
        return self._loaded[source]

    def _load(self, mode: str, source: str) -> ControlNetModel:
        try:
            controlnet = ControlNetModel.from_pretrained(source, dtype=self.dtype, use_safetensors=True)
        except (OSError, HFValidationError, ValueError) as error:
            raise StudioError(
                f"The {mode} ControlNet {source!r} could not be loaded: it is not cached here and the "
                f"Hugging Face Hub cannot be reached, or it has no .safetensors weights. Text mode still "
                f"works; set STUDIO_CONTROLNET_{mode.upper()} to a local ControlNet folder. Details: {error}"
            ) from error
        return controlnet.to(self.device)
