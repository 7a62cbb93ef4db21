"""LoraManager and the grid on the tiny SD1.5-architecture studio: loading in each layout, switching,
exact restore of the base, every mode, refusals, eviction, and grid cells equal to solo runs."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from embedded.synthetic_loras import kohya_metadata, lora_tensors, write_layout_file, write_lora
from pipelines.endpoints import validate_grid
from pipelines.errors import StudioError
from pipelines.grid import render_grid
from pipelines.lora import LoraManager
from pipelines.metadata import parse_parameters, save_png
from pipelines.request import GenerationRequest, GridRequest, LoraChoice
from pipelines.settings import EMBEDDED_LORAS, EMBEDDED_MODEL, Settings

LAYOUTS = Path(__file__).parent / "fixtures" / "lora_layouts"
STEPS = 2
ADALORA_KEY = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_E"  # AdaLoRA's singular values


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_sd_dir) -> Path:
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("loras")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    write_lora(
        folder / "ink.safetensors",
        lora_tensors(pipe, layout="kohya", seed=1),
        kohya_metadata(tags={"ink style": 9, "monochrome": 4}, title="ink"),
    )
    write_lora(
        folder / "neon.safetensors",
        lora_tensors(pipe, layout="peft", seed=2, text_encoder=False),
        {"modelspec.title": "Neon", "modelspec.trigger_phrase": "neon glow"},
    )
    write_lora(
        folder / "copy-of-ink.safetensors",
        lora_tensors(pipe, layout="kohya", seed=1),
        kohya_metadata(tags={"ink style": 9, "monochrome": 4}, title="ink"),
    )
    sd15 = {**lora_tensors(pipe, layout="kohya", seed=3)}
    sd15["lora_unet_down_blocks_5_attentions_0_proj_in.lora_down.weight"] = sd15[next(iter(sd15))].clone()
    sd15["lora_unet_down_blocks_5_attentions_0_proj_in.lora_up.weight"] = sd15[list(sd15)[1]].clone()
    loha = "lora_unet_mid_block_attentions_0_proj_out"
    sd15 |= {f"{loha}.hada_w{i}_{ab}": torch.ones(4, 64) for i in (1, 2) for ab in "ab"}
    sd15[f"{loha}.alpha"] = torch.tensor(4.0)
    sd15["lora_unet_mid_block_attentions_0_proj_in.dora_scale"] = torch.ones(1, 64)
    write_lora(folder / "stray-keys.safetensors", sd15)
    # A key the format planner passes on as part of a known layer, but which diffusers drops (with a log line only).
    write_lora(
        folder / "extra-key.safetensors",
        lora_tensors(pipe, layout="peft", seed=2, text_encoder=False) | {ADALORA_KEY: torch.ones(4, 1)},
    )
    write_layout_file(folder / "sdxl-locon.safetensors", json.loads((LAYOUTS / "muchai_sdxl_locon.json").read_text()))
    write_layout_file(folder / "sd15-locon.safetensors", json.loads((LAYOUTS / "muchai_sd15_locon.json").read_text()))
    (folder / "old.ckpt").write_bytes(b"not opened")
    return folder


@pytest.fixture(scope="module")
def studio(tiny_sd_dir, tiny_controlnet_dirs, lora_dir):
    from pipelines.studio import Studio

    return Studio(
        Settings(model=str(tiny_sd_dir), lora_dir=str(lora_dir), device="cpu", controlnets=tiny_controlnet_dirs)
    )


def pixels(studio, loras=(), mode="text", seed=7, prompt="a red circle") -> np.ndarray:
    control = Image.new("RGB", (64, 64), "black") if mode != "text" else None
    if control is not None:
        control.paste((255, 255, 255), (16, 16, 48, 48))
    request = GenerationRequest(
        mode=mode, prompt=prompt, steps=STEPS, seed=seed, loras=tuple(loras), image=control, preprocessor="none"
    )
    return np.asarray(studio.generate(request).images[0])


def test_folder_listing_shows_size_family_and_trigger_words(studio):
    entries = {entry.name: entry for entry in studio.loras.available()}
    assert {"ink.safetensors", "neon.safetensors", "sdxl-locon.safetensors"} <= set(entries)
    assert "old.ckpt" not in entries  # only safetensors are listed
    assert entries["ink.safetensors"].trigger_words[:2] == ("ink style", "monochrome")
    assert entries["neon.safetensors"].trigger_words == ("neon glow",)
    assert entries["sdxl-locon.safetensors"].family == "sdxl"
    assert entries["sdxl-locon.safetensors"].size_bytes > 300 * 2**20


def test_loras_change_the_image_and_turning_them_off_restores_the_base_exactly(studio):
    base = pixels(studio)
    ink = pixels(studio, [LoraChoice("ink.safetensors", 1.0)])
    both = pixels(studio, [LoraChoice("ink.safetensors", 1.0), LoraChoice("neon.safetensors", 0.7)])
    assert np.abs(ink.astype(int) - base).mean() > 1
    assert np.abs(both.astype(int) - ink).mean() > 1
    assert np.array_equal(pixels(studio), base)
    assert np.array_equal(pixels(studio, [LoraChoice("ink.safetensors", 0.0)]), base)
    assert np.array_equal(pixels(studio, [LoraChoice("ink.safetensors", 1.0)]), ink)


def test_switching_keeps_adapters_loaded_and_never_reloads(studio, monkeypatch):
    studio.loras.activate([LoraChoice("ink.safetensors"), LoraChoice("neon.safetensors")])
    loads = []
    original = studio.loras._load
    monkeypatch.setattr(studio.loras, "_load", lambda *args, **kwargs: loads.append(args) or original(*args, **kwargs))
    base_unet = studio.base.unet
    for weight in (0.2, 0.9, 0.0, 1.0):
        studio.loras.activate([LoraChoice("neon.safetensors", weight)])
        studio.loras.activate([LoraChoice("ink.safetensors", weight), LoraChoice("copy-of-ink.safetensors", 0.5)])
    assert loads == []  # same content = same adapter, even under another name
    assert studio.base.unet is base_unet


def test_weights_scale_the_lora(studio):
    base = pixels(studio).astype(int)
    half = np.abs(pixels(studio, [LoraChoice("ink.safetensors", 0.5)]).astype(int) - base).mean()
    full = np.abs(pixels(studio, [LoraChoice("ink.safetensors", 1.0)]).astype(int) - base).mean()
    assert 0 < half < full


def test_loras_apply_in_every_controlnet_mode_and_switch_off_there_too(studio):
    for mode in ("edge", "pose", "depth"):
        base = pixels(studio, mode=mode)
        styled = pixels(studio, [LoraChoice("ink.safetensors", 1.0), LoraChoice("neon.safetensors", 0.5)], mode=mode)
        assert np.abs(styled.astype(int) - base).mean() > 1, mode
        assert np.array_equal(pixels(studio, mode=mode), base), mode


def test_skipped_keys_are_told_to_the_person(studio):
    request = GenerationRequest(prompt="x", steps=1, seed=1, loras=(LoraChoice("stray-keys.safetensors"),))
    notes = "\n".join(studio.generate(request).notes)
    assert "stray-keys.safetensors: 1 layer(s) match nothing" in notes and "down_blocks.5" in notes
    assert "stray-keys.safetensors: 5 key(s) skipped: LoHa" in notes  # four factors and the module's alpha
    assert "stray-keys.safetensors: 1 key(s) skipped: DoRA" in notes


def test_a_key_diffusers_drops_silently_is_told_and_the_rest_applies(studio):
    notes = studio.loras.activate([LoraChoice("extra-key.safetensors")])
    assert notes == [
        f"extra-key.safetensors: 1 key(s) skipped: diffusers found no place for them in the model "
        f"(for example {ADALORA_KEY})."
    ]
    assert np.array_equal(pixels(studio, [LoraChoice("extra-key.safetensors")]), pixels(studio, [LoraChoice("neon")]))


def test_lora_for_another_family_is_refused_naming_it(studio):
    with pytest.raises(StudioError, match="made for SDXL, but the loaded model is SD 1.5"):
        studio.generate(GenerationRequest(prompt="x", steps=1, loras=(LoraChoice("sdxl-locon.safetensors"),)))
    # An SD 1.5 LoRA fits the family but not this tiny model's layers: refused layer by layer.
    with pytest.raises(StudioError, match="does not fit the loaded model"):
        studio.loras.activate([LoraChoice("sd15-locon.safetensors")])
    assert np.array_equal(pixels(studio), pixels(studio, []))  # a refusal leaves no adapter behind


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("old.ckpt", "pickle-based"),
        ("missing.safetensors", "no LoRA"),
        ("../x.safetensors", "outside"),
        ("/tmp/elsewhere.safetensors", "this session's uploads"),
        ("hub:someone/style", "cannot be reached"),
    ],
)
def test_refused_names(studio, name, reason):
    with pytest.raises(StudioError, match=reason):
        studio.loras.activate([LoraChoice(name)])


def test_uploads_load_from_gradios_cache_until_it_removes_them(studio, lora_dir, tmp_path):
    upload = tmp_path / "gradio" / "mine.safetensors"
    upload.parent.mkdir()
    upload.write_bytes((lora_dir / "neon.safetensors").read_bytes())
    entry = studio.loras.add_upload(upload)
    assert entry.source == "upload" and entry.trigger_words == ("neon glow",)
    assert np.array_equal(pixels(studio, [LoraChoice(entry.name)]), pixels(studio, [LoraChoice("neon.safetensors")]))
    upload.unlink()  # what Gradio's delete_cache does after STUDIO_CACHE_AGE_S
    with pytest.raises(StudioError, match="no longer available; upload it again"):
        studio.loras.check(entry.name)
    sdxl = tmp_path / "gradio" / "xl.safetensors"
    write_layout_file(sdxl, json.loads((LAYOUTS / "muchai_sdxl_locon.json").read_text()))
    with pytest.raises(StudioError, match="made for SDXL"):
        studio.loras.add_upload(sdxl)


def test_least_recently_used_adapters_are_evicted_past_the_cap(studio, monkeypatch):
    manager = studio.loras
    monkeypatch.setattr(manager, "max_loaded", 1)
    manager.activate([LoraChoice("ink.safetensors")])
    manager.activate([LoraChoice("neon.safetensors")])
    assert manager.loaded == ["neon.safetensors"]
    present = {name for names in studio.base.get_list_adapters().values() for name in names}
    assert len(present) == 1  # deleted from the model, not only forgotten
    with pytest.raises(StudioError, match="At most 1 LoRAs can be active at once"):
        manager.activate([LoraChoice("ink.safetensors"), LoraChoice("neon.safetensors")])


@pytest.fixture
def fresh_pipe(tiny_sd_dir):
    """A pipeline of its own, so a second manager's adapters never meet the studio's."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_sd_dir)


def test_limits_are_the_managers_arguments(studio, fresh_pipe, lora_dir, tmp_path):
    ink_bytes = (lora_dir / "ink.safetensors").stat().st_size
    manager = LoraManager(
        fresh_pipe, studio.model.family, lora_dir, max_bytes=1, max_file_bytes=ink_bytes, max_upload_bytes=1024
    )
    manager.activate([LoraChoice("ink.safetensors")])
    manager.activate([LoraChoice("neon.safetensors")])
    assert manager.loaded == ["neon.safetensors"]  # past max_bytes, the adapter no longer active goes
    with pytest.raises(StudioError, match="the limit is"):
        manager.check("sdxl-locon.safetensors")
    assert "limit is" in {entry.name: entry for entry in manager.available()}["sdxl-locon.safetensors"].title
    upload = tmp_path / "mine.safetensors"
    upload.write_bytes((lora_dir / "neon.safetensors").read_bytes())
    with pytest.raises(StudioError, match="uploads are limited to"):
        manager.add_upload(upload)
    assert manager.hub.max_file_bytes == ink_bytes


def test_text_encoder_loads_leave_no_load_report_in_the_log(studio, fresh_pipe, lora_dir):
    """transformers reports the base layers and other adapters as MISSING on each text-encoder load: noise."""
    logger = logging.getLogger("transformers.integrations.peft")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        manager = LoraManager(fresh_pipe, studio.model.family, lora_dir)
        manager.activate([LoraChoice("ink.safetensors"), LoraChoice("stray-keys.safetensors")])
        assert logger.level == logging.WARNING  # raised for the load only
        assert set(fresh_pipe.get_list_adapters()["text_encoder"]) == set(manager._loaded)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    assert not [record for record in records if "LOAD REPORT" in record.getMessage()]


def test_grid_weights_and_seeds_are_read_from_text(studio):
    def checked(weights, seeds):
        grid = GridRequest(GenerationRequest(), ("ink.safetensors",), weights, seeds)
        return validate_grid(grid, studio.served)[0]

    grid = checked("0, 0.5,1", "3;4")
    assert [strength.weight for strength in grid.weights] == [0.0, 0.5, 1.0] and grid.seeds == (3, 4)
    for bad in ("", "a", "1,,x"):
        with pytest.raises(StudioError, match="(?i)weights"):
            checked(bad, "1")
    with pytest.raises(StudioError, match="(?i)seeds"):
        checked("1", "-1")


def test_grid_rows_columns_cells_and_png_parameters(studio, tmp_path):
    request = GenerationRequest(prompt="a red circle", steps=STEPS)
    grid = GridRequest(
        request,
        ("ink.safetensors", "neon.safetensors"),
        (0.0, 1.0),
        (5, 6),
        together="ink.safetensors: 0.5, neon.safetensors: 0.5",
        add_together=True,
    )
    base = pixels(studio)
    result = render_grid(studio, grid)
    assert np.array_equal(pixels(studio), base)  # each row ran fused; the base weights came back exactly
    assert [cell.row_label for cell in result.cells[::2]] == [
        "no LoRA",
        "ink.safetensors @ 0",
        "ink.safetensors @ 1",
        "neon.safetensors @ 0",
        "neon.safetensors @ 1",
        "ink.safetensors @ 0.5 + neon.safetensors @ 0.5",
    ]
    save_png(result.image, tmp_path / "grid.png")
    saved = Image.open(tmp_path / "grid.png")
    cell_w, cell_h = result.cells[0].image.size
    assert min(cell_w, cell_h) < 256 and saved.width >= 2 * 256 and saved.height > 6 * 256  # cells enlarged
    baseline = parse_parameters(saved.text["parameters"])
    assert baseline["loras"] == [] and baseline["Seed"] == "5" and baseline["prompt"] == "a red circle"
    cell = parse_parameters(saved.text["parameters r2 c1"])
    assert cell["loras"] == [("ink.safetensors", 1.0)] and cell["Seed"] == "6"
    # the row's own trigger words, not the baseline's, in front as trainers caption them
    assert cell["prompt"].startswith("ink style, monochrome") and cell["prompt"].endswith("a red circle")
    assert json.loads(saved.text["grid"])["cells"][5]["row_label"] == "ink.safetensors @ 1"
    # the same seed down a column, and each cell is the solo image for its request: its seeds ran as one batch,
    # whose larger matrix products round differently in the last float bits (at most one level of 255)
    solo = pixels(studio, [LoraChoice("ink.safetensors", 1.0)], seed=6, prompt=cell["prompt"])
    assert np.abs(np.asarray(result.cells[5].image).astype(int) - solo).max() <= 1
    assert np.array_equal(np.asarray(result.cells[2].image), np.asarray(result.cells[0].image))  # weight 0 = base


def test_grid_refuses_a_bad_lora_before_rendering(studio):
    grid = GridRequest(GenerationRequest(prompt="x", steps=1), ("sdxl-locon.safetensors",), (1.0,), (1,))
    with pytest.raises(StudioError, match="made for SDXL"):
        render_grid(studio, grid)


@pytest.mark.skipif(
    not (EMBEDDED_MODEL / "model_index.json").is_file() or not any(EMBEDDED_LORAS.glob("*.safetensors")),
    reason="the embedded model and its LoRAs are not in models/ yet",
)
def test_embedded_models_own_loras():
    from pipelines.studio import Studio

    embedded = Studio(Settings(model=str(EMBEDDED_MODEL), lora_dir=str(EMBEDDED_LORAS), device="cpu"))
    entries = embedded.loras.available()
    assert entries and all(entry.trigger_words for entry in entries)  # modelspec.trigger_phrase is read
    request = GenerationRequest(prompt="a red circle on a blue background", steps=4, seed=3)
    base = np.asarray(embedded.generate(request).images[0])
    for entry in entries:
        styled = embedded.generate(replace(request, loras=(LoraChoice(entry.name),)))
        assert not any("skipped" in note for note in styled.notes), styled.notes
        assert np.abs(np.asarray(styled.images[0]).astype(int) - base).mean() > 1, entry.name
    assert np.array_equal(np.asarray(embedded.generate(request).images[0]), base)


def test_load_readies_adapters_without_applying_them_and_unload_deletes_them(studio):
    """What a Ray Serve replica does with the LoRA sets it holds (serving/app.py)."""
    manager = studio.loras
    base, ink = pixels(studio), pixels(studio, [LoraChoice("ink.safetensors")])
    adapters = manager.load(["ink.safetensors", "neon.safetensors"])
    assert {"ink.safetensors", "neon.safetensors"} <= set(manager.loaded)
    assert np.array_equal(pixels(studio), base)  # loaded, not applied
    pixels(studio, [LoraChoice("ink.safetensors")])
    manager.unload(adapters)
    present = {name for names in studio.base.get_list_adapters().values() for name in names}
    assert not present & set(adapters) and not {"ink.safetensors", "neon.safetensors"} & set(manager.loaded)
    assert manager.active == []
    assert np.array_equal(pixels(studio), base)  # the active adapter went with the others: the base, exactly
    assert np.array_equal(pixels(studio, [LoraChoice("ink.safetensors")]), ink)  # loaded again when asked for
