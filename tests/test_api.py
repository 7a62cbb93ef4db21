"""The four endpoints through the real client, against a launched app."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from pipelines.metadata import parse_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMON = dict(prompt="a red circle on a blue background", negative_prompt="", seed=5, steps=2, guidance_scale=3.0)


def test_text2img_returns_png_images_with_parameters_and_the_seed(client):
    gallery, control_map, seed, info = client.predict(**COMMON, randomize_seed=False, api_name="/text2img")
    assert seed == 5 and control_map is None
    image = Image.open(gallery[0]["image"])
    assert image.format == "PNG" and image.size == (32, 32)
    parsed = parse_parameters(image.info["parameters"])
    assert (parsed["Seed"], parsed["Steps"], parsed["CFG scale"]) == ("5", "2", "3.0")


def test_an_api_callers_seed_is_used_unless_they_ask_for_a_random_one(client):
    _, _, seed, _ = client.predict(prompt="a red circle", seed=7, steps=1, api_name="/text2img")
    _, _, random_seed, _ = client.predict(prompt="a red circle", seed=7, randomize_seed=True, steps=1,
                                          api_name="/text2img")
    assert seed == 7 and random_seed != 7


@pytest.mark.parametrize("api_name", ["/pose2img", "/edge2img", "/depth2img"])
def test_control_endpoints_return_images_and_the_control_map(client, edge_map, api_name):
    gallery, control_map, seed, _ = client.predict(
        image=handle_file(edge_map), preprocessor="none", **COMMON, randomize_seed=False, api_name=api_name
    )
    assert len(gallery) == 1 and seed == 5
    used = np.asarray(Image.open(control_map).convert("L"))
    assert used.shape == (32, 32) and used.max() == 255


def test_edge2img_with_canny_on_a_photo(client, tmp_path):
    from skimage import data

    photo = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(photo)
    _, control_map, _, _ = client.predict(
        image=handle_file(str(photo)), preprocessor="canny", low_threshold=50, high_threshold=150, **COMMON,
        api_name="/edge2img",
    )
    edges = np.asarray(Image.open(control_map).convert("L"))
    assert set(np.unique(edges)) <= {0, 255} and edges.mean() > 1


def test_errors_reach_the_api_caller_and_the_server_keeps_serving(client, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="No edge image"):
        client.predict(image=None, **COMMON, api_name="/edge2img")
    with pytest.raises(AppError, match="Steps must be a whole number from 1 to 100; got 100000"):
        client.predict(**{**COMMON, "steps": 100_000}, api_name="/text2img")
    with pytest.raises(AppError, match="Seed must be a whole number from 0 to 4294967295"):
        client.predict(**{**COMMON, "seed": 2**40}, randomize_seed=False, api_name="/text2img")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(AppError, match="broken.png"):
        client.predict(image=handle_file(str(broken)), **COMMON, api_name="/depth2img")
    gallery, *_ = client.predict(**COMMON, api_name="/text2img")
    assert gallery
