"""img2img and inpainting on tiny random SD1.5 and SDXL models, in the studio and through the API."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import UNet2DConditionModel
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw

from embedded.tiny_models import build_tiny_controlnet, build_tiny_sdxl_pipeline
from pipelines.editing import edit_inputs, size_for_picture, through_the_vae
from pipelines.endpoints import validate_request
from pipelines.errors import StudioError
from pipelines.metadata import parse_parameters
from pipelines.png_info import settings_from_parameters
from pipelines.request import ControlUnit, GenerationRequest
from pipelines.settings import Settings
from pipelines.studio import Studio

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(prompt="a red circle", steps=4, seed=3)


def start_image(size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (30, 60, 200))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 40, 40))
    return image


def left_half_mask(size: int = 32) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, size // 2 - 1, size - 1), fill=255)
    return mask


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_img2img_at_strength_0_is_the_vae_round_trip_and_1_ignores_the_image(tiny_studio):
    start = start_image()
    kept = tiny_studio.generate(GenerationRequest(mode="img2img", image=start, strength=0.0, **FAST))
    pipe = tiny_studio.pipeline_for("img2img")
    assert np.array_equal(pixels(kept.images[0]), pixels(through_the_vae(pipe, start)))
    other_start = Image.new("RGB", start.size, "yellow")
    ignored = [tiny_studio.generate(GenerationRequest(mode="img2img", image=image, strength=1.0, **FAST))
               for image in (start, other_start)]
    # at strength 1 the start image survives only in the last bits: the first step's noise level is not infinite
    assert np.abs(pixels(ignored[0].images[0]) - pixels(ignored[1].images[0])).mean() < 1
    halfway = [tiny_studio.generate(GenerationRequest(mode="img2img", image=image, strength=0.5, **FAST))
               for image in (start, other_start)]
    assert np.abs(pixels(halfway[0].images[0]) - pixels(halfway[1].images[0])).mean() > 2  # the start shows through
    halfway = halfway[0]
    assert parse_parameters(halfway.parameters[0])["Denoising strength"] == "0.5"


def test_editing_pipelines_share_the_base_weights(tiny_studio):
    base = tiny_studio.base
    for mode in ("img2img", "inpaint"):
        pipe = tiny_studio.pipeline_for(mode)
        assert (pipe.unet, pipe.vae, pipe.text_encoder) == (base.unet, base.vae, base.text_encoder), mode


@pytest.mark.parametrize("blur", [0, 4])
def test_inpainting_keeps_every_pixel_outside_the_mask(tiny_studio, blur):
    request = GenerationRequest(mode="inpaint", image=start_image(), mask=left_half_mask(), mask_blur=blur, **FAST)
    result = tiny_studio.generate(request)
    mask = np.asarray(edit_inputs(result.request, max_pixels=10**6).mask)
    out, start = pixels(result.images[0]), pixels(start_image())
    kept = mask == 0
    assert kept.sum() >= 32 * (16 - 3 * blur) and np.array_equal(out[kept], start[kept])
    assert np.abs(out[~kept] - start[~kept]).mean() > 5  # the masked half was repainted
    parsed = parse_parameters(result.parameters[0])
    assert (parsed["Mask blur"], parsed["Masked content"], parsed["Mode"]) == (str(blur), "original", "inpaint")


def test_noise_as_masked_content_is_strength_1_there(tiny_studio):
    common = dict(mode="inpaint", image=start_image(), mask=left_half_mask(), **FAST)
    noise = tiny_studio.generate(GenerationRequest(masked_content="noise", strength=0.3, **common))
    full = tiny_studio.generate(GenerationRequest(strength=1.0, **common))
    assert np.array_equal(pixels(noise.images[0]), pixels(full.images[0]))


def test_an_all_black_mask_is_refused_by_name(tiny_studio):
    empty = Image.new("L", (32, 32), 0)
    with pytest.raises(StudioError, match=r"mask \(mask\) has no white or light part"):
        tiny_studio.generate(GenerationRequest(mode="inpaint", image=start_image(), mask=empty, **FAST))
    with pytest.raises(StudioError, match="No mask was given"):
        tiny_studio.generate(GenerationRequest(mode="inpaint", image=start_image(), **FAST))


def wide_picture() -> Image.Image:
    """96x64: a red disc in a 64x64 middle, yellow bars in the 16 px at each side."""
    picture = start_image(64)
    wide = Image.new("RGB", (96, 64), "yellow")
    wide.paste(picture, (16, 0))
    return wide


def test_a_start_image_of_another_shape_is_cropped_as_its_control_map_is_and_the_result_says_so(tiny_studio):
    request = GenerationRequest(mode="img2img", image=wide_picture(), strength=0.5, width=32, height=32,
                                control_units=(ControlUnit("edge", wide_picture(), preprocessor="none"),), **FAST)
    start = pixels(edit_inputs(validate_request(request, tiny_studio.served)[0], max_pixels=10**6).start)
    assert np.abs(start - pixels(start_image(32))).mean() < 12  # the middle, undistorted: no yellow bars
    result = tiny_studio.generate(request)
    control_map = pixels(result.control_map)
    assert np.abs(control_map - start).mean() < 12  # the start image and the map line up
    cropped = "was cropped at its centre to 64x64, the shape of the 32x32 output"
    assert any(note.startswith("The start image, 96x64, " + cropped) for note in result.notes), result.notes
    assert any("control unit 0 (edge), 96x64, " + cropped in note for note in result.notes), result.notes


def test_a_mask_may_differ_in_resolution_but_not_in_shape(tiny_studio):
    request = dict(mode="inpaint", image=start_image(64), width=32, height=32, **FAST)
    half = edit_inputs(GenerationRequest(mask=left_half_mask(16), mask_blur=0, **request), max_pixels=10**6).mask
    assert np.array_equal(np.asarray(half), np.asarray(left_half_mask(32)))
    with pytest.raises(StudioError, match=r"mask \(mask\) is 16x32 and the image 64x64"):
        tiny_studio.generate(GenerationRequest(mask=left_half_mask(32).resize((16, 32)), **request))


def test_png_info_sends_strength_and_mask_blur_back(tiny_studio):
    result = tiny_studio.generate(
        GenerationRequest(mode="inpaint", image=start_image(), mask=left_half_mask(), strength=0.6, mask_blur=2, **FAST)
    )
    read = settings_from_parameters(result.parameters[0], tiny_studio.served)
    assert read.mode == "inpaint"
    assert (read.values["strength"], read.values["mask_blur"], read.values["masked_content"]) == (0.6, 2, "original")
    a1111 = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.4"
    assert settings_from_parameters(a1111, tiny_studio.served).mode == "img2img"


def test_strength_is_checked_by_name(tiny_studio):
    with pytest.raises(StudioError, match=r"Denoising strength \(strength\) must be a number from 0 to 1"):
        validate_request(GenerationRequest(mode="img2img", image=start_image(), strength=1.5), tiny_studio.served)


@pytest.fixture(scope="module")
def tiny_sdxl_studio(tmp_path_factory) -> Studio:
    folder = tmp_path_factory.mktemp("sdxl")
    build_tiny_sdxl_pipeline(folder / "xl")
    edge = build_tiny_controlnet(UNet2DConditionModel.from_pretrained(folder / "xl" / "unet"), folder / "edge", seed=1)
    settings = Settings(model=str(folder / "xl"), lora_dir=str(folder), device="cpu", controlnets={"edge": str(edge)})
    return Studio(settings)


@pytest.mark.parametrize("mode", ["text", "edge", "img2img", "inpaint"])
def test_sdxl_serves_every_kind_of_mode(tiny_sdxl_studio, mode):
    extra = {
        "text": {},
        "edge": dict(image=start_image(), preprocessor="none"),
        "img2img": dict(image=start_image(), strength=0.5),
        "inpaint": dict(image=start_image(), mask=left_half_mask()),
    }[mode]
    result = tiny_sdxl_studio.generate(GenerationRequest(mode=mode, **extra, **FAST))
    assert tiny_sdxl_studio.model.family == "sdxl" and result.images[0].size == (32, 32)
    if mode == "inpaint":
        kept = np.asarray(edit_inputs(result.request, max_pixels=10**6).mask) == 0
        assert np.array_equal(pixels(result.images[0])[kept], pixels(start_image())[kept])


def test_img2img_and_inpaint_through_the_api(client, tmp_path):
    start_image().save(tmp_path / "start.png")
    left_half_mask().save(tmp_path / "mask.png")
    gallery, _, seed, info = client.predict(
        image=handle_file(str(tmp_path / "start.png")), strength=0.5, **FAST, api_name="/img2img"
    )
    assert seed == 3 and "Denoising strength: 0.5" in info
    gallery, _, _, info = client.predict(
        image=handle_file(str(tmp_path / "start.png")), mask=handle_file(str(tmp_path / "mask.png")), mask_blur=0,
        **FAST, api_name="/inpaint",
    )
    out = pixels(Image.open(gallery[0]["image"]))
    assert np.array_equal(out[:, 16:], pixels(start_image())[:, 16:])  # without a blur, no seam
    with pytest.raises(AppError, match="No mask was given"):
        client.predict(image=handle_file(str(tmp_path / "start.png")), **FAST, api_name="/inpaint")
    with pytest.raises(AppError, match="Masked content must be one of: original, noise"):
        client.predict(image=handle_file(str(tmp_path / "start.png")), mask=handle_file(str(tmp_path / "mask.png")),
                       masked_content="zeros", **FAST, api_name="/inpaint")


@pytest.mark.parametrize(
    ("picture", "area", "maximum", "expected"),
    [
        ((768, 512), 64 * 64, 128, (72, 48)),  # 3:2 exactly, at a little less area
        ((512, 768), 64 * 64, 128, (48, 72)),
        ((4032, 3024), 512 * 512, 1024, (576, 432)),  # a phone photo's 4:3
        ((64, 64), 64 * 64, 128, (64, 64)),
        ((4000, 100), 64 * 64, 128, (128, 8)),  # as near 40:1 as the limits go
    ],
)
def test_an_edit_takes_its_pictures_shape(picture, area, maximum, expected):
    assert size_for_picture(picture, area, 8, maximum) == expected


def test_the_page_sizes_an_edit_from_the_picture_upright(tmp_path):
    from ui.modes import ORIENTATION, picture_size

    exif = Image.Exif()
    exif[ORIENTATION] = 6  # taken turned: shown 512 wide and 768 tall
    Image.new("RGB", (768, 512)).save(tmp_path / "turned.jpg", exif=exif)
    assert picture_size(str(tmp_path / "turned.jpg"), 64 * 64, 8, 128) == (48, 72)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    for nothing in (None, str(tmp_path / "broken.png")):
        assert all(isinstance(update, dict) for update in picture_size(nothing, 64 * 64, 8, 128))  # left as they are


def test_a_cut_out_on_transparency_is_edited_on_white_while_its_mask_reads_black():
    cut_out = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(cut_out).ellipse((8, 8, 24, 24), fill=(220, 40, 40, 255))
    strokes = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # a mask painted as white strokes on a clear layer
    ImageDraw.Draw(strokes).rectangle((0, 0, 15, 31), fill=(255, 255, 255, 255))
    request = GenerationRequest(mode="inpaint", image=cut_out, mask=strokes, mask_blur=0, width=32, height=32, **FAST)
    inputs = edit_inputs(request, max_pixels=10**6)
    assert pixels(inputs.start)[0, 0].tolist() == [255, 255, 255]
    assert pixels(inputs.start)[16, 16].tolist() == [220, 40, 40]
    assert np.array_equal(np.asarray(inputs.mask), np.asarray(left_half_mask()))
