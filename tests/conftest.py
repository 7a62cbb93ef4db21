"""Tiny models built the way diffusers' own fast tests build them, saved to a temporary folder and
loaded back through the studio's own loader, so every path runs for real without the Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from pipelines.settings import Settings  # noqa: E402

CONTROL_MODES = ("pose", "edge", "depth")


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


def build_tiny_pipeline(folder: Path, seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    tokenizer = write_byte_level_tokenizer(folder / "tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=1,
            max_position_embeddings=77,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
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


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_pipeline(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_controlnet_dirs(tiny_sd_dir, tmp_path_factory) -> dict[str, str]:
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    root = tmp_path_factory.mktemp("tiny-controlnets")
    return {
        mode: str(build_tiny_controlnet(unet, root / mode, seed=index + 1))
        for index, mode in enumerate(CONTROL_MODES)
    }


@pytest.fixture(scope="session")
def empty_lora_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("no-loras")


@pytest.fixture(scope="session")
def tiny_studio(tiny_sd_dir, tiny_controlnet_dirs, empty_lora_dir):
    from pipelines.studio import Studio

    settings = Settings(model=str(tiny_sd_dir), lora_dir=str(empty_lora_dir), device="cpu")
    return Studio(settings, controlnet_overrides=tiny_controlnet_dirs)
