"""Embedded training picks its device in one place: CUDA when present, else the CPU, unless told."""

from __future__ import annotations

import torch

from embedded import train


def test_training_uses_cuda_when_present_and_the_cpu_otherwise(monkeypatch):
    monkeypatch.delenv("EMBEDDED_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.training_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.training_device() == torch.device("cpu")


def test_the_device_can_be_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("EMBEDDED_DEVICE", "cpu")
    assert train.training_device() == torch.device("cpu")


def test_the_loss_draws_its_noise_and_timesteps_on_the_cpu_whatever_the_device():
    """Random draws come from CPU generators and are then moved, so a GPU run draws the same numbers."""
    from embedded.models import build_scheduler

    latents = torch.zeros(3, 4, 8, 8)
    seen = {}

    def predict(noisy, timesteps):
        seen["timesteps"] = timesteps
        return torch.zeros_like(noisy)

    train.diffusion_loss(build_scheduler(), predict, latents, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    torch.randn(latents.shape, generator=generator)
    assert torch.equal(seen["timesteps"], torch.randint(0, 1000, (3,), generator=generator))
