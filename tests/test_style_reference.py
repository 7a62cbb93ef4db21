"""The style reference (an IP-Adapter, pipelines/style.py) on tiny SD 1.5 and SDXL models with random adapters in h94's
layout: every pipeline path through `Studio.generate` (text, ControlNet, several units, Union, img2img, inpaint) with
LoRAs; no reference (or scale 0) gives the pixels of a studio that never loaded the adapter; refusals by name; the
PNG's parameters name the picture by hash and PNG info reads them back; a grid's style row; no batching."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from diffusers import UNet2DConditionModel
from PIL import Image, ImageDraw

from embedded.synthetic_loras import lora_tensors, write_lora
from embedded.tiny_models import (
    TINY_STYLE_ADAPTER,
    build_tiny_sdxl_pipeline,
    build_tiny_style_adapter,
    build_tiny_union_controlnet,
)
from pipelines.endpoints import MODE_ENDPOINTS, grid_cells, validate_grid
from pipelines.errors import StudioError
from pipelines.grid import STYLE_LABEL, render_grid
from pipelines.metadata import parse_generation_text
from pipelines.modes import MODES, STYLE, UNION
from pipelines.png_info import settings_from_parameters
from pipelines.request import ControlUnit, GenerationRequest, GridRequest
from pipelines.settings import Settings
from pipelines.studio import Studio, together_key
from pipelines.style import StyleAdapter, StyleReference, picture_hash, style_adapter_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(prompt="a red circle", steps=2, width=32, height=32, seed=3)
START = Image.new("RGB", (32, 32), (200, 40, 40))
MASK = Image.new("L", (32, 32), 0)
ImageDraw.Draw(MASK).rectangle((8, 8, 24, 24), fill=255)


def reference() -> Image.Image:
    picture = Image.new("RGB", (40, 40), (20, 40, 200))
    ImageDraw.Draw(picture).rectangle((10, 10, 30, 30), fill=(240, 200, 0))
    return picture


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(int)


def mode_requests(edge_map: str) -> dict[str, GenerationRequest]:
    """A request per pipeline path of SD 1.5: text, a ControlNet, two units (MultiControlNet), img2img, inpaint."""
    return {
        "text": GenerationRequest(**FAST, loras="tiny:1"),
        "edge": GenerationRequest(mode="edge", image=edge_map, preprocessor="none", **FAST),
        "units": GenerationRequest(mode="edge", image=edge_map, preprocessor="none", loras="tiny:0.5", **FAST,
                                   control_units=(ControlUnit("depth", edge_map, scale=0.5),)),
        "img2img": GenerationRequest(mode="img2img", image=START, strength=0.7, **FAST),
        "inpaint": GenerationRequest(mode="inpaint", image=START, mask=MASK, strength=1.0, **FAST),
    }


@pytest.fixture(scope="module")
def sd_adapter(tiny_sd_dir, tmp_path_factory):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    return build_tiny_style_adapter(unet, tmp_path_factory.mktemp("sd-style"), seed=7)


@pytest.fixture(scope="module")
def lora_dir(tiny_studio, tmp_path_factory):
    folder = tmp_path_factory.mktemp("style-loras")
    write_lora(folder / "tiny.safetensors", lora_tensors(tiny_studio.base, layout="peft", seed=4, text_encoder=False))
    return folder


def styled_studio(tiny_sd_dir, controlnets, lora_dir, adapter, **settings) -> Studio:
    return Studio(Settings(model=str(tiny_sd_dir), lora_dir=str(lora_dir), device="cpu", controlnets=controlnets,
                           style_adapter=str(adapter), **settings))


@pytest.fixture(scope="module")
def plain_studio(tiny_sd_dir, tiny_controlnet_dirs, lora_dir):
    """A studio that never loads the style adapter: today's pixels."""
    return Studio(Settings(model=str(tiny_sd_dir), lora_dir=str(lora_dir), device="cpu",
                           controlnets=tiny_controlnet_dirs))


# ------------------------------------------------------------------ SD 1.5: every path, and today's pixels without


def test_every_sd15_path_takes_the_reference_and_without_it_gives_the_pixels_of_a_studio_that_never_loaded_it(
        tiny_sd_dir, tiny_controlnet_dirs, lora_dir, sd_adapter, plain_studio, edge_map):
    studio = styled_studio(tiny_sd_dir, tiny_controlnet_dirs, lora_dir, sd_adapter)
    requests = mode_requests(edge_map)
    today = {name: plain_studio.generate(request) for name, request in requests.items()}
    for name in ("edge", "img2img"):  # these pipelines are built before the adapter loads
        assert np.array_equal(pixels(studio.generate(requests[name])), pixels(today[name])), name
    assert not studio.style.loaded
    for name, request in requests.items():
        styled = studio.generate(replace(request, style_image=reference()))
        assert np.abs(pixels(styled) - pixels(today[name])).mean() > 1.0, f"{name}: the reference did nothing"
        again = studio.generate(request)  # the adapter stays loaded, at scale 0 with zero embeddings
        assert np.array_equal(pixels(again), pixels(today[name])), f"{name}: not today's pixels without a reference"
    assert studio.style.loaded and studio.base.unet.encoder_hid_proj is not None
    scale_zero = studio.generate(replace(requests["units"], style_image=reference(), style_scale=0.0))
    assert np.array_equal(pixels(scale_zero), pixels(today["units"]))
    assert "Style reference" not in today["text"].parameters[0]  # nor does its PNG text change


def test_the_modes_scale_different_blocks_and_per_block_scales_come_through_the_api(tiny_sd_dir, tiny_controlnet_dirs,
                                                                                    lora_dir, sd_adapter):
    studio = styled_studio(tiny_sd_dir, tiny_controlnet_dirs, lora_dir, sd_adapter)
    runs = {mode: pixels(studio.generate(GenerationRequest(**FAST, style_image=reference(), style_mode=mode)))
            for mode in ("style", "style and layout", "everything", '{"up": {"block_0": [0, 1]}}')}
    assert np.array_equal(runs["style"], runs['{"up": {"block_0": [0, 1]}}'])  # the tiny UNet's "style" block
    assert not np.array_equal(runs["style"], runs["style and layout"])
    assert not np.array_equal(runs["style and layout"], runs["everything"])
    with pytest.raises(StudioError, match="Style mode: .* it has no up.block_1"):
        studio.generate(GenerationRequest(**FAST, style_image=reference(), style_mode='{"up": {"block_1": 1}}'))


def test_per_block_scales_are_checked_and_written_one_way():
    checked, _ = MODE_ENDPOINTS["text"].validate(GenerationRequest(style_mode={"up": {"block_0": [0, 1]}, "mid": 1}),
                                                 served_for_tests())
    assert checked.style_mode == '{"mid":1.0,"up":{"block_0":[0.0,1.0]}}'
    for bad, words in (('{"side": 1}', "the sides are down, mid, up"), ('{"up": {"block_0": 3}}', "from 0 to 2"),
                       ("{not json", "not valid JSON"), ("sideways", "must be one of: style")):
        with pytest.raises(StudioError, match=words):
            MODE_ENDPOINTS["text"].validate(GenerationRequest(style_mode=bad), served_for_tests())


def served_for_tests():
    from pipelines.parameters import Served

    return Served(max_side=128, size_multiple=8, max_steps=10, max_images=4, max_guidance=30, max_prompt_chars=200,
                  max_seed=2**32 - 1, resolution=32, default_steps=2, default_guidance=7.5, default_scheduler="DDIM",
                  schedulers=("DDIM",), default_style_scale=0.6)


def test_every_mode_takes_the_style_fields_last_and_the_family_default_scale():
    for mode in MODES.values():
        assert mode.parameters[-3:] == STYLE, mode.name
    checked, _ = MODE_ENDPOINTS["inpaint"].validate(
        GenerationRequest(mode="inpaint", image=START, mask=MASK), served_for_tests())
    assert (checked.style_scale, checked.style_mode, checked.style_image) == (0.6, "style", None)


# ------------------------------------------------------------ SDXL: Union, img2img, inpaint; the studio.json route


def test_every_sdxl_path_takes_the_reference_from_the_models_own_studio_json(tmp_path, edge_map):
    build_tiny_sdxl_pipeline(tmp_path / "xl")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "xl" / "unet")
    build_tiny_style_adapter(unet, tmp_path / "xl" / "ip_adapter", seed=8)
    presets = {"style": {"up": {"block_0": [0.0, 1.0]}}, "everything": 1.0}
    (tmp_path / "xl" / "studio.json").write_text(json.dumps({"family": "sdxl", "style_adapter": {
        "subfolder": "ip_adapter", "weight_name": TINY_STYLE_ADAPTER, "image_encoder_folder": "image_encoder",
        "default_scale": 0.7, "modes": presets}}))
    union = str(build_tiny_union_controlnet(unet, tmp_path / UNION, seed=3))
    studio = Studio(Settings(model=str(tmp_path / "xl"), lora_dir=str(tmp_path), device="cpu",
                             controlnets={UNION: union, "edge": union, "depth": union}))
    assert studio.served.default_style_scale == 0.7
    units = (ControlUnit("edge", edge_map), ControlUnit("depth", edge_map, scale=0.5))
    requests = {
        "text": GenerationRequest(**FAST),
        "union": GenerationRequest(**FAST, control_units=units),
        "img2img": GenerationRequest(mode="img2img", image=START, **FAST),
        "inpaint": GenerationRequest(mode="inpaint", image=START, mask=MASK, strength=1.0, **FAST),
    }
    plain = {name: studio.generate(request) for name, request in requests.items()}  # pipelines built before
    for name, request in requests.items():
        styled = studio.generate(replace(request, style_image=reference()))
        assert np.abs(pixels(styled) - pixels(plain[name])).mean() > 1.0, name
        assert "Style scale: 0.7" in styled.parameters[0]
        assert np.array_equal(pixels(studio.generate(request)), pixels(plain[name])), name
    assert studio.pipeline_for("text", (UNION,)).image_encoder is studio.base.image_encoder


# ------------------------------------------------------------------ refusals


def test_the_family_default_on_the_hub_is_refused_offline_naming_the_field(plain_studio):
    with pytest.raises(StudioError, match=r"style_image.*'h94/IP-Adapter/models/ip-adapter_sd15.safetensors'.*Hub"):
        plain_studio.generate(GenerationRequest(**FAST, style_image=reference()))
    assert not plain_studio.style.loaded


def test_an_adapter_of_another_family_a_pickle_and_none_are_refused_by_name(tiny_sd_dir, tmp_path, lora_dir,
                                                                             plain_studio):
    build_tiny_sdxl_pipeline(tmp_path / "xl")
    xl_adapter = build_tiny_style_adapter(UNet2DConditionModel.from_pretrained(tmp_path / "xl" / "unet"),
                                          tmp_path / "xl-style", seed=9)
    refusals = {xl_adapter: "does not fit this model: .* 64 wide, and this model has .* width 32",
                tmp_path / "ip-adapter_sd15.bin": "Refusing to load the style adapter 'ip-adapter_sd15.bin'.*pickles",
                "none": "cannot be used: the setting STUDIO_STYLE_ADAPTER is 'none'"}
    for setting, words in refusals.items():
        studio = styled_studio(tiny_sd_dir, {}, lora_dir, setting)
        for _ in range(2):  # and said again, not tried again
            with pytest.raises(StudioError, match=words):
                studio.generate(GenerationRequest(**FAST, style_image=reference()))
        assert studio.base.unet.encoder_hid_proj is None  # the UNet is untouched
        assert np.array_equal(pixels(studio.generate(GenerationRequest(**FAST))),
                              pixels(plain_studio.generate(GenerationRequest(**FAST))))


def test_a_model_without_an_adapter_says_so_plainly_and_compile_refuses_it(tiny_studio):
    adapter, why = style_adapter_for("embedded", "/models/embedded", None)
    assert adapter is None and "this model has no style adapter yet" in why and "studio.json" in why
    assert style_adapter_for("sd15", "/models/x", None)[0].source == "h94/IP-Adapter"
    declared = StyleAdapter("/nowhere", "ip_adapter", "a.safetensors")
    compiled = StyleReference(declared, "", tiny_studio.base, "cpu", tiny_studio.dtype, compiled=True)
    with pytest.raises(StudioError, match="style_image.*off with STUDIO_COMPILE"):
        compiled.load([])


# ------------------------------------------------------------------ PNG parameters, batching, the grid


def test_the_png_names_the_reference_by_hash_and_png_info_reads_its_scale_and_mode_back(
        tiny_sd_dir, tiny_controlnet_dirs, lora_dir, sd_adapter, tmp_path):
    studio = styled_studio(tiny_sd_dir, tiny_controlnet_dirs, lora_dir, sd_adapter)
    path = tmp_path / "reference.png"
    reference().save(path)
    mode = '{"up": {"block_0": [0, 1]}}'
    result = studio.generate(GenerationRequest(**FAST, style_image=str(path), style_scale=0.8, style_mode=mode))
    text = result.parameters[0]
    settings = parse_generation_text(text).settings
    assert settings["Style reference"] == picture_hash(path) and len(picture_hash(path)) == 10
    assert (settings["Style scale"], settings["Style mode"]) == ("0.8", '{"up":{"block_0":[0.0,1.0]}}')
    read = settings_from_parameters(text, studio.served)
    assert (read.values["style_scale"], read.values["style_mode"]) == (0.8, '{"up":{"block_0":[0.0,1.0]}}')
    assert "style_image" not in read.values
    assert any(settings["Style reference"] in note and "give the same picture again" in note for note in read.notes)


def test_a_request_with_a_style_image_is_never_batched():
    request = GenerationRequest(**FAST, style_scale=1.0, style_mode="style")
    assert together_key(request) is not None
    assert together_key(replace(request, style_image=START)) is None


def test_a_grid_with_a_reference_ends_with_its_row_without_loras(tiny_sd_dir, tiny_controlnet_dirs, lora_dir,
                                                                 sd_adapter):
    studio = styled_studio(tiny_sd_dir, tiny_controlnet_dirs, lora_dir, sd_adapter)
    grid = GridRequest(GenerationRequest(prompt="a circle", steps=2, style_image=reference(), style_scale=0.5),
                       lora_names=("tiny",), weights="1", seeds="1, 2")
    assert grid_cells(validate_grid(grid, studio.served)[0]) == 3 * 2
    rendered = render_grid(studio, grid)
    labels = sorted({(cell.row, cell.row_label) for cell in rendered.cells})
    assert labels[-1] == (2, f"{STYLE_LABEL} @ 0.5 (style)")
    last = [cell for cell in rendered.cells if cell.row == 2]
    assert all("Style reference" in cell.parameters and "<lora:" not in cell.parameters for cell in last)
    assert not any("Style reference" in cell.parameters for cell in rendered.cells if cell.row < 2)
