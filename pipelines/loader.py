"""Load a base text-to-image pipeline from a hub id, a local diffusers folder or one .safetensors file.

The base pipeline owns the only copy of the UNet, VAE and text encoder(s); every mode's pipeline is
built from it (see `studio.py`). Only safetensors weights are ever read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoPipelineForText2Image,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.loaders.single_file_utils import SingleFileComponentError
from huggingface_hub.errors import HFValidationError
from safetensors import SafetensorError, safe_open

from pipelines.acceleration import place
from pipelines.errors import StudioError
from pipelines.schedulers import DEFAULT_SCHEDULER

logger = logging.getLogger(__name__)

# Pickled checkpoints are routed to the single-file loader only to be refused with the reason.
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelInfo:
    """What the studio needs to know about the loaded base model beyond the pipeline itself."""

    source: str
    family: str
    resolution: int
    default_steps: int = 25
    default_guidance: float = 7.5
    default_scheduler: str = DEFAULT_SCHEDULER
    controlnets: dict[str, str] | None = None  # per-model ControlNets from studio.json, paths resolved
    style_adapter: dict | None = None  # studio.json's "style_adapter", its paths relative to the model's folder

    @property
    def name(self) -> str:
        return display_name(self.source)


def display_name(source: str) -> str:
    """A model as people may see it: a hub id as it is, a local folder or file by its own name, never its path."""
    is_local = Path(source).exists() or source.startswith((".", "/", "~")) or Path(source).suffix
    return Path(source.rstrip("/")).name if is_local else source


def pick_device(requested: str | None = None) -> tuple[str, torch.dtype]:
    """CUDA in fp16 where there is a GPU, otherwise the CPU in fp32 (fp16 on the CPU is slow and lossy)."""
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, torch.float16 if device.startswith("cuda") else torch.float32


def device_report(device: str, family: str, torch_version: str, cuda_build: str | None, cuda_seen: bool) -> tuple[
        str, str]:
    """A line for the log saying what torch is and where the model runs, and a note for the page ("" when none):
    Stable Diffusion on the CPU takes minutes an image, and a CUDA wheel newer than the machine's driver (a CUDA 13
    build on an older driver) sees no GPU and falls back to the CPU in fp32 without a word."""
    line = f"torch {torch_version} ({f'CUDA {cuda_build} build' if cuda_build else 'CPU-only build'}); " \
           f"CUDA usable: {'yes' if cuda_seen else 'no'}; serving the model (family {family}) on {device}"
    if family not in ("sd15", "sd2", "sdxl") or not device.startswith("cpu"):
        return line, ""
    if cuda_build and not cuda_seen:
        why = (f"this torch is a CUDA {cuda_build} build but sees no usable GPU (no GPU, or a driver older than "
               f"CUDA {cuda_build} needs)")
    elif cuda_build:
        why = "the device setting (STUDIO_DEVICE or --device) asks for the CPU"
    else:
        why = "this torch is a CPU-only build"
    return line, (f"This Stable Diffusion model runs on the CPU in fp32, which takes minutes an image: {why}.")


def load_base_pipeline(
    source: str, device: str, dtype: torch.dtype, offload: bool = False
) -> tuple[DiffusionPipeline, ModelInfo]:
    """The base pipeline on `device`; with `offload`, each model stays on the CPU until it runs (small GPUs)."""
    is_single_file = Path(source).suffix.lower() in SINGLE_FILE_SUFFIXES
    pipe = _load_single_file(source, dtype) if is_single_file else _load_pretrained(source, dtype)
    pipe.set_progress_bar_config(disable=True)
    freeze(pipe)
    place(pipe, device, offload)
    return pipe, describe_model(pipe, source)


def freeze(pipe: DiffusionPipeline) -> None:
    """Serving never trains. And peft freezes the base weights when the first LoRA loads; on the CPU a bf16 Linear
    whose weight requires grad rounds differently from a frozen one (even under no_grad), so without this the base
    model's images changed after the first LoRA (real-size SDXL in bf16: up to 7 levels in a pixel)."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)


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
        default_guidance=float(manifest.get("guidance_scale", _default_guidance(pipe))),
        default_scheduler=manifest.get("scheduler", DEFAULT_SCHEDULER),
        controlnets=controlnets or None,
        style_adapter=manifest.get("style_adapter"),
    )


def _default_guidance(pipe: DiffusionPipeline) -> float:
    return 5.0 if isinstance(pipe, StableDiffusionXLPipeline) else 7.5


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
        raise StudioError(f"Model {display_name(source)!r} is neither a diffusers folder nor a .safetensors file.")
    try:
        return AutoPipelineForText2Image.from_pretrained(source, dtype=dtype, use_safetensors=True)
    except (OSError, HFValidationError, ValueError) as error:
        logger.warning("loading the model %s failed: %s", source, error)
        raise StudioError(_load_failure_message(source, is_folder)) from error


def _load_failure_message(source: str, is_folder: bool) -> str:
    if is_folder:
        return (
            f"Could not load the diffusers folder {display_name(source)!r}: it needs model_index.json and each "
            f"component's config and .safetensors weights (the server log has the details)."
        )
    return (
        f"Could not load {source!r} from the Hugging Face Hub: it is not in the local cache and the Hub "
        f"cannot be reached (or the id is wrong, or it has no .safetensors weights)."
    )


def _load_single_file(path: str, dtype: torch.dtype) -> DiffusionPipeline:
    """One-file checkpoints in the original (LDM) layout, as Civitai and A1111 users have them."""
    name = Path(path).name
    if Path(path).suffix.lower() != ".safetensors":
        raise StudioError(
            f"Refusing to open {name!r}: single-file checkpoints must be .safetensors. "
            f"{Path(path).suffix} files are Python pickles, which can run arbitrary code when loaded; "
            f"use the model's .safetensors release or convert the file in a sandbox first."
        )
    if not Path(path).is_file():
        raise StudioError(f"Checkpoint file {name!r} does not exist.")
    try:
        with safe_open(path, framework="pt") as checkpoint:
            keys = set(checkpoint.keys())
    except SafetensorError as error:
        raise StudioError(
            f"{name!r} is not a readable .safetensors file (damaged or incomplete download?)."
        ) from error
    if not any(key.startswith("model.diffusion_model.") for key in keys):
        raise StudioError(
            f"{name!r} is not a Stable Diffusion checkpoint in the original single-file layout (it has "
            f"no 'model.diffusion_model.' weights); LoRAs and single diffusers components are not models."
        )
    pipeline_class = StableDiffusionXLPipeline if _is_sdxl_checkpoint(keys) else StableDiffusionPipeline
    local_config = _local_config_for(path)
    try:
        return pipeline_class.from_single_file(path, dtype=dtype, **local_config)
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as error:
        logger.warning("loading the checkpoint %s failed: %s", path, error)
        if local_config:
            raise StudioError(
                f"Could not load the checkpoint {name!r} with the configuration in the folder "
                f"{Path(local_config['config']).name!r} beside it: is that folder a {pipeline_class.__name__} of "
                f"the same architecture?"
            ) from error
        config_folder = Path(path).with_suffix(".config").name
        raise StudioError(
            f"Could not load the checkpoint {name!r}: a single file does not carry its model's "
            f"configuration, and it could not be fetched from the Hugging Face Hub. Put a diffusers folder "
            f"of the same architecture (model_index.json, the components' config files and the tokenizer; "
            f"no weights needed) next to it as {config_folder!r}, or allow the Hub."
        ) from error


def _is_sdxl_checkpoint(keys: set[str]) -> bool:
    # SDXL base holds its second text encoder, OpenCLIP ViT-bigG, under `conditioner.embedders.1.model.`;
    # the refiner has only that encoder, as embedder 0, and SD2's OpenCLIP-H is `cond_stage_model.model.`.
    return any(key.startswith("conditioner.embedders.1.model.") for key in keys)


def _local_config_for(path: str) -> dict:
    """A `<name>.config/` diffusers folder beside the file lets single files load with no Hub at all."""
    config_folder = Path(path).with_suffix(".config")
    if not config_folder.is_dir():
        return {}
    if not (config_folder / "model_index.json").is_file():
        raise StudioError(
            f"{config_folder.name!r} is not a diffusers folder: it needs model_index.json, the components' "
            f"config files and the tokenizer, as save_pretrained writes them (weights are not needed)."
        )
    return {"config": str(config_folder), "local_files_only": True}
