"""Real-size Stable Diffusion 1.5 and SDXL with random weights, for benchmarks: nothing is downloaded.

The architectures come from the configs in `real_size_configs/<family>/`, written from the published model
configs (stable-diffusion-v1-5, stable-diffusion-xl-base-1.0, the lllyasviel and diffusers ControlNets). Each
component is built, saved and freed before the next, so building SDXL never holds more than its UNet; the folder
is then a diffusers pipeline folder that the studio's own loader reads. The tokenizer is the embedded model's,
which is CLIP's real BPE vocabulary (49,408 tokens).
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

CONFIGS = Path(__file__).resolve().parent / "real_size_configs"
TOKENIZER = Path(__file__).resolve().parent.parent / "models" / "embedded" / "tokenizer"
FAMILIES = ("sd15", "sdxl")
PIPELINE_CLASS = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def config(family: str, component: str) -> dict:
    return json.loads((CONFIGS / family / f"{component}.json").read_text())


def _diffusers_config(family: str, component: str) -> dict:
    return {key: value for key, value in config(family, component).items() if not key.startswith("_")}


def _text_config(family: str, component: str) -> CLIPTextConfig:
    settings = {key: value for key, value in config(family, component).items() if key != "architectures"}
    return CLIPTextConfig(**settings)


def _build(family: str, component: str) -> torch.nn.Module:
    if component == "unet":
        return UNet2DConditionModel.from_config(_diffusers_config(family, component))
    if component == "vae":
        return AutoencoderKL.from_config(_diffusers_config(family, component))
    if component == "controlnet":
        return ControlNetModel.from_config(_diffusers_config(family, component))
    if component == "text_encoder_2":
        return CLIPTextModelWithProjection(_text_config(family, component))
    return CLIPTextModel(_text_config(family, component))


def components(family: str) -> tuple[str, ...]:
    text = ("text_encoder", "text_encoder_2") if family == "sdxl" else ("text_encoder",)
    return ("unet", "vae", *text)


def save_component(family: str, component: str, folder: Path, dtype: torch.dtype, seed: int) -> int:
    """Build one component with random weights, save it as safetensors in `dtype`, free it; returns its parameters."""
    torch.manual_seed(seed)
    # Created directly in `dtype`: SDXL's UNet is 10 GB in fp32, 5 GB in bf16 or fp16.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        module = _build(family, component)
    finally:
        torch.set_default_dtype(previous)
    count = sum(parameter.numel() for parameter in module.parameters())
    module.save_pretrained(folder, safe_serialization=True)
    del module
    gc.collect()
    return count


def build_real_size_pipeline(
    family: str, folder: str | Path, dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict[str, int]:
    """Write a diffusers pipeline folder of `family` ("sd15" or "sdxl") with random weights to `folder`; returns the
    parameter count of each component."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    folder = Path(folder)
    counts = {
        component: save_component(family, component, folder / component, dtype, seed + index)
        for index, component in enumerate(components(family))
    }
    scheduler = config(family, "scheduler")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {"_class_name": PIPELINE_CLASS[family], "scheduler": ["diffusers", scheduler["_class_name"]]}
    for component in counts:
        library = "transformers" if component.startswith("text_encoder") else "diffusers"
        index[component] = [library, type_name(family, component)]
    tokenizers = ("tokenizer", "tokenizer_2") if family == "sdxl" else ("tokenizer",)
    for name in tokenizers:
        shutil.copytree(TOKENIZER, folder / name, dirs_exist_ok=True)
        index[name] = ["transformers", "CLIPTokenizer"]
    if family == "sdxl":
        index["force_zeros_for_empty_prompt"] = True
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return counts


def type_name(family: str, component: str) -> str:
    return {
        "unet": "UNet2DConditionModel",
        "vae": "AutoencoderKL",
        "text_encoder": "CLIPTextModel",
        "text_encoder_2": "CLIPTextModelWithProjection",
    }[component]


def build_real_size_controlnet(
    family: str, folder: str | Path, dtype: torch.dtype = torch.float32, seed: int = 0
) -> int:
    """A ControlNet of `family`'s published size with random weights in `folder`; returns its parameter count."""
    return save_component(family, "controlnet", Path(folder), dtype, seed)
