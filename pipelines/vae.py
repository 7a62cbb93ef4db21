"""The VAE called directly, outside a pipeline call: previews, timeline frames, forward noising, the no-step edit.

A pipeline call does three things around its VAE that a direct call must do too:
- send the inputs to the device the VAE runs on. Under model offload the weights rest on the CPU and a hook moves
  the VAE to the GPU when it runs, so `pipe.device` and `pipe.vae.device` say "cpu" while the work happens on the
  GPU; diffusers' pipelines send their inputs to `pipe._execution_device`, and so does this module;
- run SDXL's VAE in fp32 where it overflows in fp16 (`force_upcast`: black images otherwise), as diffusers' SDXL
  pipelines do, when the fp16-fix VAE could not be loaded;
- under offload, a VAE call first sends the model that ran before it (the UNet) back to the CPU. Mid-run that moves
  the whole UNet to the CPU and back for every preview or timeline frame, so a decode in the middle of a run leaves
  the UNet where it is (the VAE joins it on the GPU until the pipeline's own decode at the end).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from PIL import Image


def execution_device(pipe: DiffusionPipeline) -> torch.device:
    """Where the pipeline's models run (the GPU under offload), not where their weights rest."""
    return pipe._execution_device


@contextmanager
def in_safe_precision(vae: AutoencoderKL) -> Iterator[torch.dtype]:
    """The VAE in fp32 for the duration where it overflows in fp16 (SDXL's own); yields the dtype to feed it."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if not upcast:
        yield vae.dtype
        return
    vae.to(torch.float32)
    try:
        yield torch.float32
    finally:
        vae.to(torch.float16)


@contextmanager
def beside_the_unet(vae: AutoencoderKL) -> Iterator[None]:
    """Under model offload, a VAE call during a run without sending the UNet back to the CPU first.

    accelerate's offload hook (`CpuOffload`) offloads its `prev_module_hook` before the VAE runs; unlinking it for
    the call keeps the UNet on the GPU. Without offload there is no hook and nothing changes.
    """
    hook = getattr(vae, "_hf_hook", None)
    previous = getattr(hook, "prev_module_hook", None)
    if previous is None:
        yield
        return
    hook.prev_module_hook = None
    try:
        yield
    finally:
        hook.prev_module_hook = previous


@torch.no_grad()
def encode(pipe: DiffusionPipeline, pixels: torch.Tensor) -> torch.Tensor:
    """The latent mean of `pixels` (in [-1, 1]), scaled as the UNet sees latents, on the CPU in fp32."""
    vae = pipe.vae
    with in_safe_precision(vae) as dtype:
        latents = vae.encode(pixels.to(execution_device(pipe), dtype)).latent_dist.mode()
    return latents.float().cpu() * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(pipe: DiffusionPipeline, latents: torch.Tensor, *, mid_run: bool = False) -> list[Image.Image]:
    """The pictures `latents` (scaled, as the UNet sees them) decode to, exactly as the pipeline decodes its final
    latents. `mid_run`: called from a step hook, where the UNet must stay on the GPU under offload."""
    vae = pipe.vae
    with in_safe_precision(vae) as dtype, (beside_the_unet(vae) if mid_run else nullcontext()):
        scaled = latents.to(execution_device(pipe), dtype) / vae.config.scaling_factor
        decoded = vae.decode(scaled, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pil", do_denormalize=[True] * len(decoded))

