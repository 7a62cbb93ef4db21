"""The Explore tab's endpoints through the real client: /denoise_timeline, /forward_noise and /sweep.

Every parameter's wrong types, NaN and out-of-range values are in test_api_bad_inputs.py (its cases come from the
declarations); here are what each endpoint returns, huge values, and images that are missing or broken.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN = dict(prompt="a red circle on a blue background", seed=5, steps=4, guidance_scale=3.0)


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_the_timeline_returns_its_frames_in_order_and_ends_on_the_text_tabs_image(client):
    samples, predicted, animation, info = client.predict(**RUN, keep_every=2, api_name="/denoise_timeline")
    for strip, kind in ((samples, "sample"), (predicted, "predicted x0")):
        assert [frame["caption"].split(", t=")[0] for frame in strip] == [f"{kind}, step 2/4", f"{kind}, step 4/4"]
    with Image.open(animation) as gif:
        assert gif.format == "GIF" and gif.n_frames == 2
    gallery, *_ = client.predict(**RUN, randomize_seed=False, api_name="/text2img")
    assert np.array_equal(pixels(samples[-1]["image"]), pixels(gallery[0]["image"]))
    assert "seed 5" in info


def test_forward_noise_returns_the_image_noised_in_latent_and_pixel_space(client, edge_map):
    latent_view, pixel_view, alpha_plot, snr_plot, info = client.predict(
        clean_image=handle_file(edge_map), schedule="cosine", timestep=400, api_name="/forward_noise"
    )
    assert pixels(latent_view).shape == pixels(pixel_view).shape == (32, 32, 3)  # the model's own size
    assert "t = 400" in info and "alpha-bar" in info


@pytest.mark.parametrize(("sweep", "columns"), [("guidance scale", 2), ("steps", 2), ("samplers", 2)])
def test_a_sweep_returns_a_labelled_grid_and_a_figure_per_cell(client, sweep, columns):
    grid, table, notes = client.predict(
        sweep=sweep, prompt=RUN["prompt"], seed=1, steps=2, guidance_scales="1, 3", step_counts="1, 2",
        api_name="/sweep",
    )
    rows = 2 if sweep == "samplers" else 1
    with Image.open(grid) as image:
        assert image.format == "PNG" and {f"parameters r{rows - 1} c{columns - 1}"} <= image.text.keys()
    figures = {(row, column) for row, column, _, _ in table["data"]}
    assert len(figures) == rows * columns


@pytest.mark.parametrize(
    ("endpoint", "arguments", "named"),
    [
        ("/forward_noise", dict(timestep=10**9), "Timestep t"),
        ("/forward_noise", dict(seed=2**70), "Seed"),
        ("/denoise_timeline", dict(keep_every=10**7), "Keep every k-th step"),
        ("/denoise_timeline", dict(steps=10**6), "Steps"),
        ("/sweep", dict(step_counts="100000"), "Step counts"),
        ("/sweep", dict(guidance_scales="1e9"), "Guidance scales"),
        ("/sweep", dict(guidance_scales=", ".join(["1"] * 50)), "Guidance scales"),
        ("/sweep", dict(sweep="everything"), "Sweep"),
    ],
)
def test_huge_values_are_refused_naming_the_field(client, endpoint, arguments, named):
    with pytest.raises(AppError, match=named):
        client.predict(**arguments, api_name=endpoint)


def test_forward_noise_without_a_usable_image_says_so(client, tmp_path):
    with pytest.raises(AppError, match="No image to noise"):
        client.predict(clean_image=None, api_name="/forward_noise")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(AppError, match="broken.png"):
        client.predict(clean_image=handle_file(str(broken)), api_name="/forward_noise")
    latent_view, *_ = client.predict(clean_image=handle_file(str(_a_picture(tmp_path))), api_name="/forward_noise")
    assert pixels(latent_view).shape == (32, 32, 3)  # and it still serves


def _a_picture(folder):
    path = folder / "picture.png"
    Image.new("RGB", (48, 40), (200, 40, 40)).save(path)
    return path
