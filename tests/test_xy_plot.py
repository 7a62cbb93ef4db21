"""The LoRA lab's X/Y plot: any two settings against each other, every cell the image its request gives alone,
each axis's values checked by its own parameter's declaration."""

from __future__ import annotations

import numpy as np
import pytest

from embedded.synthetic_loras import lora_tensors, write_lora
from pipelines.endpoints import XY_PLOT
from pipelines.errors import StudioError
from pipelines.metadata import parse_parameters
from pipelines.request import GenerationRequest
from pipelines.settings import Settings
from pipelines.xy import render_xy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def studio(tiny_sd_dir, tmp_path_factory):
    from pipelines.studio import Studio

    folder = tmp_path_factory.mktemp("xy-loras")
    studio = Studio(Settings(model=str(tiny_sd_dir), lora_dir=str(folder), device="cpu"))
    write_lora(folder / "ink.safetensors", lora_tensors(studio.base, seed=3))
    return studio


def plot(**arguments):
    return XY_PLOT.request({"prompt": "a red circle", "steps": 2, **arguments})


def test_every_cell_is_the_image_its_request_gives_alone(studio):
    result = render_xy(studio, plot(x_axis="seed", x_values="1, 2", y_axis="guidance", y_values="1, 4"))
    assert [(cell.row_label, cell.column_label) for cell in result.cells] == [
        ("guidance 1", "seed 1"), ("guidance 1", "seed 2"), ("guidance 4", "seed 1"), ("guidance 4", "seed 2")]
    for cell in result.cells:
        guidance, seed = float(cell.row_label.split()[1]), int(cell.column_label.split()[1])
        alone = studio.generate(GenerationRequest(prompt="a red circle", steps=2, seed=seed, guidance_scale=guidance))
        difference = np.abs(np.asarray(cell.image, np.int16) - np.asarray(alone.images[0], np.int16))
        assert difference.max() <= 1  # a batch of seeds rounds at most one level of 255 differently
    assert parse_parameters(result.image.info["parameters r1 c1"])["Seed"] == "2"


def test_prompt_sr_replaces_its_first_value_and_lora_weight_changes_every_lora(studio):
    result = render_xy(studio, plot(x_axis="prompt S/R", x_values="red, blue", y_axis="LoRA weight",
                                    y_values="0-1 step 1", loras="ink:0.5"))
    texts = {(cell.row, cell.column): cell.parameters for cell in result.cells}
    assert texts[(0, 1)].startswith("a blue circle") and texts[(0, 0)].startswith("a red circle")
    assert "ink:0>" in texts[(0, 0)] or "ink:0," in texts[(0, 0)] or "<lora:ink:0>" in texts[(0, 0)]
    assert [cell.row_label for cell in result.cells[::2]] == ["weight 0", "weight 1"]


@pytest.mark.parametrize(("arguments", "words"), [
    (dict(x_axis="seed", x_values="1", y_axis="seed", y_values="2"), "must differ"),
    (dict(x_axis="LoRA weight", x_values="0, 1", y_axis="seed", y_values="1"), "name at least one"),
    (dict(x_axis="prompt S/R", x_values="green, blue", y_axis="seed", y_values="1"), "not in the prompt"),
    (dict(x_axis="sampler", x_values="DDIM, Bogus", y_axis="seed", y_values="1"), "X values must be one of"),
    (dict(x_axis="seed", x_values="1-8 step 1", y_axis="guidance", y_values="1-7 step 1"), "56 images; the limit"),
    (dict(x_axis="steps", x_values="1, 1000", y_axis="seed", y_values="1"), "X values must be a whole number"),
    (dict(x_axis="colour", x_values="1", y_axis="seed", y_values="1"), "X axis must be one of: LoRA weight"),
    (dict(x_axis="sampler", x_values="DDIM," * 500_000, y_axis="seed", y_values="1"), "the limit is 2000"),
])
def test_a_plot_that_cannot_be_made_is_refused_by_name(studio, arguments, words):
    with pytest.raises(StudioError) as refused:
        XY_PLOT.validate(plot(**arguments), studio.served)
    assert words in str(refused.value)
