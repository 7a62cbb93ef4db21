"""Every example a tab shows for the embedded model shows what its prompt says, with its own fixed seed and the
tab's default settings, judged by the embedded model's measures (the background's and the object's colours, the
object's shape, a style's own measure). An example with a random seed promised "a yellow triangle on a purple
background" and painted a white smudge."""

from __future__ import annotations

import numpy as np
import pytest

from embedded import world
from embedded.evaluation import load, shows_its_prompt
from pipelines.modes import MODES
from ui.examples import example_requests

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def studio():
    return load()


@pytest.mark.parametrize("mode", list(MODES))
def test_every_example_of_the_tab_shows_its_prompt(studio, mode):
    requests = example_requests(studio, mode)
    assert requests
    for request in requests:
        image = np.asarray(studio.generate(request).images[0])
        assert shows_its_prompt(image, request.prompt) == [], (request.prompt, request.seed, request.preprocessor)


def test_the_judge_passes_the_worlds_own_pictures_and_fails_the_wrong_ones():
    for seed in range(world.EVALUATION_SEED_OFFSET, world.EVALUATION_SEED_OFFSET + 12):
        for style in (None, "stripes", "mono"):
            scene = world.make_scene(seed, style=style)
            assert shows_its_prompt(scene.image, scene.caption) == [], scene.caption
    scene = world.make_scene(world.EVALUATION_SEED_OFFSET, "object", colour="red", background="blue", shape="circle")
    assert "the object is red, not green" in shows_its_prompt(scene.image, "a green circle on a blue background")
    assert "the background is blue, not white" in shows_its_prompt(scene.image, "a red circle on a white background")
    assert any("stripe energy" in problem for problem in shows_its_prompt(scene.image, f"zkstripes, {scene.caption}"))
