"""Which ControlNet serves each mode, and a cache that loads each one once, on first use.

Each mode declares its default ControlNet per family (`pipelines/modes.py`); a model folder's `studio.json`
names its own; the settings (STUDIO_CONTROLNET_<MODE> or `--controlnet MODE=SOURCE`) override both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from diffusers import ControlNetModel, ControlNetUnionModel
from huggingface_hub.errors import HFValidationError

from pipelines.errors import StudioError
from pipelines.loader import display_name
from pipelines.modes import MODES, UNION, UNION_CONTROLNETS

logger = logging.getLogger(__name__)


def controlnet_registry(
    family: str, model_controlnets: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """mode -> ControlNet source: the mode's default for the family, then the model's own, then the settings."""
    registry = {name: mode.controlnets[family] for name, mode in MODES.items() if family in mode.controlnets}
    if family in UNION_CONTROLNETS:
        registry[UNION] = UNION_CONTROLNETS[family]
    registry.update(model_controlnets or {})
    registry.update(overrides or {})
    return registry


class ControlNetCache:
    def __init__(self, registry: dict[str, str], device: str, dtype: torch.dtype) -> None:
        self.registry = registry
        self.device = device
        self.dtype = dtype
        self._loaded: dict[str, ControlNetModel] = {}
        # A source that failed is not tried again on every request (an unreachable Hub can take long to say so).
        self._failed: dict[str, StudioError] = {}

    def get(self, mode: str) -> ControlNetModel:
        source = self.registry.get(mode)
        if source is None:
            raise StudioError(f"No ControlNet is configured for {mode} mode with this model.")
        if source in self._failed:
            raise self._failed[source]
        if source not in self._loaded:
            try:
                self._loaded[source] = self._load(mode, source)
            except StudioError as error:
                self._failed[source] = error
                raise
        return self._loaded[source]

    def _load(self, mode: str, source: str) -> ControlNetModel:
        try:
            model_class = ControlNetUnionModel if mode == UNION else ControlNetModel
            controlnet = model_class.from_pretrained(source, dtype=self.dtype, use_safetensors=True)
        except (OSError, HFValidationError, ValueError) as error:
            logger.warning("loading the %s ControlNet %s failed: %s", mode, source, error)
            raise StudioError(
                f"The {mode} ControlNet {display_name(source)!r} could not be loaded: it is not cached here and the "
                f"Hugging Face Hub cannot be reached, or it has no .safetensors weights. Text mode still "
                f"works; set STUDIO_CONTROLNET_{mode.upper()} to a local ControlNet folder."
            ) from error
        return controlnet.to(self.device)
