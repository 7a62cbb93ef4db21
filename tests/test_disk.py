"""Disk stays bounded: everything a request writes lives in Gradio's cache and is gone after the set age.

The served test counts the cache folder itself, not the files Gradio says it tracks: Gradio's own `delete_cache` misses
every file that reaches an output after an update to it (`ui/cache.py`), which is every streamed result here.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import ui.modes
from embedded.synthetic_loras import lora_tensors, write_lora
from pipelines.previews import Previewer
from pipelines.studio import Studio
from ui.app import build_app
from ui.cache import start_cache_sweeper, sweep_folder

AGE_S = 2


def entries_under(folder: Path) -> tuple[set[Path], set[Path]]:
    """The files (links included) and the folders under `folder`, as they are on disk."""
    files, folders = set(), set()
    for path in folder.rglob("*"):
        (folders if path.is_dir() and not path.is_symlink() else files).add(path)
    return files, folders


# The sweep itself, on a folder made here (no server; ages faked by sweeping "later").


def test_a_sweep_removes_old_entries_and_empty_folders_but_keeps_fresh_and_kept_files(tmp_path):
    cache = tmp_path / "cache"
    for name in ("a/result.png", "b/kept.png", "c/d/deep.gif"):
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_bytes(b"x")
    kept = {os.path.realpath(cache / "b/kept.png")}

    assert sweep_folder(cache, age_s=60, keep=kept) == 0  # all fresh
    assert sweep_folder(cache, age_s=60, keep=kept, now=time.time() + 120) == 5  # 2 files, folders a, c/d, c

    assert entries_under(cache) == ({cache / "b/kept.png"}, {cache / "b"})


def test_a_sweep_never_follows_a_link_out_of_the_folder(tmp_path):
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "folder/precious.png").write_bytes(b"x")
    (outside / "precious.txt").write_bytes(b"x")
    (cache / "e").mkdir(parents=True)
    (cache / "e/to-folder").symlink_to(outside / "folder", target_is_directory=True)
    (cache / "to-file").symlink_to(outside / "precious.txt")

    sweep_folder(cache, age_s=60, now=time.time() + 120)

    assert entries_under(cache) == (set(), set())  # the links went, as links
    assert (outside / "folder/precious.png").exists() and (outside / "precious.txt").exists()
    assert cache.is_dir()  # the folder itself stays


def test_no_sweeper_for_an_age_of_0_or_a_cache_folder_at_the_root_or_home(tmp_path):
    demo = gr.Blocks()
    assert start_cache_sweeper(demo, 0, str(tmp_path)) is None  # as Gradio's delete_cache: 0 turns it off
    assert start_cache_sweeper(demo, 60, "/") is None
    assert start_cache_sweeper(demo, 60, str(Path.home())) is None


# Through the served app: every kind of file a request puts in the cache.


@pytest.mark.usefixtures("one_torch_thread")
def test_results_previews_maps_grids_gifs_and_uploads_leave_the_cache_after_the_age(tiny_studio, tmp_path, monkeypatch):
    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    # A preview at every step, so a 3-step run streams two of them (by default none comes sooner than 0.5 s).
    monkeypatch.setattr(ui.modes, "Previewer", partial(Previewer, interval=0.0, share=1.0))
    loras = tmp_path / "loras"
    loras.mkdir()
    write_lora(loras / "ink.safetensors", lora_tensors(tiny_studio.base, seed=3), {})
    studio = Studio(dataclasses.replace(tiny_studio.settings, lora_dir=str(loras), cache_age_s=AGE_S))
    system_grids_before = set(Path(tempfile.gettempdir()).glob("studio-lora-grid-*"))
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        # The client downloads nothing: what is counted is the server's alone, and a file the sweep removed before
        # a slow fetch (the age is 2 s here) cannot fail a call.
        client = Client(url, verbose=False, download_files=False)
        app_files, app_folders = entries_under(cache)  # the examples' images, which Gradio keeps while the app runs
        upload = tmp_path / "map.png"
        Image.new("RGB", (64, 64), "white").save(upload)
        seen: set[Path] = set()  # every file seen in the cache after a call (the earliest may go before the last)

        def call(**arguments) -> tuple:
            job = client.submit(**arguments)
            job.result()
            seen.update(entries_under(cache)[0] - app_files)
            return tuple(job.outputs())

        text = call(prompt="a circle", seed=1, steps=3, num_images=2, api_name="/text2img")
        call(image=handle_file(str(upload)), preprocessor="none", seed=1, steps=3, api_name="/edge2img")
        call(image=handle_file(str(upload)), seed=1, steps=3, api_name="/img2img")
        call(lora_names=["ink.safetensors"], weights="1", seeds="1", steps=1, api_name="/lora_grid")
        timeline = call(prompt="a circle", seed=1, steps=3, keep_every=1, api_name="/denoise_timeline")

        previews = [gallery["label"] for gallery, *_ in text if isinstance(gallery, dict) and "label" in gallery]
        assert previews == ["Preview, step 1/3", "Preview, step 2/3"] and len(text[-1][0]) == 2  # then the result
        assert timeline[-1][2]["path"].endswith(".gif")
        suffixes = sorted(path.suffix for path in seen)
        # previews 2 x 2, results 2, edge map + result, img2img result, grid, frames, GIF, the upload
        assert suffixes.count(".png") >= 10 and ".gif" in suffixes, sorted(seen)
        assert any(path.name == "map.png" for path in seen)

        deadline = time.monotonic() + 4 * AGE_S + 8  # files go after age + a sweep, their folders one age later
        while entries_under(cache) != (app_files, app_folders) and time.monotonic() < deadline:
            time.sleep(0.5)
        files, folders = entries_under(cache)
        assert files == app_files, sorted(files - app_files)
        assert folders == app_folders, sorted(folders - app_folders)
        assert set(Path(tempfile.gettempdir()).glob("studio-lora-grid-*")) == system_grids_before
    finally:
        demo.close()
