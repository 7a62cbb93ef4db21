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


def reference_ema_decay(step: int) -> float:
    """The hand-written average the committed UNet and text encoder were made with, after update `step` (from 0)."""
    return min(0.997, (1 + step) / (10 + step))


def train_a_little(params: list[torch.nn.Parameter], ema, steps: int, generator: torch.Generator) -> list[float]:
    decays = []
    for _ in range(steps):
        with torch.no_grad():
            for param in params:
                param.add_(torch.randn(param.shape, generator=generator))
        ema.step(params)
        decays.append(ema.cur_decay_value)
    return decays


def test_ema_keeps_the_decay_schedule_and_averages_the_committed_weights_were_made_with():
    from embedded.train import build_ema

    torch.manual_seed(0)
    params = list(torch.nn.Linear(4, 3).parameters())
    reference = [param.detach().clone() for param in params]
    ema = build_ema(params)
    generator = torch.Generator().manual_seed(0)
    for step in range(6):  # few updates: the starting weights still weigh in, so a first-update slip shows
        [decay] = train_a_little(params, ema, 1, generator)
        assert decay == pytest.approx(reference_ema_decay(step), rel=1e-15, abs=0)
        for shadow, param in zip(reference, params):
            shadow.lerp_(param.detach(), 1 - reference_ema_decay(step))
    for averaged, expected in zip(ema.shadow_params, reference):
        torch.testing.assert_close(averaged, expected, rtol=1e-6, atol=1e-6)
    assert train_a_little(params, ema, 3000, generator)[-1] == 0.997  # (1 + s) / (10 + s) passes 0.997 at s = 2990


def test_ema_resumed_from_a_checkpoint_goes_on_as_if_never_stopped(tmp_path):
    from embedded.train import build_ema

    torch.manual_seed(0)
    start = [param.detach().clone() for param in torch.nn.Linear(4, 3).parameters()]
    through = [torch.nn.Parameter(tensor.clone()) for tensor in start]
    ema_through = build_ema(through)
    train_a_little(through, ema_through, 12, torch.Generator().manual_seed(0))

    stopped = [torch.nn.Parameter(tensor.clone()) for tensor in start]
    generator = torch.Generator().manual_seed(0)
    before_the_stop = build_ema(stopped)
    train_a_little(stopped, before_the_stop, 6, generator)
    torch.save({"ema": before_the_stop.state_dict()}, tmp_path / "checkpoint.pt")
    resumed = build_ema(stopped)
    resumed.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["ema"])
    train_a_little(stopped, resumed, 6, generator)
    assert all(torch.equal(a, b) for a, b in zip(resumed.shadow_params, ema_through.shadow_params))


def test_diffusion_loss_weights_each_sample_by_min_snr_5():
    from embedded.models import build_scheduler
    from embedded.train import diffusion_loss

    scheduler = build_scheduler()
    latents = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(0))

    def predict(noisy, timesteps):
        return 0.5 * noisy

    loss = diffusion_loss(scheduler, predict, latents, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)  # the same draws, in diffusion_loss's order
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = scheduler.get_velocity(latents, noise, timesteps)
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    per_sample = ((predict(noisy, timesteps) - target) ** 2).mean(dim=(1, 2, 3))
    expected = (torch.clamp(snr, max=5.0) / (snr + 1) * per_sample).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    assert not torch.allclose(loss, per_sample.mean(), rtol=1e-2)  # the weighting is not a no-op here

