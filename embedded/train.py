"""Train the embedded family from scratch: `python -m embedded.train [--smoke] [--resume]`.

Stages: data -> vae -> unet (with the text encoder), while the vae-decoder trains beside it in a worker
process -> controlnet-{edge,depth,pose} and lora-{stripes,mono} side by side, one single-threaded worker process
per core (`EMBEDDED_WORKERS`) -> export. Each finished stage is saved under the work folder, and the UNet stage
checkpoints as it goes, so `--resume` continues where a run stopped. Everything is seeded; each stage in a worker
seeds itself, so the order the workers take them in does not matter. Training runs on CUDA when present (one GPU,
`training_device`; `--device` or EMBEDDED_DEVICE choose), else on the CPU.
"""

from __future__ import annotations

import os

# On a shared 2-core machine, spinning OpenMP threads wait on each other for whole time slices: a
# passive wait made training steps about 10x faster here. It must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from dataclasses import asdict, dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers.training_utils import EMAModel, compute_snr  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tqdm import tqdm  # noqa: E402

from embedded import world  # noqa: E402
from embedded.models import (  # noqa: E402
    SAMPLER,
    build_controlnet,
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
)
from embedded.tokenizer import MODEL_MAX_LENGTH, write_tokenizer_folder  # noqa: E402

# Maps that mostly set an object's outline; a pose map's thin limbs are fine detail, which the less noisy
# steps draw, so the pose ControlNet trains on all timesteps alike.
LAYOUT_MODES = ("edge", "depth")
LORA_ARCHITECTURE = "embedded-sd/lora"
STYLE_DESCRIPTIONS = {
    "stripes": "Black-and-white diagonal stripes painted over the object",
    "mono": "A greyscale palette: the whole picture in shades of grey",
}


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    object_scenes: int = 2400
    person_scenes: int = 1000
    style_scenes: int = 300
    vae_steps: int = 1000
    vae_batch: int = 16
    vae_decoder_steps: int = 1500
    unet_steps: int = 20000
    unet_batch: int = 16
    controlnet_steps: int = 1000
    controlnet_batch: int = 16
    lora_steps: int = 2000
    lora_batch: int = 16
    checkpoint_every: int = 100


SMOKE = TrainConfig(object_scenes=12, person_scenes=6, style_scenes=4, vae_steps=2, vae_batch=4,
                    vae_decoder_steps=1, unet_steps=2, unet_batch=4, controlnet_steps=1, controlnet_batch=4,
                    lora_steps=1, lora_batch=4, checkpoint_every=1)


def training_device() -> torch.device:
    """The one place training picks its device: EMBEDDED_DEVICE (or --device) if set, else CUDA when present, else
    the CPU. Models are built and every random draw is made on the CPU, then moved, so a GPU run draws the same
    numbers as a CPU run (its floats still differ a little: GPU kernels round differently)."""
    return torch.device(os.environ.get("EMBEDDED_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warmup, then cosine down to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# ---------------------------------------------------------------- data


def build_dataset(config: TrainConfig, path: Path) -> None:
    """Render every training scene once; the model stages read the arrays from `path`."""
    scenes = []
    seeds = iter(world.training_seeds(10 * (config.object_scenes + config.person_scenes + 2 * config.style_scenes)))
    plan = [("object", None)] * config.object_scenes + [("person", None)] * config.person_scenes
    plan += [("object", style) for style in world.STYLES for _ in range(config.style_scenes)]
    for kind, style in tqdm(plan, desc="data", mininterval=10):
        scenes.append(world.make_scene(next(seeds), kind, style=style, allow_held_out=False))
    styles = [scene.style or "" for scene in scenes]
    np.savez_compressed(
        path,
        image=np.stack([s.image for s in scenes]),
        edge=np.stack([s.edge for s in scenes]),
        edge_native=np.stack([s.edge_native for s in scenes]),
        depth=np.stack([s.depth for s in scenes]),
        pose=np.stack([s.pose for s in scenes]),
        person=np.array([s.kind == "person" for s in scenes]),
        style=np.array(styles),
        caption=np.array([s.caption for s in scenes]),
    )


def to_model_range(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_control(maps: np.ndarray) -> torch.Tensor:
    """Control images as the diffusers pipeline feeds them to a ControlNet: RGB in [0, 1]."""
    return torch.from_numpy(maps).permute(0, 3, 1, 2).float() / 255


# ---------------------------------------------------------------- stages


def train_vae(config: TrainConfig, data: dict, out: Path) -> None:
    """Train on random 32x32 crops (4x cheaper than whole images, the VAE is convolutional) and decode the
    posterior mean: sampled latents start with unit noise that drowns the signal for hundreds of steps."""
    device = training_device()
    vae = build_vae().to(device)
    images = to_model_range(data["image"])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0, fused=True)
    generator = torch.Generator().manual_seed(config.seed + 1)
    crop = world.RESOLUTION // 2
    for step in tqdm(range(config.vae_steps), desc="vae", mininterval=10):
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * warmup_cosine(step, config.vae_steps, 50)
        batch = images[torch.randint(len(images), (config.vae_batch,), generator=generator)]
        top, left = (4 * torch.randint(0, (world.RESOLUTION - crop) // 4 + 1, (2,), generator=generator)).tolist()
        batch = batch[:, :, top : top + crop, left : left + crop].to(device)
        mean = vae.encode(batch).latent_dist.mean
        loss = reconstruction_loss(vae.decode(mean).sample, batch) + 1e-4 * mean.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    latents = encode_latents(vae, data["image"])
    # Unit-variance latents suit the noise schedule, as SD's 0.18215 does for its VAE.
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    vae.save_pretrained(out)
    print(f"vae: last loss {loss.item():.4f}, scaling factor {vae.config.scaling_factor:.4f}", flush=True)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(reconstruction, target) + F.mse_loss(reconstruction, target)


def tune_vae_decoder(config: TrainConfig, data: dict, latents: torch.Tensor, vae_folder: Path, out: Path) -> None:
    """Train the decoder on alone, on whole images, with the encoder frozen, as Stability did for SD's VAE
    (sd-vae-ft-mse): sharper corners and edges, while the latents every later stage learns from stay the same.
    `latents` are the VAE's unscaled posterior means of `data["image"]`."""
    from diffusers import AutoencoderKL

    device = training_device()
    vae = AutoencoderKL.from_pretrained(vae_folder).requires_grad_(False).to(device)
    images = to_model_range(data["image"])
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.0, fused=True)
    generator = torch.Generator().manual_seed(config.seed + 3)
    for step in tqdm(range(config.vae_decoder_steps), desc="vae decoder", mininterval=10):
        for group in optimizer.param_groups:
            group["lr"] = 5e-4 * warmup_cosine(step, config.vae_decoder_steps, 0)
        index = torch.randint(len(images), (config.vae_batch,), generator=generator)
        loss = reconstruction_loss(vae.decode(latents[index].to(device)).sample, images[index].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.save_pretrained(out)
    print(f"vae decoder: last loss {loss.item():.4f}", flush=True)


@torch.no_grad()
def encode_latents(vae, images: np.ndarray) -> torch.Tensor:
    """The VAE's posterior means of `images`, on the CPU whatever the VAE's device."""
    return torch.cat([vae.encode(to_model_range(images[i : i + 64]).to(vae.device)).latent_dist.mean.cpu()
                      for i in range(0, len(images), 64)])


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(list(captions), padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
                     return_tensors="pt").input_ids


def diffusion_loss(scheduler, prediction_fn, latents, generator, favour_noisy: bool = False) -> torch.Tensor:
    """v-prediction loss with min-SNR-5 weighting (Hang et al. 2023): fewer wasted steps on easy noise.

    `favour_noisy` draws timesteps as T(1 - u^3) (T2I-Adapter's cubic sampling): the noisy early steps decide
    the layout an outline or depth map sets.
    """
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)  # CPU draws: the same on any device
    total = scheduler.config.num_train_timesteps
    if favour_noisy:
        uniform = torch.rand(len(latents), generator=generator)
        timesteps = ((1 - uniform**3) * total).long().clamp(max=total - 1)
    else:
        timesteps = torch.randint(0, total, (len(latents),), generator=generator)
    timesteps = timesteps.to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = scheduler.get_velocity(latents, noise, timesteps)
    prediction = prediction_fn(noisy, timesteps)
    snr = compute_snr(scheduler, timesteps)
    weight = torch.clamp(snr, max=5.0) / (snr + 1)
    per_sample = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def build_ema(parameters: list[torch.nn.Parameter], decay: float = 0.997) -> EMAModel:
    """The moving average the shipped UNet and text encoder are: decay min(`decay`, (1 + s) / (10 + s)) after
    update s, counted from 0, the schedule the committed weights were averaged with.

    EMAModel's plain schedule differs in the first update alone (decay 0: it copies the weights). Its warmup,
    1 - (1 + n / inv_gamma) ** -power, is n / (n + 9) with inv_gamma 9 and power 1, and with update_after_step -1
    its n is the 1-based update count s + 1: the same schedule from the first update.
    """
    return EMAModel(parameters, decay=decay, use_ema_warmup=True, inv_gamma=9, power=1, update_after_step=-1)


def train_unet(config: TrainConfig, data: dict, latents: torch.Tensor, tokenizer, work: Path) -> None:
    base = np.array([s == "" for s in data["style"]])
    latents = latents[torch.from_numpy(base)]
    captions = list(data["caption"][base])
    ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])[0]
    device = training_device()
    unet, text_encoder = build_unet().to(device), build_text_encoder().to(device)
    scheduler = build_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
    ema = build_ema(params)
    generator = torch.Generator().manual_seed(config.seed + 2)
    checkpoint_path = work / "unet-checkpoint.pt"
    start = 0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=True, map_location="cpu")  # resumable on either device
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        generator.set_state(state["generator"])
        start = state["step"]
        print(f"unet: resumed at step {start}", flush=True)
    progress = tqdm(range(start, config.unet_steps), desc="unet", mininterval=10, initial=start,
                    total=config.unet_steps)
    running = None
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * warmup_cosine(step, config.unet_steps, 100)
        index = torch.randint(len(latents), (config.unet_batch,), generator=generator)
        batch_ids = ids[index].clone()
        # Dropped captions teach the unconditional prediction that classifier-free guidance needs.
        dropped = torch.rand(len(index), generator=generator) < 0.1
        batch_ids[dropped] = empty_ids

        def predict(noisy, timesteps, batch_ids=batch_ids):
            states = text_encoder(batch_ids.to(device))[0]
            return unet(noisy, timesteps, states).sample

        loss = diffusion_loss(scheduler, predict, latents[index].to(device), generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        progress.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.unet_steps:
            state = {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                     "optimizer": optimizer.state_dict(), "ema": ema.state_dict(), "generator": generator.get_state(),
                     "step": step + 1}
            torch.save(state, checkpoint_path.with_suffix(".tmp"))
            os.replace(checkpoint_path.with_suffix(".tmp"), checkpoint_path)
            print(f"unet: step {step + 1} loss {running:.4f}", flush=True)
    ema.copy_to(params)
    unet.save_pretrained(work / "unet")
    text_encoder.save_pretrained(work / "text_encoder")


def caption_states(text_encoder, tokenizer, captions) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Text-encoder outputs for each distinct caption, computed once (the encoder is frozen here)."""
    unique = sorted(set(captions))
    with torch.no_grad():
        states = torch.cat([text_encoder(tokenize(tokenizer, unique[i : i + 256]).to(text_encoder.device))[0]
                            for i in range(0, len(unique), 256)])
        empty = text_encoder(tokenize(tokenizer, [""]).to(text_encoder.device))[0][0]
    return dict(zip(unique, states)), empty


def control_maps(data: dict, mode: str, rows: np.ndarray, generator) -> torch.Tensor:
    if mode == "edge":
        # Half the maps from Canny at 4x resolution (the app's way), half at native size with random
        # thresholds, so the ControlNet does not depend on one preprocessor setting.
        native = torch.rand(len(rows), generator=generator).numpy() < 0.5
        maps = np.where(native[:, None, None, None], data["edge_native"][rows], data["edge"][rows])
        return to_control(maps)
    return to_control(data[mode][rows])


def train_controlnet(config: TrainConfig, mode: str, data: dict, latents, unet, text_encoder, tokenizer,
                     out: Path) -> None:
    seed_everything(config.seed + 10 + world.CONTROL_MODES.index(mode))
    base = np.array([s == "" for s in data["style"]])
    usable = base & data["person"] if mode == "pose" else base
    rows_all = np.flatnonzero(usable)
    states, empty = caption_states(text_encoder, tokenizer, data["caption"][rows_all])
    # Built on the CPU, where the unet still is, so it starts from the same weights on any device.
    controlnet = build_controlnet(unet).to(training_device())
    unet.to(controlnet.device)
    scheduler = build_scheduler()
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    generator = torch.Generator().manual_seed(config.seed + 20 + world.CONTROL_MODES.index(mode))
    for step in tqdm(range(config.controlnet_steps), desc=f"controlnet-{mode}", mininterval=10):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * warmup_cosine(step, config.controlnet_steps, 20)
        rows = rows_all[torch.randint(len(rows_all), (config.controlnet_batch,), generator=generator).numpy()]
        dropped = torch.rand(len(rows), generator=generator) < 0.2
        hidden = torch.stack([empty if drop else states[data["caption"][row]] for row, drop in zip(rows, dropped)])
        hidden = hidden.to(controlnet.device)
        condition = control_maps(data, mode, rows, generator).to(controlnet.device)

        def predict(noisy, timesteps, hidden=hidden, condition=condition):
            down, mid = controlnet(noisy, timesteps, encoder_hidden_states=hidden, controlnet_cond=condition,
                                   return_dict=False)
            return unet(noisy, timesteps, hidden, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample

        loss = diffusion_loss(scheduler, predict, latents[torch.from_numpy(rows)].to(controlnet.device), generator,
                              favour_noisy=mode in LAYOUT_MODES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    controlnet.save_pretrained(out)
    print(f"controlnet-{mode}: last loss {loss.item():.4f}", flush=True)


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2"]


def train_lora(config: TrainConfig, style: str, data: dict, latents, unet, text_encoder, tokenizer,
               out: Path, checkpoints: Sequence[int] = ()) -> None:
    """Train `style`'s LoRA into `out/<style>.safetensors`; after each step in `checkpoints` the LoRA so far is also
    saved as `out/checkpoint-<step>/pytorch_lora_weights.safetensors`, as diffusers' training scripts save a run's
    checkpoints (the LoRA lab orders a run by them)."""
    from peft import LoraConfig

    seed_everything(config.seed + 30)
    rows_all = np.flatnonzero(data["style"] == style)
    states, _ = caption_states(text_encoder, tokenizer, data["caption"][rows_all])
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian", target_modules=LORA_TARGETS),
                     adapter_name=style)
    unet.set_adapter(style)
    unet.to(training_device())  # after the adapter's random init, made on the CPU as before
    params = [p for name, p in unet.named_parameters() if "lora" in name and p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0, fused=True)
    scheduler = build_scheduler()
    generator = torch.Generator().manual_seed(config.seed + 40 + list(world.STYLES).index(style))
    for step in tqdm(range(config.lora_steps), desc=f"lora-{style}", mininterval=10):
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * warmup_cosine(step, config.lora_steps, 10)
        rows = rows_all[torch.randint(len(rows_all), (config.lora_batch,), generator=generator).numpy()]
        hidden = torch.stack([states[data["caption"][row]] for row in rows]).to(unet.device)

        def predict(noisy, timesteps, hidden=hidden):
            return unet(noisy, timesteps, hidden).sample

        loss = diffusion_loss(scheduler, predict, latents[torch.from_numpy(rows)].to(unet.device), generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step + 1 in checkpoints:
            save_lora(unet, style, out / f"checkpoint-{step + 1}" / "pytorch_lora_weights.safetensors", step + 1)
    save_lora(unet, style, out / f"{style}.safetensors", steps=config.lora_steps)
    unet.delete_adapters(style)
    print(f"lora-{style}: last loss {loss.item():.4f}", flush=True)


def save_lora(unet, style: str, path: Path, steps: int) -> None:
    """The UNet's `style` adapter as a diffusers LoRA file with its metadata."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    layers = {k: v.detach().to("cpu", torch.float16)
              for k, v in get_peft_model_state_dict(unet, adapter_name=style).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=layers, weight_name=path.name)
    add_lora_metadata(path, style, steps)


def add_lora_metadata(path: Path, style: str, steps: int) -> None:
    """Rewrite the diffusers LoRA file with modelspec metadata; tensors and keys stay as diffusers wrote them."""
    with safe_open(path, framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    metadata.update({
        "modelspec.title": f"Embedded {style}",
        "modelspec.description": STYLE_DESCRIPTIONS[style],
        "modelspec.trigger_phrase": world.STYLES[style],
        "modelspec.architecture": LORA_ARCHITECTURE,
        "modelspec.implementation": "diffusers",
        "modelspec.sai_model_spec": "1.0.0",
        "ss_base_model_version": "embedded",
        "ss_network_dim": "8",
        "ss_network_alpha": "8",
        "ss_steps": str(steps),
    })
    save_file(tensors, path, metadata=metadata)


def without_posterior_spread(vae):
    """The VAE trains on its posterior mean alone, so the log-variance half of `quant_conv` never learned anything;
    left so, diffusers' img2img and inpainting, which sample the posterior, add noise of spread about 1.2 to every
    start image (speckles, and the prompted colour missed in inpainting). A log-variance of -30 (diffusers' floor)
    makes a sample the mean, as every stage of training used it. Text mode never encodes, so nothing else moves."""
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0
        vae.quant_conv.bias[channels:] = -30
    return vae


def export(config: TrainConfig, work: Path, output: Path, tokenizer_folder: Path, guidance_scale: float) -> None:
    """Write the committed layout: a StableDiffusionPipeline folder, three ControlNets and the LoRAs, in fp16."""
    from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=without_posterior_spread(AutoencoderKL.from_pretrained(work / "vae-decoder")),
        text_encoder=CLIPTextModel.from_pretrained(work / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_folder, model_max_length=MODEL_MAX_LENGTH),
        unet=UNet2DConditionModel.from_pretrained(work / "unet"),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = output / "embedded"
    if folder.exists():
        shutil.rmtree(folder)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    studio = {"family": "embedded", "resolution": world.RESOLUTION, "steps": 20, "guidance_scale": guidance_scale,
              "scheduler": SAMPLER,
              "controlnets": {mode: f"../embedded-controlnet-{mode}" for mode in world.CONTROL_MODES},
              "loras": {style: {"file": f"../loras/{style}.safetensors", "trigger": trigger}
                        for style, trigger in world.STYLES.items()},
              "training": asdict(config)}
    (folder / "studio.json").write_text(json.dumps(studio, indent=2) + "\n")
    for mode in world.CONTROL_MODES:
        target = output / f"embedded-controlnet-{mode}"
        if target.exists():
            shutil.rmtree(target)
        ControlNetModel.from_pretrained(work / f"controlnet-{mode}").to(torch.float16).save_pretrained(target)
    (output / "loras").mkdir(parents=True, exist_ok=True)
    for style in world.STYLES:
        shutil.copy(work / "loras" / f"{style}.safetensors", output / "loras" / f"{style}.safetensors")


# ---------------------------------------------------------------- driver


def unet_trained_fewer_steps(work: Path, steps: int) -> bool:
    """Whether a finished UNet in `work` saw fewer steps than asked: `--resume --unet-steps N` trains it on."""
    checkpoint = work / "unet-checkpoint.pt"
    if not (work / "unet" / "config.json").exists() or not checkpoint.exists():
        return False
    return torch.load(checkpoint, weights_only=True, map_location="cpu")["step"] < steps


def discard_unet_and_dependants(work: Path) -> None:
    """The ControlNets and LoRAs are trained on the UNet, so a UNet trained further makes them stale."""
    for name in ("unet", "text_encoder", *(f"controlnet-{mode}" for mode in world.CONTROL_MODES), "loras"):
        shutil.rmtree(work / name, ignore_errors=True)
    print("unet: trained on from its checkpoint; ControlNets and LoRAs will be retrained", flush=True)


def worker_count() -> int:
    """Worker processes for the stages beside and after the UNet, one thread each. These models are too small to
    keep two threads busy, so on this 2-core CPU two single-threaded workers side by side do about twice the work
    of one 2-thread process, and more when the machine is busy (scripts/benchmark_training.py)."""
    return max(1, int(os.environ.get("EMBEDDED_WORKERS", os.cpu_count() or 1)))


# The decoder needs only the VAE, so it trains beside the UNet; the others need the finished UNet.
STAGE_BESIDE_UNET = "vae-decoder"


def stages_after_unet() -> list[str]:
    """Stages that read the finished UNet's files, longest first: they run side by side on the workers."""
    return [*(f"lora-{style}" for style in world.STYLES), *(f"controlnet-{mode}" for mode in world.CONTROL_MODES)]


def stage_done_marker(work: Path, name: str) -> Path:
    if name.startswith("lora-"):
        return work / "loras" / f"{name.removeprefix('lora-')}.safetensors"
    return work / name / "config.json"


def run_stage_in_worker(config: TrainConfig, work: Path, name: str, unscaled: torch.Tensor) -> float:
    """Run the decoder or one of `stages_after_unet` from the files in `work`, on one thread; return its seconds."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.set_num_threads(1)
    started = time.time()
    data = dict(np.load(work / "data.npz"))
    if name == STAGE_BESIDE_UNET:
        tune_vae_decoder(config, data, unscaled, work / "vae", work / name)
    else:
        latents = unscaled * AutoencoderKL.load_config(work / "vae")["scaling_factor"]
        tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer", model_max_length=MODEL_MAX_LENGTH)
        unet = UNet2DConditionModel.from_pretrained(work / "unet").requires_grad_(False)
        text_encoder = CLIPTextModel.from_pretrained(work / "text_encoder").requires_grad_(False)
        kind, target = name.split("-", 1)
        if kind == "controlnet":
            train_controlnet(config, target, data, latents, unet, text_encoder, tokenizer, work / name)
        else:
            train_lora(config, target, data, latents, unet, text_encoder, tokenizer, work / "loras")
    return round(time.time() - started, 1)


def run(config: TrainConfig, work: Path, output: Path, resume: bool, guidance_scale: float = 2.0) -> dict:
    """Run every stage not yet done; return seconds per stage (also kept in work/timings.json)."""
    run_started = time.time()
    workers = worker_count()
    print(f"training on {training_device()}", flush=True)
    seed_everything(config.seed)
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}

    def record(name: str, seconds: float) -> None:
        timings[name] = round(timings.get(name, 0) + seconds, 1)
        timings_path.write_text(json.dumps(timings, indent=2))
        print(f"stage {name}: {timings[name]:.0f} s", flush=True)

    def stage(name, done_marker, fn):
        if done_marker.exists():
            return
        started = time.time()
        fn()
        record(name, time.time() - started)

    data_path = work / "data.npz"
    stage("data", data_path, lambda: build_dataset(config, data_path))
    data = dict(np.load(data_path))
    tokenizer = write_tokenizer_folder(work / "tokenizer")
    stage("vae", work / "vae" / "config.json", lambda: train_vae(config, data, work / "vae"))

    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(work / "vae").to(training_device())
    unscaled = encode_latents(vae, data["image"])
    if unet_trained_fewer_steps(work, config.unet_steps):
        discard_unet_and_dependants(work)
    context = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        jobs = {}
        threads = torch.get_num_threads()
        if not stage_done_marker(work, STAGE_BESIDE_UNET).exists():
            jobs[pool.submit(run_stage_in_worker, config, work, STAGE_BESIDE_UNET, unscaled)] = STAGE_BESIDE_UNET
            # Leave the decoder's worker its core: beside it, one thread trained this UNet as fast as two or
            # faster here, and alone within 10% of two (scripts/benchmark_training.py). The count stays fixed for
            # the whole stage because one thread and two give slightly different weights.
            torch.set_num_threads(max(1, threads - 1))
        stage("unet", work / "unet" / "config.json",
              lambda: train_unet(config, data, unscaled * vae.config.scaling_factor, tokenizer, work))
        torch.set_num_threads(threads)
        started = time.time()
        pending = [name for name in stages_after_unet() if not stage_done_marker(work, name).exists()]
        jobs.update({pool.submit(run_stage_in_worker, config, work, name, unscaled): name for name in pending})
        for job in as_completed(jobs):
            record(jobs[job], job.result())
        if pending:
            record("stages after the unet (wall clock)", time.time() - started)
    export(config, work, output, work / "tokenizer", guidance_scale)
    print(f"this run: {(time.time() - run_started) / 60:.1f} min on {workers} worker(s); "
          f"timings (s): {json.dumps(timings)}", flush=True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run of the same code (about a minute)")
    parser.add_argument("--resume", action="store_true", help="continue from the stages already in --work")
    parser.add_argument("--work", default="/tmp/embedded-train/work", help="checkpoints and finished stages")
    parser.add_argument("--output", default="models", help="where the committed model folders are written")
    parser.add_argument("--unet-steps", type=int, help="override the UNet steps (resume with more to train longer)")
    parser.add_argument("--controlnet-steps", type=int, help="override the steps of each ControlNet")
    parser.add_argument("--lora-steps", type=int, help="override the steps of each LoRA")
    parser.add_argument("--guidance-scale", type=float, default=2.0, help="default written to studio.json")
    parser.add_argument("--device", help="cuda, cpu, cuda:1 ... (default: CUDA when present; env EMBEDDED_DEVICE)")
    args = parser.parse_args()
    if args.device:
        os.environ["EMBEDDED_DEVICE"] = args.device  # the stage workers are spawned processes: they read it too
    config = SMOKE if args.smoke else TrainConfig()
    if args.unet_steps:
        config = replace(config, unet_steps=args.unet_steps)
    if args.controlnet_steps:
        config = replace(config, controlnet_steps=args.controlnet_steps)
    if args.lora_steps:
        config = replace(config, lora_steps=args.lora_steps)
    run(config, Path(args.work), Path(args.output), args.resume, args.guidance_scale)


if __name__ == "__main__":
    main()
