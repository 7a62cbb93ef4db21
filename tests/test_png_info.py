"""PNG info: the settings an image was made with, read back through `/png_info` and sent to the studio again.

Files in other tools' layouts are built here, each as that tool writes it (the source is named at each builder).
"""

from __future__ import annotations

import json
import struct
import time
import zlib

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw, PngImagePlugin

from embedded.synthetic_loras import lora_tensors, write_lora
from pipelines.endpoints import validate_request
from pipelines.errors import StudioError
from pipelines.metadata import MAX_PARAMETERS_CHARS, format_parameters
from pipelines.modes import MODES
from pipelines.parameters import MAX_SEED, Served
from pipelines.png_info import MAX_EXIF_BYTES, read_parameters_text, settings_from_parameters
from pipelines.request import GenerationRequest
from pipelines.schedulers import scheduler_names
from pipelines.settings import Limits, Settings
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
        "width": 40,
        "height": 64,
        "controlnet_scale": 0.8,
        "control_start": 0.1,
        "control_end": 0.9,
    }
    assert answer["source"] == "AUTOMATIC1111"
    notes = "\n".join(answer["notes"])
    assert ("Size 512x768 has a side past 64 px, the most served; scaled down, keeping its shape: 40x64 is sent "
            "instead.") in notes
    assert "Only the first weight of <lora:pastel:0.6:0.3> was read" in notes
    # the LoRA folder holds neither file the hashes name: each is named with its hash, and none is "Not used"
    assert "Not in the LoRA folder: add_detail (hash 7c6bad76eb54), pastel (hash 1f2e3d4c5b6a)." in notes
    assert "Lora hashes" not in next(note for note in answer["notes"] if note.startswith("Not used:"))
    for unused in ("Model hash: abc123", "Model: v1-5-pruned",
                   "ControlNet 0 Model: control_v11p_sd15_canny [d14c016b]", "ControlNet 0 Control Mode: Balanced",
                   "ControlNet 0 Pixel Perfect: False", "Version: v1.10.1"):
        assert unused in notes


def test_values_from_a_file_are_fitted_to_what_is_served_so_generate_takes_them(client, studio, tmp_path):
    text = "a cat <lora:ink.safetensors:5>\nSteps: 150, Sampler: Euler a, CFG scale: nan, Seed: 1e400, Size: 33x20"
    _, answer = client.predict(image=handle_file(png_with_text(tmp_path / "odd.png", parameters=text)),
                               api_name="/png_info")
    values, notes = answer["values"], "\n".join(answer["notes"])
    # Values that are no value of their kind are not sent at all; the rest are fitted, with a note.
    assert "guidance_scale" not in values and "seed" not in values
    assert "CFG scale 'nan' was not used: not a finite number" in notes
    assert "Seed '1e400' was not used: not a whole number" in notes
    assert values["steps"] == 100 and "Steps 150 is outside 1 to 100 here: 100 is sent instead." in notes
    assert values["loras"] == "ink.safetensors:2" and "weight 5, outside -2 to 2: 2 is sent instead" in notes
    assert (values["width"], values["height"]) == (32, 16) and "is not in multiples of 8 px" in notes

    validate_request(GenerationRequest(mode=answer["mode"], **values), studio.served)  # what Generate checks first


def test_a_png_without_parameters_and_a_non_image_get_plain_messages_naming_the_problem(client, tmp_path):
    bare = png_with_text(tmp_path / "holiday.png", Software="GIMP")
    with pytest.raises(AppError) as refused:
        client.predict(image=handle_file(bare), api_name="/png_info")
    message = str(refused.value)
    assert ("'holiday.png' carries no generation parameters (no 'parameters' text chunk, no EXIF UserComment, no "
            "ComfyUI or InvokeAI metadata; its text chunks: Software)") in message
    assert str(tmp_path) not in message and "/tmp" not in message

    notes = tmp_path / "notes.txt"
    notes.write_text("Steps: 20, Sampler: Euler a, CFG scale: 7")
    with pytest.raises(AppError, match="'notes.txt' is not a PNG, JPEG or WEBP image; only their metadata is read"):
        client.predict(image=handle_file(str(notes)), api_name="/png_info")

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    with pytest.raises(AppError, match="'photo.jpg' carries no generation parameters"):
        client.predict(image=handle_file(str(photo)), api_name="/png_info")


def test_the_endpoint_is_listed_with_named_outputs(client):
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/png_info"]
    assert [parameter["parameter_name"] for parameter in endpoint["parameters"]] == ["image"]
    assert [output["label"] for output in endpoint["returns"]] == ["Parameters text", "Settings for the studio"]


def test_a_damaged_png_is_refused_and_a_large_one_is_read_without_decoding_its_pixels(tmp_path):
    damaged = tmp_path / "cut.png"
    good = png_with_text(tmp_path / "good.png", parameters="x\nSteps: 1")
    damaged.write_bytes(open(good, "rb").read()[:40])
    with pytest.raises(StudioError, match="'cut.png' is a damaged image"):
        read_parameters_text(damaged)
    # 100 megapixels of pixel data that is no pixel data: only the text before it is read.
    large = tmp_path / "large.png"
    large.write_bytes(_png(width=10_000, height=10_000, text="a wide view\nSteps: 4, Seed: 1, Size: 64x64"))
    assert read_parameters_text(large).startswith("a wide view")
    # Without parameters, nothing that would decode the pixels is asked for (Pillow's PNG getexif would, to find
    # an eXIf chunk after them): the answer is that there are none, not that the pixels are damaged.
    bare = tmp_path / "bare.png"
    bare.write_bytes(_png(width=10_000, height=10_000, text="made with a camera", key=b"Comment"))
    with pytest.raises(StudioError, match="'bare.png' carries no generation parameters"):
        read_parameters_text(bare)
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png(width=2**31 - 1, height=200, text="x\nSteps: 1"))
    with pytest.raises(StudioError, match="'huge.png' declares a size too large"):
        read_parameters_text(huge)
    with pytest.raises(StudioError, match="No image was given"):
        read_parameters_text(None)


def _png(width: int, height: int, text: str, key: bytes = b"parameters") -> bytes:
    """A PNG file's chunks written by hand: a header, one text chunk, and IDAT data that is not an image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join([
        b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header), chunk(b"tEXt", key + b"\0" + text.encode("latin-1")),
        chunk(b"IDAT", b"no pixels here"), chunk(b"IEND", b""),
    ])


def test_a_hostile_upload_at_the_limit_is_answered_at_once(client, tmp_path):
    # 64 KiB without a colon took the old parser 28 s on this machine, holding the GIL: the server answered no one,
    # its own page included. Linear, it is a few milliseconds; the bound only tells the two apart.
    hostile = png_with_text(tmp_path / "hostile.png", parameters="x\n" + "a" * (MAX_PARAMETERS_CHARS - 2))
    start = time.perf_counter()
    _, answer = client.predict(image=handle_file(hostile), api_name="/png_info")
    assert time.perf_counter() - start < 5.0
    assert answer["mode"] == "text" and "its first 2000 are sent" in "\n".join(answer["notes"])


def test_a_text_past_the_limit_is_refused_by_name_before_it_is_parsed(tmp_path):
    # 5 MB in one chunk once kept a server busy for hours; now it is refused by its length, unparsed.
    path = png_with_text(tmp_path / "long.png", parameters="a" * 5_000_000 + "\nSteps: 1")
    start = time.perf_counter()
    with pytest.raises(StudioError, match=r"'long.png', 'parameters' text chunk: The parameters text has 5,000,009 "
                                          r"characters; the studio reads at most 65,536 in AUTOMATIC1111's layout"):
        read_parameters_text(path)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(StudioError, match="at most 65,536"):  # the preview and Send parse what the page sends back
        settings_from_parameters("a" * (MAX_PARAMETERS_CHARS + 1), SD15)
    comment = b"UNICODE\0" + ("a" * (MAX_PARAMETERS_CHARS + 1)).encode("utf-16-be")
    webp = exif_image(tmp_path / "long.webp", "WEBP", piexif_exif(comment))
    with pytest.raises(StudioError, match="'long.webp', EXIF UserComment: The parameters text has 65,537"):
        read_parameters_text(webp)
    big_exif = exif_image(tmp_path / "big.webp", "WEBP", piexif_exif(b"\0" * 8 + b"x" * MAX_EXIF_BYTES))
    with pytest.raises(StudioError, match=f"'big.webp' has [0-9,]+ bytes of EXIF data; the studio reads at most "
                                          f"{MAX_EXIF_BYTES:,}"):
        read_parameters_text(big_exif)


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
    assert updates[edge["seed"]] == 123 and updates[edge["width"]] == 40
    assert edge["image"] not in updates and edge["num_images"] not in updates


def test_send_and_preview_refuse_an_empty_text_and_preview_names_the_tab(studio, page):
    import gradio as gr

    from ui.png_info import preview_handler, send_handler

    _, tabs, fields = page
    with pytest.raises(gr.Error, match="Upload an image with generation parameters first"):
        send_handler(studio, tabs, fields)("  ")
    destination, rows, notes, button = preview_handler(studio)(A1111_CANNY)
    assert destination == "These settings go to the **Edge** tab." and button.value == "Send to Edge tab"
    assert ["Scheduler", "DPM++ 2M Karras"] in rows and ["Randomize seed", "no"] in rows
    assert "Size 512x768 has a side past 64 px" in notes


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
    sent = settings_from_parameters(read_parameters_text(str(tmp_path / "made.png")), tiny_studio.served)
    assert sent.mode == "edge"
    assert {key: sent.values[key] for key in ("preprocessor", "low_threshold", "high_threshold", "detect_resolution")} \
        == {"preprocessor": "canny", "low_threshold": 40, "high_threshold": 90, "detect_resolution": 128}


# Files in other tools' layouts, mapped against what a Stable Diffusion 1.5 model is served with by default.

LIMITS = Limits()
SD15 = Served(
    max_side=LIMITS.side_for(512), size_multiple=8, max_steps=LIMITS.max_steps, max_images=LIMITS.max_images,
    max_guidance=LIMITS.max_guidance, max_prompt_chars=LIMITS.max_prompt_chars, max_seed=MAX_SEED, resolution=512,
    default_steps=30, default_guidance=7.5, default_scheduler="Euler a", schedulers=tuple(scheduler_names()),
    family="sd15", modes=tuple(MODES),
)


def piexif_exif(comment: bytes, byte_order: str = ">") -> bytes:
    """EXIF as A1111 and Forge write it into a JPEG or WEBP (modules/images.py save_image_with_geninfo):
    piexif.dump({"Exif": {UserComment: comment}}), then piexif.insert. piexif's layout: "Exif\\0\\0", a big-endian
    TIFF header, IFD0 with only the Exif IFD pointer, then the Exif IFD with only UserComment (type UNDEFINED) and
    no next-IFD offset, its data right after. `byte_order` "<" is the same in a little-endian TIFF."""
    order = byte_order
    tiff = (b"MM" if order == ">" else b"II") + struct.pack(order + "HI", 42, 8)
    ifd0 = struct.pack(order + "H", 1) + struct.pack(order + "HHII", 0x8769, 4, 1, 8 + 18) + struct.pack(order + "I", 0)
    exif_ifd = struct.pack(order + "H", 1) + struct.pack(order + "HHII", 0x9286, 7, len(comment), 8 + 18 + 14)
    return b"Exif\0\0" + tiff + ifd0 + exif_ifd + comment


def a1111_user_comment(text: str) -> bytes:
    """piexif.helper.UserComment.dump(text, encoding="unicode"): "UNICODE\\0" and UTF-16, big-endian."""
    return b"UNICODE\0" + text.encode("utf-16-be")


def exif_image(path, image_format: str, exif: bytes) -> str:
    # Pillow writes a JPEG's APP1 segment as piexif.insert does, and drops "Exif\0\0" in a WEBP as it does.
    Image.new("RGB", (8, 8), "gray").save(path, format=image_format, exif=exif)
    return str(path)


def comfyui_png(path, prompt: dict, workflow: dict | None = None) -> str:
    """As ComfyUI's SaveImage node (nodes.py) saves: the API graph as the `prompt` text chunk, json.dumps'd, and
    the editor's graph as `workflow` (from extra_pnginfo)."""
    chunks = {"prompt": json.dumps(prompt)}
    if workflow is not None:
        chunks["workflow"] = json.dumps(workflow)
    return png_with_text(path, **chunks)


# ComfyUI's default graph with a LoRA loader between the checkpoint and the sampler, in the API format.
COMFYUI_GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "denoise": 1, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery, glass bottle", "clip": ["10", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["10", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "add_detail.safetensors", "strength_model": 0.8,
                                                  "strength_clip": 0.8, "model": ["4", 0], "clip": ["4", 1]}},
}
# The editor's own graph (a node list with widget values), which the studio does not read.
COMFYUI_WORKFLOW = {"last_node_id": 10, "last_link_id": 12, "nodes": [
    {"id": 3, "type": "KSampler", "widgets_values": [156680208700286, "fixed", 20, 8, "dpmpp_2m", "karras", 1]}],
    "links": [], "groups": [], "config": {}, "extra": {}, "version": 0.4}
# InvokeAI 5's `invokeai_metadata` chunk for an SD 1.5 text-to-image run.
INVOKEAI_METADATA = {
    "generation_mode": "txt2img", "positive_prompt": "a cat in a hat", "negative_prompt": "blurry", "width": 512,
    "height": 768, "seed": 4242, "rand_device": "cpu", "cfg_scale": 7.5, "cfg_rescale_multiplier": 0, "steps": 30,
    "scheduler": "euler_a", "model": {"key": "a1b2", "hash": "blake3:ffee", "name": "Dreamshaper 8", "base": "sd-1",
                                      "type": "main"},
    "loras": [{"model": {"key": "c3d4", "hash": "blake3:0011", "name": "add_detail", "base": "sd-1", "type": "lora"},
               "weight": 0.75}],
    "app_version": "5.4.2",
}


@pytest.mark.parametrize("image_format", ["JPEG", "WEBP"])
def test_a1111_jpeg_and_webp_carry_the_parameters_in_exif_user_comment(tmp_path, image_format):
    path = exif_image(tmp_path / f"castle.{image_format.lower()}", image_format,
                      piexif_exif(a1111_user_comment(A1111_CANNY)))
    text = read_parameters_text(path)
    assert text == A1111_CANNY
    settings = settings_from_parameters(text, SD15)
    assert (settings.mode, settings.source, settings.values["seed"]) == ("edge", "AUTOMATIC1111", 123)
    assert (settings.values["width"], settings.values["height"], settings.values["scheduler"]) == (
        512, 768, "DPM++ 2M Karras"
    )


def test_a_user_comment_in_little_endian_utf16_is_read_too(tmp_path):
    text = "a cat, ü\nSteps: 20, Seed: 5"
    path = exif_image(tmp_path / "le.jpg", "JPEG", piexif_exif(b"UNICODE\0" + text.encode("utf-16-le"), "<"))
    assert read_parameters_text(path) == text


def test_a_comfyui_png_maps_its_graph_to_the_text_tab(tmp_path):
    path = comfyui_png(tmp_path / "ComfyUI_00001_.png", COMFYUI_GRAPH, COMFYUI_WORKFLOW)
    text = read_parameters_text(path)
    assert json.loads(text) == COMFYUI_GRAPH  # the `prompt` chunk, not the `workflow`
    settings = settings_from_parameters(text, SD15)
    assert (settings.mode, settings.source) == ("text", "ComfyUI")
    assert settings.values == {
        "prompt": "beautiful scenery, glass bottle", "negative_prompt": "text, watermark",
        "loras": "add_detail.safetensors:0.8", "seed": 156680208700286 % 2**32, "randomize_seed": False,
        "steps": 20, "guidance_scale": 8.0, "scheduler": "DPM++ 2M Karras", "width": 512, "height": 768,
    }
    assert settings.notes == (
        f"Seed 156680208700286 is past {MAX_SEED}, the largest seed here: {156680208700286 % 2**32}, its remainder "
        "modulo 2**32, is sent, so the noise differs from the original's.",
        "Not used: Model: v1-5-pruned-emaonly.safetensors.",
    )


def test_a_comfyui_img2img_graph_goes_to_the_img2img_tab_with_its_denoise_as_strength(tmp_path):
    graph = json.loads(json.dumps(COMFYUI_GRAPH))
    graph["3"]["inputs"].update(denoise=0.55, latent_image=["12", 0], sampler_name="uni_pc", scheduler="normal")
    graph["11"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png", "upload": "image"}}
    graph["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["11", 0], "vae": ["4", 2]}}
    settings = settings_from_parameters(read_parameters_text(comfyui_png(tmp_path / "i2i.png", graph)), SD15)
    assert settings.mode == "img2img"
    assert (settings.values["strength"], settings.values["scheduler"]) == (0.55, "UniPC")
    assert "width" not in settings.values  # the size is the source image's
    notes = "\n".join(settings.notes)
    assert "a PNG holds no source image; give the tab one" in notes and "LoadImage (node 11)" in notes


def test_a_comfyui_png_with_only_its_workflow_says_what_is_missing(tmp_path):
    path = png_with_text(tmp_path / "editor.png", workflow=json.dumps(COMFYUI_WORKFLOW))
    with pytest.raises(StudioError, match="holds a ComfyUI 'workflow' chunk but not the API-format 'prompt' chunk"):
        read_parameters_text(path)


def test_an_invokeai_png_maps_its_metadata(tmp_path):
    # InvokeAI writes `invokeai_metadata` beside `invokeai_graph` and `invokeai_workflow`, which are not read.
    path = png_with_text(tmp_path / "invoke.png", invokeai_metadata=json.dumps(INVOKEAI_METADATA),
                         invokeai_graph=json.dumps({"id": "graph", "nodes": {}, "edges": []}))
    settings = settings_from_parameters(read_parameters_text(path), SD15)
    assert (settings.mode, settings.source) == ("text", "InvokeAI")
    assert settings.values == {
        "prompt": "a cat in a hat", "negative_prompt": "blurry", "loras": "add_detail:0.75", "seed": 4242,
        "randomize_seed": False, "steps": 30, "guidance_scale": 7.5, "scheduler": "Euler a", "width": 512,
        "height": 768,
    }
    assert settings.notes == ("Not used: Model: Dreamshaper 8; rand_device: cpu; cfg_rescale_multiplier: 0; "
                              "app_version: 5.4.2.",)


def test_other_tools_files_through_the_endpoint(client, tmp_path):
    jpeg = exif_image(tmp_path / "castle.jpg", "JPEG", piexif_exif(a1111_user_comment(A1111_CANNY)))
    text, answer = client.predict(image=handle_file(jpeg), api_name="/png_info")
    assert text == A1111_CANNY and answer["mode"] == "edge"  # Gradio hands the file over with its EXIF
    text, answer = client.predict(image=handle_file(comfyui_png(tmp_path / "comfy.png", COMFYUI_GRAPH,
                                                                COMFYUI_WORKFLOW)), api_name="/png_info")
    assert json.loads(text) == COMFYUI_GRAPH
    assert (answer["source"], answer["values"]["prompt"], answer["values"]["steps"]) == (
        "ComfyUI", "beautiful scenery, glass bottle", 20
    )


# Values the studio cannot use: each becomes a note and the nearest value it serves, never a refused one.


@pytest.mark.parametrize(
    ("settings_line", "expected", "note"),
    [
        ("Seed: -1", {"randomize_seed": True}, "Seed -1 means a new random seed for every run: Randomize seed is on"),
        ("Seed: -5", {"randomize_seed": True}, "Seed -5 means a new random seed"),
        (f"Seed: {2**64 - 2}", {"seed": 2**32 - 2, "randomize_seed": False}, "its remainder modulo 2**32"),
        ("Steps: 2000", {"steps": 100}, "Steps 2000 is outside 1 to 100 here: 100 is sent instead."),
        ("Steps: 0", {"steps": 1}, "Steps 0 is outside 1 to 100 here: 1 is sent instead."),
        ("CFG scale: 45", {"guidance_scale": 30.0}, "Guidance scale 45 is outside 0 to 30 here: 30 is sent"),
        ("Size: 513x2000", {"width": 256, "height": 1024}, "scaled down, keeping its shape: 256x1024 is sent"),
        ("Size: 515x770", {"width": 512, "height": 768}, "is not in multiples of 8 px, as the model needs"),
        ("Size: 4x4", {"width": 8, "height": 8}, "has a side under 8 px"),
        ("Sampler: DPM++ SDE", {}, "Sampler 'DPM++ SDE' was not used: the studio offers Euler a"),
        ("Sampler: Euler, Schedule type: SGM Uniform", {"scheduler": "Euler SGM Uniform"}, ""),
        ("Sampler: Euler, Schedule type: Karras", {"scheduler": "Euler"}, "Not used: Schedule type: Karras."),
    ],
)
def test_a_value_outside_what_is_served_becomes_a_served_value_and_a_note(settings_line, expected, note):
    settings = settings_from_parameters(f"a cat\nSteps: 20, {settings_line}", SD15)
    if "Steps" in settings_line.partition(":")[0]:
        settings = settings_from_parameters(f"a cat\n{settings_line}, Sampler: Euler a", SD15)
    assert {name: settings.values.get(name) for name in expected} == expected
    if "scheduler" not in expected and "Sampler" in settings_line:
        assert "scheduler" not in settings.values  # the tab keeps its own
    assert note in "\n".join(settings.notes)


def test_controlnet_settings_validation_would_refuse_are_put_in_order(studio):
    text = ('x\nSteps: 20, ControlNet 0: "Module: canny, Model: control_canny, Weight: 9, Guidance Start: 0.8, '
            'Guidance End: 0.2, Processor Res: 512, Threshold A: 220, Threshold B: 40", ControlNet 1: "Module: '
            'depth_midas, Model: depth, Weight: -3, Guidance Start: 1, Guidance End: 1", ControlNet 2: "Module: '
            'openpose, Model: pose", ControlNet 3: "Module: canny, Model: canny"')
    settings = settings_from_parameters(text, SD15)
    values, notes = settings.values, "\n".join(settings.notes)
    assert (values["controlnet_scale"], values["control_start"], values["control_end"]) == (2.0, 0.0, 1.0)
    assert (values["low_threshold"], values["high_threshold"]) == (40, 220)
    assert values["control_units"] == [
        {"mode": "depth", "preprocessor": "midas", "scale": 0.0, "start": 0.0, "end": 1.0},
        {"mode": "pose", "preprocessor": "openpose", "scale": 1.0, "start": 0.0, "end": 1.0},
    ]
    assert "ControlNet 0: the guidance start 0.8 is not below its end 0.2; 0 to 1 is sent instead." in notes
    assert "Threshold A 220 is above Threshold B 40; they are sent swapped." in notes
    assert "ControlNet 3 was not used: at most 3 ControlNets run at once." in notes


def test_text_the_studio_refuses_is_cut_or_cleaned_with_a_note():
    long_prompt = "a very long prompt " * 200  # 3,800 characters
    invoke = {**INVOKEAI_METADATA, "positive_prompt": long_prompt, "negative_prompt": "nul\u0000 and \ud800 half"}
    settings = settings_from_parameters(json.dumps(invoke), SD15)
    assert settings.values["prompt"] == long_prompt[:2000]
    assert settings.values["negative_prompt"] == "nul and  half"
    notes = "\n".join(settings.notes)
    assert "Prompt has 3,800 characters, more than the 2000 served: its first 2000 are sent." in notes
    assert "Negative prompt had NUL characters or halves of surrogate pairs; they were removed." in notes


@pytest.mark.parametrize(
    "text",
    [
        "a <lora:x:9> <lora:x:1.5> <lora:y:-7>\nSteps: 900, CFG scale: -2, Seed: -1, Size: 4000x3, Sampler: Heun",
        f"b\nSteps: 0, Seed: {2**70}, Size: 7x7, Sampler: DPM++ 2M, Schedule type: Karras, Denoising strength: 3",
        json.dumps({**COMFYUI_GRAPH, "5": {"class_type": "EmptyLatentImage",
                                           "inputs": {"width": 8192, "height": 100, "batch_size": 64}}}),
        json.dumps({**INVOKEAI_METADATA, "steps": 10**6, "seed": -3, "cfg_scale": 1e9, "scheduler": "heun_k"}),
        # Whole numbers of 400 digits, past any float
        f"c <lora:a:1{'0' * 400}>\nSteps: 1{'0' * 400}, Size: 1{'0' * 400}x5, Seed: 1{'0' * 400}",
        json.dumps({**COMFYUI_GRAPH, "10": {"class_type": "LoraLoader", "inputs": {
            "lora_name": "a", "strength_model": 10**400, "strength_clip": 10**400, "model": ["4", 0]}}}),
    ],
)
def test_what_png_info_sends_passes_the_checks_generate_makes(text):
    settings = settings_from_parameters(text, SD15)
    request = GenerationRequest(mode=settings.mode, **settings.values,
                                **({"image": Image.new("RGB", (8, 8))} if MODES[settings.mode].edits else {}))
    validate_request(request, SD15)  # raises StudioError for any value Generate would refuse


def test_more_loras_than_run_at_once_are_cut_with_a_note(tiny_studio):
    from pipelines.validation import MAX_LORAS

    text = format_parameters("a red circle", "", {"Steps": 20, "Seed": 1}, [(f"style{i}", 0.5) for i in range(10)])
    settings = settings_from_parameters(text, tiny_studio.served)
    assert settings.values["loras"].count(":") == MAX_LORAS
    assert any("style8:0.5, style9:0.5" in note for note in settings.notes)
