"""How the studio runs fast where it runs, and in as little memory as it must.

On CUDA the models run in fp16 with PyTorch's SDPA attention (diffusers' default attention processor). On top:

- SDXL's own VAE overflows in fp16, so diffusers decodes it in fp32 (`force_upcast`); the fp16-fix VAE
  (madebyollin/sdxl-vae-fp16-fix) decodes in fp16 with nearly the same pixels, and replaces it where it can load.
- Large images decode in tiles and batches one image at a time (VAE tiling and slicing), on CUDA only: GPU memory
  is what runs out; on the CPU the exact pixels are worth more than the memory.
- `--offload` keeps each model on the CPU until it runs (diffusers' model CPU offload), for GPUs too small to
  hold the whole family.
- `--compile` compiles the UNet with torch.compile; LoRAs then go into a fixed slot of the compiled UNet
  (`pipelines/lora/slot.py`), so a LoRA switch never recompiles. On ZeroGPU, where torch.compile is not
  supported, the UNet is compiled ahead of time with the `spaces` package instead (`pipelines/gpu.py`).
- LoRA sets are fused into the weights when they are made active, on the CPU unless `STUDIO_FUSE_LORAS` says
  otherwise, and the base weights come back exactly when the set changes (`pipelines/lora/manager.py`). peft's
  unfused layers add two small matrix products per adapter and layer: served, two rank-32 LoRAs cost 1.065x unfused
  and 1.035x fused on a real-size SD1.5 at 256 px (fusing took 0.32 s), and 1.79x against 0.995x on the embedded
  model (28 ms) (scripts/benchmark_lora_tax.py, docs/benchmarks.md). Not on CUDA unless asked: it was never
  measured on a GPU here.

What is switched on is decided by the small pure functions here, from the device, the model family, the request's
size and the settings (tested on the CPU); the diffusers and torch calls that switch it on are thin.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from huggingface_hub.errors import HFValidationError

logger = logging.getLogger(__name__)

FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"
# An image with more pixels than (1.5 x the model's native side)^2 decodes in tiles (SDXL: above 1536x1536, SD1.5:
# above 768x768): there the decoder's activations, not the weights, fill a 16 GB GPU. Never at 768x768 or less,
# whatever the model: a decoder's activations there fit any GPU, and a small model's tiles are its own small
# native size (the embedded model's 64 px), which leaves seams and saves nothing. A batch with more pixels than
# two native images decodes one image at a time.
TILE_ABOVE_SIDE = 1.5
TILE_FLOOR_SIDE = 768
SLICE_ABOVE_IMAGES = 2


@dataclass(frozen=True)
class SpeedSettings:
    offload: bool = False  # model CPU offload on CUDA, for GPUs too small for the whole model
    compile: bool = False  # compile the UNet (torch.compile; ahead of time on ZeroGPU); LoRAs go into its slot
    fuse_loras: bool | None = None  # fuse LoRA sets into the weights; None: on the CPU (the base comes back exactly)
    compile_lora_rank: int = 64  # with compile: the largest total rank of the LoRAs active at once
    sdxl_vae: str | None = FP16_FIX_VAE  # SDXL's fp16 VAE on CUDA; None keeps the model's own (decoded in fp32)


@dataclass(frozen=True)
class Acceleration:
    """What this studio switches on; `notes` say why something asked for stays off."""

    offload: bool = False
    compile: str | None = None  # None, "jit" (torch.compile) or "aot" (ahead of time, ZeroGPU)
    fuse_loras: bool = False
    compile_lora_rank: int = 64
    sdxl_vae: str | None = None
    notes: tuple[str, ...] = ()


def plan_acceleration(device: str, settings: SpeedSettings, zero_gpu: bool = False) -> Acceleration:
    """The acceleration for `device` and the settings; `zero_gpu`: running on a Hugging Face ZeroGPU Space."""
    cuda = device.startswith("cuda")
    notes = []
    offload = settings.offload and cuda and not zero_gpu
    if settings.offload and not offload:
        notes.append(
            "STUDIO_OFFLOAD (--offload) is off: ZeroGPU moves the weights itself."
            if zero_gpu else f"STUDIO_OFFLOAD (--offload) is off: it moves models to a GPU, and this runs on {device}."
        )
    compile_kind = None
    if settings.compile:
        if not cuda:
            notes.append(f"STUDIO_COMPILE (--compile) is off on {device}: it compiles for CUDA GPUs.")
        elif offload:
            notes.append("STUDIO_COMPILE (--compile) is off with offload: moving the weights every call costs more "
                         "than compiling saves.")
        else:
            compile_kind = "aot" if zero_gpu else "jit"
    wants_fuse = device == "cpu" if settings.fuse_loras is None else settings.fuse_loras
    fuse = wants_fuse and compile_kind is None
    if settings.fuse_loras and not fuse:
        notes.append("STUDIO_FUSE_LORAS is off with compile: LoRAs go into the compiled UNet's slot instead.")
    return Acceleration(
        offload=offload,
        compile=compile_kind,
        fuse_loras=fuse,
        compile_lora_rank=settings.compile_lora_rank,
        sdxl_vae=settings.sdxl_vae if cuda else None,
        notes=tuple(notes),
    )


def wants_fp16_fix_vae(family: str, dtype: torch.dtype, vae_config: Mapping) -> bool:
    """SDXL's VAE in fp16 overflows; diffusers then decodes in fp32 (`force_upcast`), slower and larger."""
    return family == "sdxl" and dtype == torch.float16 and bool(vae_config.get("force_upcast", False))


def vae_savers(device: str, width: int, height: int, images: int, resolution: int) -> tuple[bool, bool]:
    """(tiling, slicing) for decoding `images` images of `width` x `height` from a model of native `resolution`."""
    if not device.startswith("cuda"):
        return False, False
    pixels = width * height
    tiling = pixels > max(TILE_ABOVE_SIDE * resolution, TILE_FLOOR_SIDE) ** 2
    slicing = images > 1 and images * pixels > SLICE_ABOVE_IMAGES * resolution**2
    return tiling, slicing


def set_vae_savers(vae: AutoencoderKL, tiling: bool, slicing: bool) -> None:
    vae.enable_tiling() if tiling else vae.disable_tiling()
    vae.enable_slicing() if slicing else vae.disable_slicing()


def place(pipe: DiffusionPipeline, device: str, offload: bool) -> None:
    """Every model on `device`, or, with offload, each on the CPU until it runs."""
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)


def load_fp16_fix_vae(source: str, device: str, dtype: torch.dtype) -> tuple[AutoencoderKL | None, str | None]:
    """The fp16-fix VAE, or None and a message for people when it cannot be loaded (say the Hub is unreachable)."""
    try:
        vae = AutoencoderKL.from_pretrained(source, dtype=dtype, use_safetensors=True)
    except (OSError, HFValidationError, ValueError) as error:
        logger.warning("loading the fp16-fix VAE %s failed: %s", source, error)
        return None, (
            f"SDXL's fp16-fix VAE {source!r} could not be loaded (not cached here and the Hugging Face Hub cannot be "
            f"reached, or the id is wrong), so images decode with the model's own VAE in fp32: the same images, "
            f"slower and in more GPU memory. Set STUDIO_SDXL_VAE to a local copy to use it."
        )
    return vae.requires_grad_(False).to(device), None  # frozen as the loader freezes every served model


def use_fp16_fix_vae(pipe: DiffusionPipeline, plan: Acceleration, family: str, device: str, dtype: torch.dtype) -> str:
    """Swap in SDXL's fp16-fix VAE where the plan and the model call for it; returns a note, "" when none."""
    if not plan.sdxl_vae or not wants_fp16_fix_vae(family, dtype, pipe.vae.config):
        return ""
    vae, note = load_fp16_fix_vae(plan.sdxl_vae, "cpu" if plan.offload else device, dtype)
    if vae is not None:
        pipe.register_modules(vae=vae)
        if plan.offload:  # the hooks were made for the old VAE
            pipe.enable_model_cpu_offload(device=device)
    return note or ""


def compile_unet(unet: torch.nn.Module) -> None:
    """torch.compile the UNet in place (the module stays the one every mode's pipeline shares)."""
    unet.compile()


class Offloader:
    """With offload, each mode's pipeline needs its own hooks (its ControlNet among them) before it runs;
    diffusers re-applies them after every call, so they are only reinstalled when the pipeline changes."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._hooked: DiffusionPipeline | None = None

    def before_run(self, pipe: DiffusionPipeline) -> None:
        if pipe is not self._hooked:
            pipe.enable_model_cpu_offload(device=self.device)
            self._hooked = pipe


class Accelerator:
    """The serving side of a plan: compiles the UNet once, and before each run installs the offload hooks of the
    pipeline about to run and sets the VAE's tiling and slicing for the request's size."""

    def __init__(self, plan: Acceleration, device: str, base: DiffusionPipeline, resolution: int) -> None:
        self.plan = plan
        self.device = device
        self.base = base
        self.resolution = resolution
        self._offloader = Offloader(device) if plan.offload else None

    def compile(self, lora_active: Callable[[], bool], default_scheduler: object) -> None:
        """Compile the UNet as planned; call it after the LoRA slot is in place (the graph includes it). Ahead of time,
        the graph is exported from a run with `default_scheduler`, the sampler most requests use."""
        if self.plan.compile == "jit":
            compile_unet(self.base.unet)
        elif self.plan.compile == "aot":
            from pipelines.gpu import compile_unet_ahead_of_time

            compile_unet_ahead_of_time(self.base, self.resolution, lora_active, default_scheduler)

    def pipelines_changed(self) -> None:
        """A model joined the pipelines (the style reference's image encoder): their offload hooks are made again."""
        if self._offloader is not None:
            self._offloader = Offloader(self.device)

    def before_run(self, pipe: DiffusionPipeline, width: int, height: int, images: int) -> None:
        if self._offloader is not None:
            self._offloader.before_run(pipe)
        set_vae_savers(self.base.vae, *vae_savers(self.device, width, height, images, self.resolution))
