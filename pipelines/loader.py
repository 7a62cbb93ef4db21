"""Load a base text-to-image pipeline from a hub id, a local diffusers folder or one .safetensors file.

The base pipeline owns the only copy of the UNet, VAE and text encoder(s); every mode's pipeline is
built from it (see `studio.py`). Only safetensors weights are ever read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoPipelineForText2Image,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from huggingface_hub.errors import HFValidationError
from safetensors import safe_open

from pipelines.errors import StudioError

FAMILIES = ("sd15", "sd2", "sdxl", "embedded")


@dataclass(frozen=True)
class ModelInfo:
    """What the studio needs to know about the loaded base model beyond the pipeline itself."""

    source: str
    family: str
    resolution: int
    default_steps: int = 25
    default_guidance: float = 7.5
    controlnets: dict[str, str] | None = None  # per-model ControlNets from studio.json, paths resolved

    @property
    def name(self) -> str:
        return Path(self.source).name if self.source.endswith(".safetensors") else self.source.rstrip("/").split("/")[-1]


def pick_device(requested: str | None = None) -> tuple[str, torch.dtype]:
    """CUDA in fp16 where there is a GPU, otherwise the CPU in fp32 (fp16 on the CPU is slow and lossy)."""
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, torch.float16 if device.startswith("cuda") else torch.float32


def load_base_pipeline(source: str, device: str, dtype: torch.dtype) -> tuple[DiffusionPipeline, ModelInfo]:
    pipe = _load_single_file(source, dtype) if source.endswith(".safetensors") else _load_pretrained(source, dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe, describe_model(pipe, source)


def describe_model(pipe: DiffusionPipeline, source: str) -> ModelInfo:
    """Family and defaults: from the folder's `studio.json` when it has one, else from the architecture."""
    manifest = _read_manifest(source)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    controlnets = {
        mode: str((Path(source) / path).resolve()) if path.startswith(".") else path
        for mode, path in manifest.get("controlnets", {}).items()
    }
    return ModelInfo(
        source=source,
        family=manifest.get("family") or detect_family(pipe),
        resolution=int(manifest.get("resolution", native)),
        default_steps=int(manifest.get("steps", 25)),
        default_guidance=float(manifest.get("guidance_scale", 5.0 if isinstance(pipe, StableDiffusionXLPipeline) else 7.5)),
        controlnets=controlnets or None,
    )


def detect_family(pipe: DiffusionPipeline) -> str:
    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    return "sd2" if pipe.text_encoder.config.hidden_size == 1024 else "sd15"


def _read_manifest(source: str) -> dict:
    path = Path(source) / "studio.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _load_pretrained(source: str, dtype: torch.dtype) -> DiffusionPipeline:
    is_folder = Path(source).is_dir()
    if not is_folder and (source.startswith((".", "/")) or Path(source).suffix):
        raise StudioError(f"Model {source!r} is neither a diffusers folder nor a .safetensors file.")
    try:
        return AutoPipelineForText2Image.from_pretrained(source, dtype=dtype, use_safetensors=True)
    except (OSError, HFValidationError, ValueError) as error:
        raise StudioError(_load_failure_message(source, is_folder, error)) from error


def _load_failure_message(source: str, is_folder: bool, error: Exception) -> str:
    if is_folder:
        return f"Could not load the diffusers folder {source!r}: {error}"
    return (
        f"Could not load {source!r} from the Hugging Face Hub: it is not in the local cache and the Hub "
        f"cannot be reached (or the id is wrong, or it has no .safetensors weights). Details: {error}"
    )


def _load_single_file(path: str, dtype: torch.dtype) -> DiffusionPipeline:
    """One-file checkpoints in the original (LDM) layout, as Civitai and A1111 users have them."""
    if not Path(path).is_file():
        raise StudioError(f"Checkpoint file {path!r} does not exist.")
    pipeline_class = StableDiffusionXLPipeline if _is_sdxl_checkpoint(path) else StableDiffusionPipeline
    try:
        return pipeline_class.from_single_file(path, dtype=dtype, **_local_config_for(path))
    except (OSError, ValueError) as error:
        raise StudioError(
            f"Could not load the checkpoint {path!r}. Single files need their model's configuration: put a "
            f"diffusers folder of the same architecture next to it as '<name>.config/' or allow the Hub. "
            f"Details: {error}"
        ) from error


def _is_sdxl_checkpoint(path: str) -> bool:
    with safe_open(path, framework="pt") as checkpoint:
        return any(key.startswith("conditioner.embedders.1.") for key in checkpoint.keys())


def _local_config_for(path: str) -> dict:
    """A `<name>.config/` diffusers folder beside the file lets single files load with no Hub at all."""
    config_folder = Path(path).with_suffix(".config")
    return {"config": str(config_folder)} if config_folder.is_dir() else {}
