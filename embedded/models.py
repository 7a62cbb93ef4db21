"""Architectures of the embedded family: Stable Diffusion's classes at a size a 2-core CPU can train."""

from __future__ import annotations

from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from embedded.world import RESOLUTION

LATENT_FACTOR = 4  # the VAE downsamples twice: 64x64 images, 16x16x4 latents
TEXT_WIDTH = 64


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=RESOLUTION,
    )


def build_text_encoder(vocab_size: int = 49408) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_WIDTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    # Cross-attention at 8x8 and 4x4 binds words to places (16x16 attention costs too much here); the
    # "text" addition embedding pools the prompt into the timestep embedding, a global path that learns
    # an object's colour much faster.
    return UNet2DConditionModel(
        sample_size=RESOLUTION // LATENT_FACTOR,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,
        norm_num_groups=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def build_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))


# The studio's name for build_scheduler's sampler, written to studio.json as the family's default: the evaluation
# scores it. An ancestral sampler ("Euler a") draws sharper squares at guidance 1-2, but at 7.5 it loses colours.
SAMPLER = "DDIM"


def build_scheduler() -> DDIMScheduler:
    # Linear betas end near zero signal, so the mean colour does not leak through the last timestep and the
    # prompt has to set it; the rest is Stable Diffusion's DDIM config (no sample clipping).
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
