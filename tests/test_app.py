"""The launcher: flags, and going on with the embedded model when the requested one cannot load."""

from __future__ import annotations

import pytest

import app
from pipelines.settings import Settings


def test_unreachable_hub_model_falls_back_to_the_embedded_model_and_says_so(
    tiny_sd_dir, empty_lora_dir, monkeypatch
):
    monkeypatch.setattr(app, "EMBEDDED_MODEL", tiny_sd_dir)
    settings = Settings(model="someone/not-cached-anywhere", lora_dir=str(empty_lora_dir), device="cpu")
    studio, warning = app.open_studio(settings, {})
    assert studio.model.source == str(tiny_sd_dir)
    assert "someone/not-cached-anywhere" in warning and "embedded model instead" in warning


def test_controlnet_flags_map_modes_to_sources():
    assert app.controlnet_overrides(["pose=/models/pose", "edge=org/canny"]) == {
        "pose": "/models/pose",
        "edge": "org/canny",
    }
    with pytest.raises(SystemExit, match="MODE=SOURCE"):
        app.controlnet_overrides(["sketch=/x"])


def test_flags_override_settings():
    args = app.parse_args(["--model", "m", "--lora-dir", "l", "--share", "--port", "7999"])
    assert (args.model, args.lora_dir, args.share, args.port) == ("m", "l", True, 7999)
