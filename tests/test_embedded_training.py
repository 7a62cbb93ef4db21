"""The one training command, in its smoke mode: every stage runs and writes the committed layout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from pipelines.embedded import world

ROOT = Path(__file__).resolve().parents[1]


def train_smoke(tmp_path: Path, *extra: str) -> None:
    # Its run time (about 30 s here) is reported by pytest --durations, not asserted: this machine is noisy.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "pipelines.embedded.train", "--smoke", "--work", str(tmp_path / "work"),
                    "--output", str(tmp_path / "models"), *extra], cwd=ROOT, env=env, check=True, capture_output=True)


def test_smoke_training_writes_a_loadable_family(tmp_path):
    train_smoke(tmp_path)

    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    folder = tmp_path / "models" / "embedded"
    studio = json.loads((folder / "studio.json").read_text())
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    controlnet = ControlNetModel.from_pretrained(folder / studio["controlnets"]["edge"], torch_dtype=torch.float32)
    controlled = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet)
    scene = world.make_scene(world.EVALUATION_SEED_OFFSET, "object")
    image = controlled(scene.caption, image=Image.fromarray(scene.edge), num_inference_steps=2, output_type="np",
                       generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (world.RESOLUTION, world.RESOLUTION, 3) and np.isfinite(image).all()
    for style, trigger in world.STYLES.items():
        with safe_open(tmp_path / "models" / "loras" / f"{style}.safetensors", framework="pt") as handle:
            assert handle.metadata()["modelspec.trigger_phrase"] == trigger
        pipe.load_lora_weights(tmp_path / "models" / "loras", weight_name=f"{style}.safetensors", adapter_name=style)
    assert set(pipe.get_list_adapters()["unet"]) == set(world.STYLES)


def test_training_is_deterministic_by_seed(tmp_path):
    from pipelines.embedded.train import SMOKE, build_dataset

    build_dataset(SMOKE, tmp_path / "a.npz")
    build_dataset(SMOKE, tmp_path / "b.npz")
    first, second = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert all(np.array_equal(first[key], second[key]) for key in first.files)


def test_resume_with_more_unet_steps_trains_on_and_retrains_what_depends_on_the_unet(tmp_path):
    train_smoke(tmp_path)
    controlnet_file = tmp_path / "models" / "embedded-controlnet-edge" / "diffusion_pytorch_model.safetensors"
    first_controlnet = controlnet_file.read_bytes()
    train_smoke(tmp_path, "--resume", "--unet-steps", "4")
    assert torch.load(tmp_path / "work" / "unet-checkpoint.pt", weights_only=True)["step"] == 4
    assert controlnet_file.read_bytes() != first_controlnet


def test_decoder_tuning_keeps_the_latents_every_later_stage_learns_from(tmp_path):
    from dataclasses import replace

    from diffusers import AutoencoderKL

    from pipelines.embedded.models import build_vae
    from pipelines.embedded.train import SMOKE, encode_latents, tune_vae_decoder

    torch.manual_seed(0)
    build_vae().save_pretrained(tmp_path / "vae")
    images = np.stack([world.make_scene(seed, "object").image for seed in range(4)])
    before = AutoencoderKL.from_pretrained(tmp_path / "vae")
    latents = encode_latents(before, images)
    tune_vae_decoder(replace(SMOKE, vae_decoder_steps=2), {"image": images}, latents, tmp_path / "vae",
                     tmp_path / "tuned")

    after = AutoencoderKL.from_pretrained(tmp_path / "tuned")
    assert torch.equal(encode_latents(after, images), latents)
    with torch.no_grad():
        assert not torch.allclose(after.decode(latents).sample, before.decode(latents).sample)


def test_the_unet_learns_the_same_on_two_workers_as_on_one(tmp_path):
    """Each worker takes its part of every batch and the gradients are averaged, so two workers take the steps
    one would, up to float rounding: far closer to each other than to where the weights started."""
    from concurrent.futures import ProcessPoolExecutor
    from dataclasses import replace

    from pipelines.embedded.models import build_unet
    from pipelines.embedded.tokenizer import write_tokenizer_folder
    from pipelines.embedded.train import SMOKE, seed_everything, train_unet_on_workers

    config = replace(SMOKE, unet_steps=3, unet_batch=4)
    tokenizer = write_tokenizer_folder(tmp_path / "tokenizer")
    latents = torch.randn(10, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    captions = [world.make_scene(seed, "object").caption for seed in range(10)]
    weights = {}
    for workers in (1, 2):
        work = tmp_path / f"{workers}-workers"
        work.mkdir()
        with ProcessPoolExecutor(max_workers=workers, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
            train_unet_on_workers(pool, workers, config, latents, captions, tokenizer, work)
        weights[workers] = torch.load(work / "unet-checkpoint.pt", weights_only=True)["unet"]
    seed_everything(config.seed + 2)
    start = build_unet().state_dict()

    def largest_difference(a, b):
        return max((a[key] - b[key]).abs().max().item() for key in a)

    assert largest_difference(weights[1], weights[2]) < largest_difference(weights[1], start) / 20
