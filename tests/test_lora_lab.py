"""The LoRA lab through a real Gradio server and the real `gradio_client`: `/loras`, `/lora_grid`, and
concurrent grids with different LoRA sets, each identical to the same grid rendered alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from embedded.synthetic_loras import kohya_metadata, lora_tensors, write_lora
from pipelines.endpoints import validate_grid
from pipelines.errors import StudioError
from pipelines.lora.triggers import add_trigger_words
from pipelines.metadata import parse_parameters
from pipelines.request import GenerationRequest, GridRequest, LoraChoice
from pipelines.settings import Settings
from ui.lora_lab import _check_session, build_lora_lab

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def studio(tiny_sd_dir, tiny_controlnet_dirs, tmp_path_factory):
    from pipelines.studio import Studio

    folder = tmp_path_factory.mktemp("lab-loras")
    settings = Settings(model=str(tiny_sd_dir), lora_dir=str(folder), device="cpu", controlnets=tiny_controlnet_dirs)
    studio = Studio(settings)
    write_lora(
        folder / "ink.safetensors",
        lora_tensors(studio.base, seed=11),
        kohya_metadata(tags={"ink style": 9, "sketch": 3}),
    )
    write_lora(
        folder / "neon.safetensors",
        lora_tensors(studio.base, layout="peft", seed=12),
        {"modelspec.trigger_phrase": "neon glow"},
    )
    return studio


@pytest.fixture(scope="module")
def client(studio, serve_blocks):
    with gr.Blocks() as demo:
        build_lora_lab(studio)
    demo.queue(default_concurrency_limit=1)
    with serve_blocks(demo) as served:
        yield served


def grid_args(loras, weights="0, 1", seeds="3, 4"):
    return dict(
        lora_names=loras,
        weights=weights,
        seeds=seeds,
        prompt="a red circle",
        negative_prompt="",
        mode="text",
        image=None,
        steps=2,
        guidance_scale=4.0,
        together="",
        add_together=False,
    )


def call_grid(client, loras, **overrides):
    args = grid_args(loras, **overrides)
    image, notes = client.predict(**args, api_name="/lora_grid")
    return Image.open(image), notes


def test_loras_endpoint_lists_the_folder(client):
    listed = {entry["name"]: entry for entry in client.predict(api_name="/loras")}
    assert set(listed) == {"ink.safetensors", "neon.safetensors"}
    assert listed["ink.safetensors"]["trigger_words"][:2] == ["ink style", "sketch"]
    assert listed["neon.safetensors"]["trigger_words"] == ["neon glow"]
    assert listed["ink.safetensors"]["size_bytes"] > 0


def test_lora_grid_endpoint_returns_a_labelled_png_with_every_cells_parameters(client):
    download, notes = call_grid(client, ["ink.safetensors"])
    assert download.format == "PNG" and "Rendered 6 images" in notes
    cells = [key for key in download.text if key.startswith("parameters r")]
    assert len(cells) == 6  # baseline + ink @ 0 + ink @ 1, two seeds each
    assert parse_parameters(download.text["parameters r2 c1"])["loras"] == [("ink.safetensors", 1.0)]
    assert parse_parameters(download.text["parameters r2 c1"])["Seed"] == "4"


def test_refusals_reach_api_callers_as_plain_errors(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="no LoRA 'missing.safetensors'"):
        call_grid(client, ["missing.safetensors"])
    with pytest.raises(AppError, match="not one of this session's uploads"):
        call_grid(client, ["/tmp/someone-elses/upload.safetensors"])
    with pytest.raises(AppError, match="Weights must be numbers"):  # names the field
        call_grid(client, ["ink.safetensors"], weights="half")


def test_concurrent_grids_with_different_lora_sets_match_their_solo_runs(client, studio, monkeypatch):
    sets = [["ink.safetensors"], ["neon.safetensors"], ["ink.safetensors", "neon.safetensors"]]
    alone = [np.asarray(call_grid(client, loras, seeds="3")[0]) for loras in sets]
    callers = []  # the worker thread behind each activation
    activate = studio.loras.activate
    monkeypatch.setattr(
        studio.loras, "activate", lambda choices: callers.append(threading.get_ident()) or activate(choices)
    )
    with ThreadPoolExecutor(len(sets)) as pool:
        together = list(pool.map(lambda loras: np.asarray(call_grid(client, loras, seeds="3")[0]), sets))
    for solo, concurrent in zip(alone, together, strict=True):
        assert np.array_equal(solo, concurrent)
    assert len({solo.tobytes() for solo in alone}) == 3  # the three sets really differ
    switches = sum(1 for before, after in zip(callers, callers[1:], strict=False) if before != after)
    assert switches > len(sets) - 1  # the grids did interleave cell by cell, not one after another


def test_together_weights_text(studio):
    names = ["ink.safetensors", "/tmp/uploads/ab/neon.safetensors"]

    def together(text):
        grid = GridRequest(GenerationRequest(), names, "1", "1", text, add_together=True)
        return validate_grid(grid, studio.served)[0].together

    assert together("neon.safetensors: 0.5") == (LoraChoice("ink.safetensors", 1.0), LoraChoice(names[1], 0.5))
    with pytest.raises(StudioError, match=r"not chosen: other.safetensors"):
        together("other.safetensors: 1")
    with pytest.raises(StudioError, match=r"together.*name:weight"):
        together("ink.safetensors: strong")


def test_trigger_words_are_added_once():
    assert add_trigger_words("a cat", ["ink style", "sketch"]) == "ink style, sketch, a cat"  # first, as trained
    assert add_trigger_words("a cat, Ink Style", ["ink style", "sketch"]) == "sketch, a cat, Ink Style"
    assert add_trigger_words("", ["neon glow"]) == "neon glow"


def test_uploads_are_only_usable_by_their_session():
    mine = str(Path("/tmp/uploads/abc/mine.safetensors"))
    _check_session([mine, "ink.safetensors"], [mine])
    with pytest.raises(StudioError):
        _check_session([mine], [])
