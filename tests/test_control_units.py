"""Several ControlNets at once: a mode's own unit plus `control_units`, in the studio, PNG info and the API."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import ControlNetUnionModel, UNet2DConditionModel
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw

from embedded.tiny_models import build_tiny_controlnet, build_tiny_sdxl_pipeline, build_tiny_union_controlnet
from pipelines.metadata import parse_parameters
from pipelines.modes import UNION
from pipelines.png_info import settings_from_parameters
from pipelines.request import ControlUnit, GenerationRequest
from pipelines.settings import Settings
from pipelines.studio import Studio

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(prompt="a red circle", steps=3, seed=4, preprocessor="none")


def disc_map(box: tuple[int, int, int, int], size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).ellipse(box, fill="white")
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def two_units(scale: float = 1.0, second: Image.Image | None = None) -> GenerationRequest:
    depth = ControlUnit("depth", second or disc_map((18, 18, 30, 30)), scale=scale, start=0.0, end=0.8)
    return GenerationRequest(mode="edge", image=disc_map((2, 2, 14, 14)), control_units=(depth,), **FAST)


def test_two_units_run_as_one_multi_controlnet_of_the_modes_own_controlnets(tiny_studio):
    result = tiny_studio.generate(two_units())
    pipe = tiny_studio.pipeline_for("edge", ("edge", "depth"))
    assert isinstance(pipe.controlnet, MultiControlNetModel)
    singles = [tiny_studio.pipeline_for(mode).controlnet for mode in ("edge", "depth")]
    assert all(net is single for net, single in zip(pipe.controlnet.nets, singles, strict=True))  # loaded once
    assert pipe.unet is tiny_studio.base.unet
    assert result.control_map.size == (64, 32)  # both maps, side by side


def test_the_second_units_map_and_scale_steer_the_image(tiny_studio):
    alone = pixels(tiny_studio.generate(GenerationRequest(mode="edge", image=disc_map((2, 2, 14, 14)), **FAST))
                   .images[0])
    both = pixels(tiny_studio.generate(two_units()).images[0])
    moved = pixels(tiny_studio.generate(two_units(second=Image.new("RGB", (32, 32), "white"))).images[0])
    silent = pixels(tiny_studio.generate(two_units(scale=0.0)).images[0])
    assert np.abs(both - alone).mean() > 1 and np.abs(both - moved).mean() > 1
    assert np.abs(silent - alone).max() <= 1  # weight 0: the second ControlNet adds nothing


def test_every_unit_is_in_the_png_and_png_info_reads_them_back(tiny_studio):
    result = tiny_studio.generate(two_units(scale=0.6))
    parsed = parse_parameters(result.parameters[0])
    assert parsed["ControlNet 0"].startswith("Module: none, Model: edge")
    assert "Weight: 0.6, Guidance Start: 0, Guidance End: 0.8" in parsed["ControlNet 1"]
    read = settings_from_parameters(result.parameters[0], tiny_studio.served)
    assert read.mode == "edge"
    assert read.values["control_units"] == [{"mode": "depth", "preprocessor": "none", "scale": 0.6, "start": 0.0,
                                              "end": 0.8}]
    assert any("holds no control map" in note for note in read.notes)


def test_text_img2img_and_inpaint_take_units_too(tiny_studio):
    unit = ControlUnit("pose", disc_map((8, 8, 24, 24)))
    start = Image.new("RGB", (32, 32), "blue")
    mask = disc_map((0, 0, 16, 32)).convert("L")
    for extra in ({"mode": "text"}, {"mode": "img2img", "image": start}, {"mode": "inpaint", "image": start,
                                                                           "mask": mask}):
        request = GenerationRequest(**{**FAST, "preprocessor": None}, **extra, control_units=(unit,))
        result = tiny_studio.generate(request)
        assert "ControlNet 0" in parse_parameters(result.parameters[0]), extra["mode"]


def test_units_through_the_api(client, tmp_path):
    disc_map((18, 18, 30, 30)).save(tmp_path / "depth.png")
    disc_map((2, 2, 14, 14)).save(tmp_path / "edge.png")
    units = [{"mode": "depth", "image": handle_file(str(tmp_path / "depth.png")), "scale": 0.5}]
    gallery, control_map, _, info = client.predict(
        image=handle_file(str(tmp_path / "edge.png")), control_units=units, **FAST, api_name="/edge2img"
    )
    assert Image.open(control_map).size == (64, 32) and "ControlNet 1" in info
    with pytest.raises(AppError, match="send each unit's image as a file"):
        client.predict(image=handle_file(str(tmp_path / "edge.png")), **FAST, api_name="/edge2img",
                       control_units=[{"mode": "depth", "image": str(tmp_path / "depth.png")}])
    too_many = [units[0]] * 3
    with pytest.raises(AppError, match="at most 2 more control units"):
        client.predict(image=handle_file(str(tmp_path / "edge.png")), control_units=too_many, **FAST,
                       api_name="/edge2img")


@pytest.fixture(scope="module")
def sdxl_with_union(tmp_path_factory) -> Studio:
    folder = tmp_path_factory.mktemp("sdxl-union")
    build_tiny_sdxl_pipeline(folder / "xl")
    unet = UNet2DConditionModel.from_pretrained(folder / "xl" / "unet")
    controlnets = {mode: str(build_tiny_controlnet(unet, folder / mode, seed)) for seed, mode in enumerate(
        ("edge", "depth"), start=1)}
    controlnets[UNION] = str(build_tiny_union_controlnet(unet, folder / UNION, seed=3))
    return Studio(Settings(model=str(folder / "xl"), lora_dir=str(folder), device="cpu", controlnets=controlnets))


def test_on_sdxl_several_units_share_the_union_model_instead_of_loading_one_each(sdxl_with_union):
    studio = sdxl_with_union
    result = studio.generate(two_units(scale=0.7))
    pipe = studio.pipeline_for("edge", (UNION,))
    assert isinstance(pipe.controlnet, ControlNetUnionModel) and pipe.unet is studio.base.unet
    assert studio.controlnets.registry["edge"] not in studio.controlnets._loaded  # the edge model never loaded
    assert "Model: union" in parse_parameters(result.parameters[0])["ControlNet 1"]
    assert any("unit 0's were used" in note for note in result.notes)  # weights 1 and 0.7 cannot both apply
    moved = studio.generate(two_units(scale=0.7, second=Image.new("RGB", (32, 32), "white")))
    assert np.abs(pixels(result.images[0]) - pixels(moved.images[0])).mean() > 0.5  # the second map is read
    start = Image.new("RGB", (32, 32), "blue")
    edited = studio.generate(GenerationRequest(mode="img2img", image=start, control_units=two_units().control_units
                                               + (ControlUnit("edge", disc_map((2, 2, 14, 14))),), **FAST))
    assert edited.images[0].size == (32, 32)


def test_a_union_model_that_cannot_load_leaves_each_unit_its_own_controlnet(sdxl_with_union, monkeypatch):
    studio = sdxl_with_union
    monkeypatch.setitem(studio.controlnets.registry, UNION, "/nowhere/union")
    result = studio.generate(two_units())
    assert any("Each unit ran its own ControlNet instead" in note for note in result.notes)
    assert "Model: edge" in parse_parameters(result.parameters[0])["ControlNet 0"]
