"""PNG info: the settings a PNG was made with, read back through `/png_info` and sent to the studio again."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw, PngImagePlugin

from embedded.synthetic_loras import lora_tensors, write_lora
from pipelines.errors import StudioError
from pipelines.modes import MODES
from pipelines.png_info import read_parameters_chunk, settings_from_parameters
from pipelines.settings import Settings
from pipelines.studio import Studio

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# AUTOMATIC1111 1.10 with sd-webui-controlnet 1.1, as it writes a txt2img PNG.
A1111_CANNY = (
    "masterpiece, <lora:add_detail:0.8>, a castle <lora:hub:someone/ink:0.5> <lora:pastel:0.6:0.3>\n"
    "Negative prompt: lowres, bad hands\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, "
    "Model hash: abc123, Model: v1-5-pruned, "
    'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.8, '
    "Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, Threshold B: 200, "
    'Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: False, Control Mode: Balanced", '
    'Lora hashes: "add_detail: 7c6bad76eb54, pastel: 1f2e3d4c5b6a", Version: v1.10.1'
)


@pytest.fixture(scope="module")
def studio(tiny_sd_dir, tiny_controlnet_dirs, tmp_path_factory) -> Studio:
    """The tiny studio with one LoRA in its folder, so LoRAs make the round trip too."""
    folder = tmp_path_factory.mktemp("png-info-loras")
    settings = Settings(model=str(tiny_sd_dir), lora_dir=str(folder), device="cpu", controlnets=tiny_controlnet_dirs)
    studio = Studio(settings)
    write_lora(folder / "ink.safetensors", lora_tensors(studio.base, seed=21))
    return studio


@pytest.fixture(scope="module")
def client(studio, launch_app):
    with launch_app(studio) as served:
        yield served


@pytest.fixture(scope="module")
def edge_map(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("png-info-maps") / "edges.png"
    image = Image.new("RGB", (40, 24), "black")
    ImageDraw.Draw(image).ellipse((8, 2, 30, 22), outline="white", width=2)
    image.save(path)
    return str(path)


def png_with_text(path, **chunks: str) -> str:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8), "gray").save(path, pnginfo=info)
    return str(path)


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def generate(client: Client, endpoint: str, **values) -> tuple[list[dict], object, int, str]:
    return client.predict(**values, api_name=endpoint)


TEXT_REQUEST = dict(
    prompt="a red circle,\non a blue background: small",
    negative_prompt='green, "blurry"',
    loras="ink.safetensors:0.7",
    seed=41,
    randomize_seed=False,
    steps=3,
    guidance_scale=2.5,
    scheduler="DPM++ 2M Karras",
    width=40,
    height=24,
    num_images=2,
)


def test_a_text_image_read_back_and_sent_again_is_the_same_pixel_for_pixel(client):
    gallery, _, _, _ = generate(client, "/text2img", **TEXT_REQUEST)
    second = gallery[1]["image"]  # seed 42: each image's PNG carries its own seed

    text, answer = client.predict(image=handle_file(second), api_name="/png_info")

    assert text == Image.open(second).info["parameters"]
    assert answer["mode"] == "text"
    expected = {**TEXT_REQUEST, "seed": 42}
    del expected["num_images"]
    assert answer["values"] == expected
    again, _, _, _ = generate(client, "/text2img", **answer["values"])
    assert np.array_equal(pixels(again[0]["image"]), pixels(second))


def test_an_edge_image_with_its_control_map_round_trips_with_the_control_settings(client, edge_map):
    request = dict(
        image=handle_file(edge_map), prompt="a ring", preprocessor="none", seed=9, randomize_seed=False, steps=4,
        guidance_scale=3.0, scheduler="Euler", width=40, height=24, controlnet_scale=0.7, control_start=0.25,
        control_end=0.75,
    )
    gallery, _, _, _ = generate(client, "/edge2img", **request)
    original = gallery[0]["image"]

    _, answer = client.predict(image=handle_file(original), api_name="/png_info")

    assert answer["mode"] == "edge"
    values = answer["values"]
    sent = {name: value for name, value in request.items() if name != "image"}
    assert {name: values[name] for name in sent} == sent
    again, _, _, _ = generate(client, "/edge2img", image=handle_file(edge_map), **values)
    assert np.array_equal(pixels(again[0]["image"]), pixels(original))
    # The control settings shape the image, so the equality above depends on reading them back.
    other, _, _, _ = generate(client, "/edge2img", image=handle_file(edge_map), **{**values, "controlnet_scale": 0.2})
    assert not np.array_equal(pixels(other[0]["image"]), pixels(original))


def test_an_a1111_png_maps_to_the_edge_tab_through_the_endpoint(client, tmp_path):
    path = png_with_text(tmp_path / "castle.png", parameters=A1111_CANNY)

    text, answer = client.predict(image=handle_file(path), api_name="/png_info")

    assert text == A1111_CANNY
    assert answer["mode"] == "edge"
    assert answer["values"] == {
        "prompt": "masterpiece, , a castle",
        "negative_prompt": "lowres, bad hands",
        "loras": "add_detail:0.8, hub:someone/ink:0.5, pastel:0.6",
        "preprocessor": "canny",
        "detect_resolution": 512,
        "low_threshold": 100,
        "high_threshold": 200,
        "seed": 123,
        "randomize_seed": False,
        "steps": 20,
        "guidance_scale": 7.0,
        "scheduler": "DPM++ 2M Karras",
        "width": 512,
        "height": 768,
        "controlnet_scale": 0.8,
        "control_start": 0.1,
        "control_end": 0.9,
    }
    notes = "\n".join(answer["notes"])
    assert "Width 512 is outside 8 to 64 px" in notes and "Height 768 is outside 8 to 64 px" in notes
    assert "Only the first weight of <lora:pastel:0.6:0.3> was read" in notes
    for unused in ("Model hash: abc123", "Model: v1-5-pruned", "Lora hashes: add_detail: 7c6bad76eb54",
                   "ControlNet 0 Model: control_v11p_sd15_canny [d14c016b]", "ControlNet 0 Control Mode: Balanced",
                   "ControlNet 0 Pixel Perfect: False", "Version: v1.10.1"):
        assert unused in notes


def test_values_from_a_file_reach_the_studio_only_through_its_checks(client, tmp_path):
    text = "a cat <lora:ink.safetensors:5>\nSteps: 150, Sampler: Euler a, CFG scale: nan, Seed: 1e400, Size: 32x32"
    _, answer = client.predict(image=handle_file(png_with_text(tmp_path / "odd.png", parameters=text)),
                               api_name="/png_info")
    values, notes = answer["values"], "\n".join(answer["notes"])
    # Values that are no value of their kind are not sent at all; the rest are sent as they are, with a note.
    assert "guidance_scale" not in values and "seed" not in values
    assert "CFG scale 'nan' was not used: not a finite number" in notes
    assert "Seed '1e400' was not used: not a whole number" in notes
    assert values["steps"] == 150 and "Steps 150 is outside 1 to 100" in notes
    assert values["loras"] == "ink.safetensors:5" and "weight 5, outside -2 to 2" in notes

    with pytest.raises(AppError, match="the weight of 'ink.safetensors' must be a number from -2 to 2; got 5"):
        generate(client, "/text2img", **values)
    with pytest.raises(AppError, match="Steps must be a whole number from 1 to 100; got 150"):
        generate(client, "/text2img", **{**values, "loras": ""})


def test_a_png_without_parameters_and_a_non_image_get_plain_messages_naming_the_problem(client, tmp_path):
    bare = png_with_text(tmp_path / "holiday.png", Software="GIMP")
    with pytest.raises(AppError) as refused:
        client.predict(image=handle_file(bare), api_name="/png_info")
    message = str(refused.value)
    assert "'holiday.png' carries no generation parameters (no 'parameters' text chunk; its text chunks: Software)" in (
        message
    )
    assert str(tmp_path) not in message and "/tmp" not in message

    notes = tmp_path / "notes.txt"
    notes.write_text("Steps: 20, Sampler: Euler a, CFG scale: 7")
    with pytest.raises(AppError, match="'notes.txt' is not a PNG image; only a PNG's text chunks are read"):
        client.predict(image=handle_file(str(notes)), api_name="/png_info")

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    with pytest.raises(AppError, match="'photo.jpg' is not a PNG image"):
        client.predict(image=handle_file(str(photo)), api_name="/png_info")


def test_the_endpoint_is_listed_with_named_outputs(client):
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/png_info"]
    assert [parameter["parameter_name"] for parameter in endpoint["parameters"]] == ["image"]
    assert [output["label"] for output in endpoint["returns"]] == ["Parameters text", "Settings for the studio"]


def test_a_damaged_png_is_refused_and_a_large_one_is_read_without_decoding_its_pixels(tmp_path):
    damaged = tmp_path / "cut.png"
    good = png_with_text(tmp_path / "good.png", parameters="x\nSteps: 1")
    damaged.write_bytes(open(good, "rb").read()[:40])
    with pytest.raises(StudioError, match="'cut.png' is a damaged PNG"):
        read_parameters_chunk(damaged)
    # 100 megapixels of pixel data that is no pixel data: only the text before it is read.
    large = tmp_path / "large.png"
    large.write_bytes(_png(width=10_000, height=10_000, text="a wide view\nSteps: 4, Seed: 1, Size: 64x64"))
    assert read_parameters_chunk(large).startswith("a wide view")
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png(width=2**31 - 1, height=200, text="x\nSteps: 1"))
    with pytest.raises(StudioError, match="'huge.png' declares a size too large"):
        read_parameters_chunk(huge)
    with pytest.raises(StudioError, match="No image was given"):
        read_parameters_chunk(None)


def _png(width: int, height: int, text: str) -> bytes:
    """A PNG file's chunks written by hand: a header, the parameters text, and IDAT data that is not an image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join([
        b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header), chunk(b"tEXt", b"parameters\0" + text.encode("latin-1")),
        chunk(b"IDAT", b"no pixels here"), chunk(b"IEND", b""),
    ])


# The mapping on its own, against what the tiny studio serves.


@pytest.mark.parametrize(
    ("unit", "mode", "expected"),
    [
        ('"Module: openpose_full, Model: control_v11p_sd15_openpose [cab727d4], Weight: 1, Processor Res: 384"',
         "pose", {"preprocessor": "openpose", "include_hands": True, "include_face": True, "detect_resolution": 384}),
        ('"Module: openpose, Model: control_v11p_sd15_openpose, Weight: 1"',
         "pose", {"preprocessor": "openpose", "include_hands": False, "include_face": False}),
        ('"Module: depth_midas, Model: control_v11f1p_sd15_depth [cfd03158], Weight: 1, Threshold A: -1"',
         "depth", {"preprocessor": "midas"}),
        ('"Module: none, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, Processor Res: -1"',
         "edge", {"preprocessor": "none"}),
    ],
)
def test_the_controlnet_unit_picks_the_mode_and_preprocessor(studio, unit, mode, expected):
    settings = settings_from_parameters(f"a person\nSteps: 20, Sampler: Euler a, ControlNet 0: {unit}", studio.served)
    assert settings.mode == mode
    assert {name: settings.values[name] for name in expected} == expected
    assert set(settings.values) <= set(MODES[mode].parameters)


def test_a_unit_the_studio_has_no_mode_for_goes_to_the_text_tab_with_a_note(studio):
    text = 'a house\nSteps: 20, Seed: 3, ControlNet 0: "Module: lineart_realistic, Model: control_v11p_sd15_lineart"'
    settings = settings_from_parameters(text, studio.served)
    assert settings.mode == "text" and settings.values["seed"] == 3
    notes = "\n".join(settings.notes)
    assert "no mode for ControlNet module 'lineart_realistic'" in notes
    assert "ControlNet 0 Module: lineart_realistic" in notes


def test_the_old_controlnet_layout_and_a1111_samplers(studio):
    old = (
        "a dog\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, ControlNet Enabled: True, "
        "ControlNet Module: depth_midas, ControlNet Model: control_sd15_depth [fef5e48e], ControlNet Weight: 0.5"
    )
    settings = settings_from_parameters(old, studio.served)
    assert (settings.mode, settings.values["preprocessor"]) == ("depth", "midas")
    assert settings.values["controlnet_scale"] == 0.5
    assert settings.values["scheduler"] == "DPM++ 2M Karras"

    exponential = settings_from_parameters("x\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Exponential", studio.served)
    assert exponential.values["scheduler"] == "DPM++ 2M" and "Schedule type: Exponential" in exponential.notes[-1]
    unknown = settings_from_parameters("x\nSteps: 20, Sampler: DPM++ SDE", studio.served)
    assert "scheduler" not in unknown.values
    assert unknown.notes[0].startswith("Sampler 'DPM++ SDE' was not used: the studio offers Euler a, Euler")


# The tab's handlers, without a browser.


@pytest.fixture(scope="module")
def page(studio):
    import gradio as gr

    from ui.modes import build_mode_tab
    from ui.png_info import build_png_info_tab

    with gr.Blocks() as demo:
        with gr.Tabs() as tabs:
            fields = {mode.name: build_mode_tab(studio, mode) for mode in MODES.values()}
            build_png_info_tab(studio, tabs, fields)
    return demo, tabs, fields


def test_send_fills_the_edge_tab_and_selects_it(studio, page):
    from ui.png_info import send_handler

    _, tabs, fields = page
    updates = send_handler(studio, tabs, fields)(A1111_CANNY)

    assert updates.pop(tabs).selected == "edge"
    edge = fields["edge"]
    read = settings_from_parameters(A1111_CANNY, studio.served).values
    switches = ("mode", "preprocessor")
    units_off = {edge[key] for key in edge if key.startswith("control_units[") and key.endswith(switches)}
    assert set(updates) == {edge[name] for name in read} | units_off  # the file has one unit: the others go off
    assert updates[edge["scheduler"]] == "DPM++ 2M Karras" and updates[edge["randomize_seed"]] is False
    assert updates[edge["seed"]] == 123 and updates[edge["width"]] == 512
    assert edge["image"] not in updates and edge["num_images"] not in updates


def test_send_and_preview_refuse_an_empty_text_and_preview_names_the_tab(studio, page):
    import gradio as gr

    from ui.png_info import preview_handler, send_handler

    _, tabs, fields = page
    with pytest.raises(gr.Error, match="Upload a PNG with generation parameters first"):
        send_handler(studio, tabs, fields)("  ")
    destination, rows, notes, button = preview_handler(studio)(A1111_CANNY)
    assert destination == "These settings go to the **Edge** tab." and button.value == "Send to Edge tab"
    assert ["Scheduler", "DPM++ 2M Karras"] in rows and ["Randomize seed", "no"] in rows
    assert "Width 512 is outside 8 to 64 px" in notes


def test_the_send_event_targets_every_mode_field_and_the_tabs(page):
    demo, tabs, fields = page
    send = next(block_fn for block_fn in demo.fns.values() if getattr(block_fn.fn, "__name__", "") == "send")
    targets = {block._id for block in send.outputs}
    assert tabs._id in targets
    assert all(component._id in targets for mode in fields.values() for component in mode.values())


def test_canny_settings_travel_in_the_png_and_come_back(tiny_studio, tmp_path):
    from pipelines.metadata import save_png
    from pipelines.request import GenerationRequest

    photo = tmp_path / "photo.png"
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((10, 10, 50, 50), fill="white")
    image.save(photo)
    request = GenerationRequest(mode="edge", image=str(photo), preprocessor="canny", low_threshold=40,
                                high_threshold=90, detect_resolution=128, steps=1, seed=1)
    made = tiny_studio.generate(request)
    save_png(made.images[0], tmp_path / "made.png")
    sent = settings_from_parameters(read_parameters_chunk(str(tmp_path / "made.png")), tiny_studio.served)
    assert sent.mode == "edge"
    assert {key: sent.values[key] for key in ("preprocessor", "low_threshold", "high_threshold", "detect_resolution")} \
        == {"preprocessor": "canny", "low_threshold": 40, "high_threshold": 90, "detect_resolution": 128}
