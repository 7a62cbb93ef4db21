"""Disk stays bounded: everything a request writes lives in Gradio's cache and is gone after the set age."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from embedded.synthetic_loras import lora_tensors, write_lora
from pipelines.studio import Studio
from ui.app import build_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AGE_S = 2


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def test_images_grids_and_uploads_leave_the_cache_empty_after_the_age(tiny_studio, tmp_path, monkeypatch):
    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    loras = tmp_path / "loras"
    loras.mkdir()
    write_lora(loras / "ink.safetensors", lora_tensors(tiny_studio.base, seed=3), {})
    settings = dataclasses.replace(tiny_studio.settings, lora_dir=str(loras), cache_age_s=AGE_S)
    studio = Studio(settings)
    system_grids_before = set(Path(tempfile.gettempdir()).glob("studio-lora-grid-*"))
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        client = Client(url, verbose=False)
        app_files = set(files_under(cache))  # the examples' images, kept while the app runs
        upload = tmp_path / "map.png"
        Image.new("RGB", (32, 32), "white").save(upload)
        for seed in range(3):
            client.predict(prompt="a circle", seed=seed, steps=1, num_images=2, api_name="/text2img")
            client.predict(image=handle_file(str(upload)), preprocessor="none", seed=seed, steps=1,
                           api_name="/edge2img")
            client.predict(lora_names=["ink.safetensors"], weights="1", seeds=str(seed), steps=1,
                           api_name="/lora_grid")
        written = set(files_under(cache)) - app_files
        assert len(written) >= 3  # images, control maps, grids, the uploaded map (some may be gone already)
        deadline = time.monotonic() + 4 * AGE_S + 5
        while set(files_under(cache)) - app_files and time.monotonic() < deadline:
            time.sleep(0.5)
        assert set(files_under(cache)) == app_files
        assert set(Path(tempfile.gettempdir()).glob("studio-lora-grid-*")) == system_grids_before
    finally:
        demo.close()
