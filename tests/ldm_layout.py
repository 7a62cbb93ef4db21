"""Write diffusers SD1.x/2.x weights in the original LDM single-file layout (A1111 / Civitai checkpoints).

Tests use it to make a real-looking one-file checkpoint from a tiny diffusers folder, so the studio's
single-file path runs for real without any published checkpoint. The mapping follows the LDM module
tree (`openaimodel.UNetModel`, `autoencoder.AutoencoderKL`, `FrozenCLIPEmbedder`) and is derived from
the diffusers configs, so it fits the tiny test model and SD1.5 alike.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."

UNET_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_block_prefixes(config: dict) -> dict[str, str]:
    """Diffusers module prefix -> LDM module prefix, for a UNet with `layers_per_block` resnets a level.

    LDM numbers `input_blocks` and `output_blocks` as flat lists: each level holds its resnets (with
    their attention as sub-module 1) followed by one down- or upsampling block.
    """
    per_level = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    prefixes = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for level in range(levels):
        for layer in range(per_level):
            block = 1 + level * (per_level + 1) + layer
            prefixes[f"down_blocks.{level}.resnets.{layer}."] = f"input_blocks.{block}.0."
            prefixes[f"down_blocks.{level}.attentions.{layer}."] = f"input_blocks.{block}.1."
        downsampler = (level + 1) * (per_level + 1)
        prefixes[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{downsampler}.0.op."

        for layer in range(per_level + 1):
            block = level * (per_level + 1) + layer
            prefixes[f"up_blocks.{level}.resnets.{layer}."] = f"output_blocks.{block}.0."
            prefixes[f"up_blocks.{level}.attentions.{layer}."] = f"output_blocks.{block}.1."
        # The upsampler follows the level's last resnet and, when the level has one, its attention.
        has_attention = config["up_block_types"][level].startswith("CrossAttn")
        last_block = level * (per_level + 1) + per_level
        upsampler = f"output_blocks.{last_block}.{2 if has_attention else 1}.conv."
        prefixes[f"up_blocks.{level}.upsamplers.0.conv."] = upsampler
    return prefixes


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    prefixes = unet_block_prefixes(config)
    converted = {}
    for key, tensor in state_dict.items():
        diffusers_prefix = _longest_matching_prefix(key, prefixes)
        rest = key[len(diffusers_prefix):]
        if ".resnets." in diffusers_prefix:
            rest = _rename_first_part(rest, UNET_RESNET_RENAMES)
        # Transformer blocks keep their diffusers names (`proj_in`, `transformer_blocks.0.attn1.to_q`, ...).
        converted[UNET_PREFIX + prefixes[diffusers_prefix] + rest] = tensor
    return converted


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    prefixes = _vae_block_prefixes(len(config["block_out_channels"]), config["layers_per_block"])
    converted = {}
    for key, tensor in state_dict.items():
        diffusers_prefix = _longest_matching_prefix(key, prefixes)
        rest = key[len(diffusers_prefix):]
        if ".attentions." in diffusers_prefix:
            rest = _rename_first_part(rest, VAE_ATTENTION_RENAMES)
            # LDM's VAE attention projects with 1x1 convolutions where diffusers uses linear layers.
            if rest.endswith(".weight") and tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        elif ".resnets." in diffusers_prefix:
            rest = _rename_first_part(rest, {"conv_shortcut": "nin_shortcut"})
        converted[VAE_PREFIX + prefixes[diffusers_prefix] + rest] = tensor
    return converted


def text_encoder_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.`); LDM files keep the old nesting.
    return {TEXT_ENCODER_PREFIX + key.removeprefix("text_model."): value for key, value in state_dict.items()}


def pipeline_to_ldm(pipe) -> dict[str, torch.Tensor]:
    """The whole single-file state dict of an SD1.x-layout pipeline (UNet, VAE, CLIP text encoder)."""
    return {
        **unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config)),
        **vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)),
        **text_encoder_to_ldm(pipe.text_encoder.state_dict()),
    }


def save_ldm_checkpoint(pipe, path: Path) -> Path:
    tensors = {key: tensor.detach().contiguous() for key, tensor in pipeline_to_ldm(pipe).items()}
    save_file(tensors, str(path))
    return path


def _vae_block_prefixes(levels: int, per_level: int) -> dict[str, str]:
    prefixes = {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for part in ("encoder", "decoder"):
        prefixes.update({
            f"{part}.conv_in.": f"{part}.conv_in.",
            f"{part}.conv_norm_out.": f"{part}.norm_out.",
            f"{part}.conv_out.": f"{part}.conv_out.",
            f"{part}.mid_block.resnets.0.": f"{part}.mid.block_1.",
            f"{part}.mid_block.attentions.0.": f"{part}.mid.attn_1.",
            f"{part}.mid_block.resnets.1.": f"{part}.mid.block_2.",
        })
    for level in range(levels):
        # LDM's decoder counts its levels from the lowest resolution up; diffusers' from the top down.
        up_level = levels - 1 - level
        for layer in range(per_level + 1):  # the decoder has one resnet more a level than the encoder
            prefixes[f"encoder.down_blocks.{level}.resnets.{layer}."] = f"encoder.down.{level}.block.{layer}."
            prefixes[f"decoder.up_blocks.{level}.resnets.{layer}."] = f"decoder.up.{up_level}.block.{layer}."
        prefixes.update({
            f"encoder.down_blocks.{level}.downsamplers.0.conv.": f"encoder.down.{level}.downsample.conv.",
            f"decoder.up_blocks.{level}.upsamplers.0.conv.": f"decoder.up.{up_level}.upsample.conv.",
        })
    return prefixes


def _longest_matching_prefix(key: str, prefixes: dict[str, str]) -> str:
    matches = [prefix for prefix in prefixes if key.startswith(prefix)]
    if not matches:
        raise KeyError(f"No LDM mapping for the diffusers key {key!r}")
    return max(matches, key=len)


def _rename_first_part(rest: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest
