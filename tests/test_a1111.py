"""The A1111 vocabulary (pipelines/a1111.py): what the studio writes into a PNG, PNG info reads back as it was."""

from __future__ import annotations

import itertools

import pytest
from PIL import Image, ImageDraw

from pipelines.a1111 import READY_MAP, unit_key
from pipelines.control import UsedControl, png_units
from pipelines.metadata import format_parameters, parse_parameters, save_png
from pipelines.modes import CONTROL_MODES, MODES, STYLE
from pipelines.parameters import PARAMETERS
from pipelines.png_info import read_parameters_text, settings_from_parameters
from pipelines.preprocessors import PREPROCESSORS
from pipelines.request import ControlUnit, GenerationRequest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Every value differs from its default, so a value that is not read back cannot pass for one that is.
SAMPLING = dict(
    prompt='a red circle,\non "blue": small', negative_prompt="green, blurry", loras="", seed=11,
    randomize_seed=False, steps=2, guidance_scale=2.5, scheduler="DPM++ 2M Karras", width=40, height=24,
)
CONTROL = dict(controlnet_scale=0.7, control_start=0.25, control_end=0.75)
OWN = {
    "text": {},
    "pose": dict(preprocessor="none", **CONTROL),
    "edge": dict(preprocessor="canny", detect_resolution=128, low_threshold=40, high_threshold=90, **CONTROL),
    "depth": dict(preprocessor="none", **CONTROL),
    "img2img": dict(strength=0.6),
    "inpaint": dict(strength=0.6, mask_blur=3, masked_content="noise"),
}
# A unit of another ControlNet beside each mode's own (the tiny ControlNets are named after their modes).
EXTRA = {"text": ("edge", "canny"), "pose": ("edge", "none"), "edge": ("pose", "none"), "depth": ("edge", "none"),
         "img2img": ("depth", "none"), "inpaint": ("pose", "none")}
# What a PNG does not carry: pixels, and what only shaped the run (each image's PNG has its own seed and settings).
# The style reference's fields are written only for a request with a style image (tests/test_style_reference.py).
NOT_IN_A_PNG = {"image", "mask", "num_images", "preset", *STYLE}


def square() -> Image.Image:
    image = Image.new("RGB", (40, 24), "black")
    ImageDraw.Draw(image).rectangle((8, 4, 30, 20), fill="white")
    return image


def own_images(mode: str) -> dict[str, Image.Image]:
    if mode == "text":
        return {}
    return {"image": square(), **({"mask": square().convert("L")} if mode == "inpaint" else {})}


@pytest.mark.parametrize("mode", list(MODES))
def test_what_the_studio_writes_reads_back_as_the_request_in_every_mode(tiny_studio, tmp_path, mode):
    unit_mode, unit_preprocessor = EXTRA[mode]
    unit = ControlUnit(unit_mode, square(), unit_preprocessor, scale=0.6, start=0.1, end=0.8)
    request = GenerationRequest(mode=mode, **SAMPLING, **OWN[mode], **own_images(mode), control_units=(unit,))
    path = tmp_path / "made.png"
    save_png(tiny_studio.generate(request).images[0], path)

    read = settings_from_parameters(read_parameters_text(str(path)), tiny_studio.served)

    assert read.mode == mode
    read_unit = {"mode": unit_mode, "preprocessor": unit_preprocessor, "scale": 0.6, "start": 0.1, "end": 0.8}
    assert read.values == {**SAMPLING, **OWN[mode], "control_units": [read_unit]}
    # Every field of the mode is read back, but those a PNG does not carry and options of detectors not run.
    preprocessor = OWN[mode].get("preprocessor", READY_MAP)
    other_options = {option for name in MODES[mode].preprocessors for option in PREPROCESSORS[name].options
                     if option not in PREPROCESSORS[preprocessor].options}
    assert set(MODES[mode].parameters) - set(read.values) == (NOT_IN_A_PNG | other_options) & set(
        MODES[mode].parameters)


def control(mode: str, preprocessor: str, **switches: bool) -> UsedControl:
    options = {name: PARAMETERS[name].default for name in PREPROCESSORS[preprocessor].options} | switches
    return UsedControl(mode, Image.new("RGB", (8, 8)), 0.5, 0.0, 1.0, preprocessor, options)


def every_way_to_run(mode: str) -> list[UsedControl]:
    """Each of the mode's preprocessors, OpenPose with each combination of its hands and face switches."""
    controls = []
    for preprocessor in MODES[mode].preprocessors:
        options = PREPROCESSORS[preprocessor].options
        switches = [name for name in ("include_hands", "include_face") if name in options]
        for values in itertools.product((False, True), repeat=len(switches)):
            controls.append(control(mode, preprocessor, **dict(zip(switches, values, strict=True))))
    return controls


@pytest.mark.parametrize("used", [used for mode in CONTROL_MODES for used in every_way_to_run(mode)],
                         ids=lambda used: f"{used.mode}-{used.preprocessor}-{sorted(used.options.items())}")
def test_every_preprocessor_is_written_as_an_a1111_module_that_reads_back_as_it_ran(tiny_studio, used):
    units = png_units([used], {used.mode: "some-controlnet"})
    text = format_parameters("x", "", {"Steps": 2, "Mode": used.mode, **units})
    module = parse_parameters(text)[unit_key(0)].split(",")[0].removeprefix("Module: ")

    read = settings_from_parameters(text, tiny_studio.served)

    assert read.mode == used.mode
    expected = {"preprocessor": used.preprocessor,
                **{name: used.options[name] for name in ("include_hands", "include_face") if name in used.options}}
    assert {name: read.values.get(name) for name in expected} == expected
    assert module in {READY_MAP, *MODES[used.mode].a1111_modules}


def test_midas_is_written_by_its_a1111_name_and_the_name_the_studio_wrote_before_still_reads(tiny_studio):
    assert "Module: depth_midas," in png_units([control("depth", "midas")], {"depth": "d"})[unit_key(0)]
    for module, preprocessor in (("midas", "midas"), ("depth_anything_v2", "depth_anything")):
        text = f'x\nSteps: 2, Mode: depth, {unit_key(0)}: "Module: {module}, Model: d"'
        assert settings_from_parameters(text, tiny_studio.served).values["preprocessor"] == preprocessor


@pytest.mark.parametrize(
    ("model", "mode"),
    [
        ("embedded-controlnet-edge", "edge"),  # the studio's own names for its local ControlNets
        ("pose", "pose"),
        ("control_v11f1p_sd15_depth [cfd03158]", "depth"),
        ("control_v11p_sd15_softedge", None),  # "edge" inside a word is no edge ControlNet
        ("xinsir/controlnet-union-sdxl-1.0", None),
    ],
)
def test_a_ready_map_units_mode_comes_from_its_model_name(tiny_studio, model, mode):
    text = f'x\nSteps: 2, {unit_key(0)}: "Module: canny, Model: c", {unit_key(1)}: "Module: none, Model: {model}"'
    read = settings_from_parameters(text, tiny_studio.served)
    units = read.values.get("control_units", [])
    assert [unit["mode"] for unit in units] == ([mode] if mode else [])
