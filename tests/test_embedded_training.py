"""The one training command, in its smoke mode: every stage runs and writes the committed layout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from embedded import world

ROOT = Path(__file__).resolve().parents[1]


def train_smoke(tmp_path: Path, *extra: str, workers: int = 2) -> None:
    # Its run time (about 40 s here) is reported by pytest --durations, not asserted: this machine is noisy.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDDED_WORKERS": str(workers)}
    subprocess.run([sys.executable, "-m", "embedded.train", "--smoke", "--work", str(tmp_path / "work"),
                    "--output", str(tmp_path / "models"), *extra], cwd=ROOT, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """One smoke run on two workers, shared by the tests that only read what it wrote."""
    folder = tmp_path_factory.mktemp("smoke")
    train_smoke(folder, workers=2)
    return folder


def test_smoke_training_writes_a_loadable_family(smoke_run):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    folder = smoke_run / "models" / "embedded"
    studio = json.loads((folder / "studio.json").read_text())
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    controlnet = ControlNetModel.from_pretrained(folder / studio["controlnets"]["edge"], torch_dtype=torch.float32)
    controlled = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet)
    scene = world.make_scene(world.EVALUATION_SEED_OFFSET, "object")
    image = controlled(scene.caption, image=Image.fromarray(scene.edge), num_inference_steps=2, output_type="np",
                       generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (world.RESOLUTION, world.RESOLUTION, 3) and np.isfinite(image).all()
    for style, trigger in world.STYLES.items():
        with safe_open(smoke_run / "models" / "loras" / f"{style}.safetensors", framework="pt") as handle:
            assert handle.metadata()["modelspec.trigger_phrase"] == trigger
        pipe.load_lora_weights(smoke_run / "models" / "loras", weight_name=f"{style}.safetensors", adapter_name=style)
    assert set(pipe.get_list_adapters()["unet"]) == set(world.STYLES)


def test_training_is_deterministic_by_seed(tmp_path):
    from embedded.train import SMOKE, build_dataset

    build_dataset(SMOKE, tmp_path / "a.npz")
    build_dataset(SMOKE, tmp_path / "b.npz")
    first, second = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert all(np.array_equal(first[key], second[key]) for key in first.files)


def test_the_whole_run_is_deterministic_whatever_the_number_of_workers(tmp_path, smoke_run):
    train_smoke(tmp_path, workers=1)
    weights = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*.safetensors"))
    assert {path.parts[1] for path in weights} >= {"embedded-controlnet-pose", "loras", "vae-decoder"}
    for path in weights:
        # Compared by content: safetensors writes a header's metadata in no fixed order.
        with safe_open(tmp_path / path, "pt") as one, safe_open(smoke_run / path, "pt") as two:
            assert one.metadata() == two.metadata() and set(one.keys()) == set(two.keys()), path
            assert all(torch.equal(one.get_tensor(key), two.get_tensor(key)) for key in one.keys()), path


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

    from embedded.models import build_vae
    from embedded.train import SMOKE, encode_latents, tune_vae_decoder

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
