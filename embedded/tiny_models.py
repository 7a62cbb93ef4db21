"""Tiny models built the way diffusers' own fast tests build them (random weights, a few blocks), for the
tests and the benchmarks; nothing is downloaded. It lives here, not under tests/, because scripts import
nothing from tests/."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    ControlNetUnionModel,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from pipelines.modes import CONTROL_MODES


def write_byte_level_tokenizer(folder: Path) -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer (no merges): tiny, yet the real tokenizer class."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _tiny_unet(**family) -> UNet2DConditionModel:
    """Two blocks, 16x16 latents; `family` adds what SD or SDXL conditions on."""
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        **family,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def _tiny_text_config(tokenizer: CLIPTokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=1,
        max_position_embeddings=77,
        **extra,
    )


def _sd_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )


def build_tiny_sdxl_pipeline(folder: Path, seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL's layout at toy size: two text encoders (the second with a projection) and the size conditioning."""
    torch.manual_seed(seed)
    unet = _tiny_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size numbers, then the pooled text embedding
        cross_attention_dim=64,  # the two text encoders' 32 + 32
    )
    tokenizer = write_byte_level_tokenizer(folder / "tokenizer")
    tokenizer_2 = write_byte_level_tokenizer(folder / "tokenizer_2")
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=_tiny_vae(), text_encoder=CLIPTextModel(_tiny_text_config(tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_tiny_text_config(tokenizer_2, projection_dim=32)),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=_sd_scheduler(),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def build_tiny_pipeline(folder: Path, seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    unet = _tiny_unet(cross_attention_dim=32)
    tokenizer = write_byte_level_tokenizer(folder / "tokenizer")
    pipe = StableDiffusionPipeline(
        unet=unet, vae=_tiny_vae(), text_encoder=CLIPTextModel(_tiny_text_config(tokenizer)), tokenizer=tokenizer,
        scheduler=_sd_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


def build_tiny_controlnet(unet: UNet2DConditionModel, folder: Path, seed: int) -> Path:
    """A ControlNet whose zero convolutions are re-initialised, so the control image really matters."""
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    for block in [controlnet.controlnet_cond_embedding.conv_out, *zero_convs]:
        torch.nn.init.normal_(block.weight, std=0.5)
        torch.nn.init.normal_(block.bias, std=0.1)
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_union_controlnet(unet: UNet2DConditionModel, folder: Path, seed: int) -> Path:
    """A ControlNet Union model shaped for the tiny SDXL UNet, its zero layers re-initialised so maps matter."""
    torch.manual_seed(seed)
    config = unet.config
    union = ControlNetUnionModel(
        block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
        down_block_types=config.down_block_types, cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_head_dim, use_linear_projection=config.use_linear_projection,
        addition_embed_type=config.addition_embed_type, addition_time_embed_dim=config.addition_time_embed_dim,
        transformer_layers_per_block=config.transformer_layers_per_block,
        projection_class_embeddings_input_dim=config.projection_class_embeddings_input_dim,
        norm_num_groups=config.norm_num_groups, conditioning_embedding_out_channels=(8, 16),
        num_trans_channel=32, num_trans_head=2, num_proj_channel=32,
    )
    for block in [union.controlnet_cond_embedding.conv_out, *union.controlnet_down_blocks, union.controlnet_mid_block]:
        torch.nn.init.normal_(block.weight, std=0.5)
        torch.nn.init.normal_(block.bias, std=0.1)
    union.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_controlnets(sd_dir: Path, root: Path) -> dict[str, str]:
    """mode -> folder of a tiny ControlNet made from the tiny pipeline's UNet, one per control mode."""
    unet = UNet2DConditionModel.from_pretrained(sd_dir / "unet")
    return {mode: str(build_tiny_controlnet(unet, root / mode, seed=i + 1)) for i, mode in enumerate(CONTROL_MODES)}


TINY_STYLE_ADAPTER = "ip-adapter_tiny.safetensors"
STYLE_TOKENS = 4  # a plain IP-Adapter's image tokens (diffusers' ImageProjection)


def build_tiny_image_encoder(folder: Path, seed: int, image_size: int = 28) -> CLIPVisionModelWithProjection:
    """diffusers' test image encoder at 28 px (two patches a side): 32 wide, embeddings 32 wide."""
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, image_size=image_size, projection_dim=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=5, patch_size=14,
    ))
    encoder.save_pretrained(folder, safe_serialization=True)
    return encoder


def build_tiny_style_adapter(unet: UNet2DConditionModel, folder: Path, seed: int) -> Path:
    """A plain IP-Adapter for `unet` in h94's layout (`image_proj.*`, `ip_adapter.<1, 3, 5...>.to_{k,v}_ip.*`, one
    pair per cross-attention layer in the UNet's order), with random weights large enough that a reference shows, and
    its image encoder beside it in `image_encoder/`. Returns the weight file."""
    encoder = build_tiny_image_encoder(folder / "image_encoder", seed)
    generator = torch.Generator().manual_seed(seed)
    cross, width = unet.config.cross_attention_dim, encoder.config.projection_dim
    state = {
        "image_proj.proj.weight": torch.randn(cross * STYLE_TOKENS, width, generator=generator) / width**0.5,
        "image_proj.proj.bias": torch.zeros(cross * STYLE_TOKENS),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    layers = [name.removesuffix(".processor") for name in unet.attn_processors if name.endswith("attn2.processor")]
    for index, layer in enumerate(layers):
        inner = unet.get_submodule(layer).to_k.out_features
        for projection in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{2 * index + 1}.{projection}.weight"] = torch.randn(inner, cross, generator=generator)
    path = folder / TINY_STYLE_ADAPTER
    save_file(state, str(path))
    return path
