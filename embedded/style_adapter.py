"""The embedded model's style reference: a small CLIP image encoder and an IP-Adapter trained on its world.

`python -m embedded.style_adapter [--smoke]` trains them on the committed family (models/embedded: its UNet, VAE and
text encoder stay frozen) and writes diffusers' layout, which `load_ip_adapter` reads like h94's files:

    models/embedded/ip_adapter/ip-adapter_embedded.safetensors   image_proj.* and ip_adapter.{1,3,...}.to_{k,v}_ip.*
    models/embedded/ip_adapter/image_encoder/                    CLIPVisionModelWithProjection (64x64 input)

Training pairs (Ye et al. 2023's recipe, on the world): the target is a scene with a caption that names its shape and
often not its colours, the reference another scene with the target's colours and background but its own shape, kind
and place, so the adapter learns colours and background from the picture and leaves the shape to the words. Captions
are dropped (the reference alone) and references dropped (zero image embeddings, as diffusers' pipelines feed the
unconditional branch); some steps run a random subset of the cross-attention blocks alone, so that per-block scales
(InstantStyle's presets) still carry the reference. One thread, seeded.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see embedded/train.py

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tqdm import tqdm  # noqa: E402

from embedded import world  # noqa: E402
from embedded.train import build_scheduler, diffusion_loss, seed_everything, tokenize, warmup_cosine  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "models" / "embedded"
SUBFOLDER = "ip_adapter"
WEIGHT_NAME = "ip-adapter_embedded.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"
NUM_TOKENS = 4  # diffusers' plain ImageProjection: 4 image tokens
# CLIPImageProcessor's defaults (OpenAI CLIP's), which diffusers builds when the pipeline has no feature extractor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
STYLE_SEED_OFFSET = 50_000_000  # training scenes of this stage: apart from the family's (0..~50,000)


@dataclass(frozen=True)
class StyleConfig:
    seed: int = 0
    scenes: int = 4000
    references: int = 3  # reference scenes drawn per target
    steps: int = 6000
    batch: int = 16
    lr: float = 1e-3
    caption_drop: float = 0.25  # the reference alone (empty prompt)
    reference_drop: float = 0.1  # the caption alone (zero image embeddings)
    block_subset: float = 0.25  # steps that run a random subset of the cross-attention blocks alone
    person_share: float = 0.2


SMOKE = StyleConfig(scenes=8, references=1, steps=2, batch=4)

# The scale the studio serves the adapter at, and InstantStyle's presets for this UNet (set_ip_adapter_scale's
# per-block dicts, multiplied by the scale a person picks), chosen on validation pairs with
# `scripts/evaluate_style.py --sweep` (docs/training.md gives the figures). Each block alone at scale 1: up.block_1
# (the 8x8 up block, the last cross-attention) carries the colours and background (92% of the pairs) and keeps an
# edge map's layout (IoU +0.06); down.block_1 (the 8x8 down block) moves the layout (IoU -0.09) and carries a third
# of the colours; the 4x4 blocks (down.block_2, mid, up.block_0) carry next to nothing.
DEFAULT_SCALE = 1.5
MODES = {
    "style": {"up": {"block_1": [1.0, 1.0]}},
    "style and layout": {"down": {"block_1": [1.0]}, "up": {"block_1": [1.0, 1.0]}},
    "everything": 1.0,
}


def build_image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                              image_size=world.RESOLUTION, patch_size=8, projection_dim=64, num_channels=3)
    return CLIPVisionModelWithProjection(config)


def clip_pixels(images: np.ndarray) -> torch.Tensor:
    """What diffusers' CLIPImageProcessor(size=64, crop_size=64) makes of 64x64 RGB uint8 pictures (N, H, W, 3)."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    return (pixels - mean) / std


def caption_variants(scene: world.Scene) -> list[tuple[str, float]]:
    """Captions of a target with their odds: mostly the shape (or the pose) alone, sometimes one or both colours."""
    if scene.kind == "person":
        thing = f"a person with {scene.pose_name}"
        coloured = f"a person in a {scene.colour} shirt with {scene.pose_name}"
    else:
        thing, coloured = f"a {scene.shape}", f"a {scene.colour} {scene.shape}"
    return [(thing, 0.55), (f"{thing} on a {scene.background} background", 0.1), (coloured, 0.1),
            (scene.caption, 0.25)]


def _reference(seed: int, target: world.Scene, person_share: float) -> world.Scene:
    rng = np.random.default_rng(seed)
    kind = "person" if rng.random() < person_share else "object"
    return world.make_scene(seed, kind, colour=target.colour, background=target.background)


def build_pairs(config: StyleConfig) -> dict:
    """Targets (images, captions) and, per target, `references` reference pictures sharing its colours."""
    rng = np.random.default_rng(config.seed)
    images, captions, references = [], [], []
    for index in tqdm(range(config.scenes), desc="style pairs", mininterval=10):
        seed = STYLE_SEED_OFFSET + index * (1 + config.references)
        kind = "person" if rng.random() < config.person_share else "object"
        target = world.make_scene(seed, kind)
        variants = caption_variants(target)
        pick = rng.choice(len(variants), p=[odds for _, odds in variants])
        images.append(target.image)
        captions.append(variants[pick][0])
        references.append(np.stack([_reference(seed + 1 + r, target, config.person_share).image
                                    for r in range(config.references)]))
    return {"image": np.stack(images), "caption": np.array(captions), "reference": np.stack(references)}


def cross_attention_names(unet) -> list[str]:
    """The UNet's cross-attention processors in diffusers' order: `ip_adapter.{2i+1}` in the file is the i-th."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def block_of(name: str) -> str:
    """"down_blocks.1.attentions.0...." -> "down.block_1", "mid_block...." -> "mid" (set_ip_adapter_scale's keys)."""
    parts = name.split(".")
    return "mid" if parts[0] == "mid_block" else f"{parts[0].removesuffix('_blocks')}.block_{parts[1]}"


def initial_adapter(unet, encoder, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """h94's start: the IP keys and values copy the text cross-attention's; the projection is random."""
    width = unet.config.cross_attention_dim
    embed = encoder.config.projection_dim
    state = {"image_proj.proj.weight": torch.randn(NUM_TOKENS * width, embed, generator=generator) * embed**-0.5,
             "image_proj.proj.bias": torch.zeros(NUM_TOKENS * width),
             "image_proj.norm.weight": torch.ones(width), "image_proj.norm.bias": torch.zeros(width)}
    modules = dict(unet.named_modules())
    for index, name in enumerate(cross_attention_names(unet)):
        attention = modules[name.removesuffix(".processor")]
        state[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = attention.to_k.weight.detach().clone()
        state[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = attention.to_v.weight.detach().clone()
    return state


def split_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The flat file's keys as `load_ip_adapter` splits them before `_load_ip_adapter_weights`."""
    out = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        out[head][rest] = value
    return out


def adapter_state(unet) -> dict[str, torch.Tensor]:
    """The loaded adapter's weights back in the file's layout (the inverse of diffusers' conversion)."""
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    state = {"image_proj.proj.weight": projection.image_embeds.weight,
             "image_proj.proj.bias": projection.image_embeds.bias, "image_proj.norm.weight": projection.norm.weight,
             "image_proj.norm.bias": projection.norm.bias}
    processors = unet.attn_processors
    for index, name in enumerate(cross_attention_names(unet)):
        state[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = processors[name].to_k_ip[0].weight
        state[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = processors[name].to_v_ip[0].weight
    return {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}


def trainable_processors(unet) -> list[torch.nn.Module]:
    processors = unet.attn_processors
    return [processors[name] for name in cross_attention_names(unet)]


def train_style_adapter(config: StyleConfig, unet, vae, text_encoder, tokenizer, out: Path) -> dict:
    """Train the encoder, projection and IP layers against the frozen family; write them to `out` (diffusers'
    layout) and return a summary (seconds, last loss)."""
    started = time.time()
    seed_everything(config.seed + 60)
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False).eval()
    pairs = build_pairs(config)
    with torch.no_grad():
        from embedded.train import encode_latents

        latents = encode_latents(vae, pairs["image"]) * vae.config.scaling_factor
        unique = sorted(set(pairs["caption"]) | {""})
        states = torch.cat([text_encoder(tokenize(tokenizer, unique[i : i + 256]))[0]
                            for i in range(0, len(unique), 256)])
    caption_index = {caption: index for index, caption in enumerate(unique)}
    captions = torch.tensor([caption_index[c] for c in pairs["caption"]])
    empty = caption_index[""]
    references = clip_pixels(pairs["reference"].reshape(-1, *pairs["reference"].shape[2:]))
    references = references.reshape(len(pairs["image"]), config.references, *references.shape[1:])

    generator = torch.Generator().manual_seed(config.seed + 61)
    encoder = build_image_encoder()
    unet._load_ip_adapter_weights([split_state(initial_adapter(unet, encoder, generator))])
    encoder.train()
    processors = trainable_processors(unet)
    params = [*encoder.parameters(), *unet.encoder_hid_proj.parameters(),
              *(p for processor in processors for p in processor.parameters())]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    scheduler = build_scheduler()
    running = None
    for step in tqdm(range(config.steps), desc="style adapter", mininterval=10):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warmup_cosine(step, config.steps, 50)
        rows = torch.randint(len(latents), (config.batch,), generator=generator)
        which = torch.randint(config.references, (config.batch,), generator=generator)
        drop_caption = torch.rand(config.batch, generator=generator) < config.caption_drop
        drop_reference = torch.rand(config.batch, generator=generator) < config.reference_drop
        ids = torch.where(drop_caption, empty, captions[rows])
        hidden = states[ids]
        subset = torch.rand(len(processors), generator=generator) < 0.5
        if torch.rand(1, generator=generator).item() < config.block_subset and subset.any():
            scales = subset.float().tolist()
        else:
            scales = [1.0] * len(processors)
        for processor, scale in zip(processors, scales):
            processor.scale = [scale]
        pixels = references[rows, which]

        def predict(noisy, timesteps, hidden=hidden, pixels=pixels, drop=drop_reference):
            embeds = encoder(pixel_values=pixels).image_embeds
            embeds = torch.where(drop[:, None], torch.zeros_like(embeds), embeds)
            return unet(noisy, timesteps, hidden, added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample

        loss = diffusion_loss(scheduler, predict, latents[rows], generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % 250 == 0:
            print(f"style adapter: step {step + 1} loss {running:.4f}", flush=True)
    for processor in processors:
        processor.scale = [1.0]
    save(encoder, adapter_state(unet), out)
    summary = {"seconds": round(time.time() - started, 1), "loss": running, "config": asdict(config)}
    print(f"style adapter: {summary['seconds']:.0f} s, last running loss {running:.4f}", flush=True)
    return summary


def save(encoder, state: dict[str, torch.Tensor], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    encoder.eval().save_pretrained(out / IMAGE_ENCODER_FOLDER, safe_serialization=True)
    save_file(state, out / WEIGHT_NAME, metadata={"format": "pt", "modelspec.architecture": "embedded-sd/ip-adapter"})


def load_family(model: Path):
    """The frozen family in float32 on the CPU: UNet, VAE, text encoder, tokenizer."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from embedded.tokenizer import MODEL_MAX_LENGTH

    return (UNet2DConditionModel.from_pretrained(model / "unet", dtype=torch.float32),
            AutoencoderKL.from_pretrained(model / "vae", dtype=torch.float32),
            CLIPTextModel.from_pretrained(model / "text_encoder", dtype=torch.float32),
            CLIPTokenizer.from_pretrained(model / "tokenizer", model_max_length=MODEL_MAX_LENGTH))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run of the same code (seconds)")
    parser.add_argument("--model", default=str(MODEL), help="the trained family folder (frozen)")
    parser.add_argument("--output", help=f"where to write the adapter (default: MODEL/{SUBFOLDER}; --smoke: /tmp)")
    parser.add_argument("--steps", type=int, help="override the training steps")
    parser.add_argument("--scenes", type=int, help="override the number of target scenes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = SMOKE if args.smoke else StyleConfig()
    overrides = {key: value for key, value in (("steps", args.steps), ("scenes", args.scenes)) if value}
    config = StyleConfig(**{**asdict(config), **overrides})
    model = Path(args.model)
    # A smoke run never overwrites the committed adapter unless told to.
    default = Path("/tmp/embedded-style-smoke") if args.smoke else model / SUBFOLDER
    out = Path(args.output) if args.output else default
    summary = train_style_adapter(config, *load_family(model), out)
    if out.resolve() == (model / SUBFOLDER).resolve() and not args.smoke:
        record_in_studio_json(model, summary)
    print(json.dumps(summary), flush=True)


def studio_entry(summary: dict | None = None) -> dict:
    entry = {"subfolder": SUBFOLDER, "weight_name": WEIGHT_NAME, "image_encoder_folder": IMAGE_ENCODER_FOLDER,
             "default_scale": DEFAULT_SCALE, "modes": MODES}
    if summary is not None:
        entry["training"] = summary["config"]
    return entry


def record_in_studio_json(model: Path, summary: dict) -> None:
    """Add (or replace) the family's "style_adapter" entry; every other key of studio.json stays as it is."""
    path = model / "studio.json"
    studio = json.loads(path.read_text())
    studio["style_adapter"] = studio_entry(summary)
    path.write_text(json.dumps(studio, indent=2) + "\n")


if __name__ == "__main__":
    main()
