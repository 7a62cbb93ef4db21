"""The synthetic world, the CLIP tokenizer and the classical measures, checked on the world's ground truth."""

import numpy as np
import pytest

from embedded import evaluation, measures, world
from embedded.tokenizer import write_tokenizer_folder

EVAL = world.EVALUATION_SEED_OFFSET


def test_scenes_are_deterministic_by_seed():
    first, second = world.make_scene(EVAL + 3), world.make_scene(EVAL + 3)
    assert first.caption == second.caption
    assert np.array_equal(first.image, second.image)
    assert not np.array_equal(first.image, world.make_scene(EVAL + 4).image)


def test_caption_describes_the_scene():
    scene = world.make_scene(EVAL, "object", colour="red", shape="circle", background="blue")
    assert scene.caption == "a red circle on a blue background"
    person = world.make_scene(EVAL, "person", colour="green", pose_name="the left arm raised")
    assert person.caption.startswith("a person in a green shirt with the left arm raised")


def test_control_maps_follow_the_preprocessor_conventions():
    scene = world.make_scene(EVAL + 1, "object")
    for control in (scene.image, scene.edge, scene.depth, scene.pose):
        assert control.shape == (world.RESOLUTION, world.RESOLUTION, 3) and control.dtype == np.uint8
    assert set(np.unique(scene.edge)) <= {0, 255}  # white edges on black
    assert scene.depth[scene.mask].mean() > scene.depth[~scene.mask].mean() + 80  # near is bright
    person = world.make_scene(EVAL + 2, "person")
    assert person.pose.max() > 100 and (person.pose.sum(axis=-1) == 0).mean() > 0.8  # coloured limbs on black


def test_held_out_pairs_never_appear_in_training_scenes():
    for seed in range(200):
        scene = world.make_scene(seed, "object", allow_held_out=False)
        assert (scene.colour, scene.shape) not in world.HELD_OUT_PAIRS


def test_tokenizer_ids_match_open_clip(tmp_path):
    tokenizer = write_tokenizer_folder(tmp_path)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77


@pytest.mark.parametrize("index", range(40))
def test_colour_shape_and_mask_measures_on_ground_truth(index):
    scene = world.make_scene(EVAL + index, "object")
    mask = measures.object_mask(scene.image)
    assert measures.iou(mask, scene.mask) > 0.85
    assert measures.object_colour(scene.image) == scene.colour
    own_error = measures.colour_error(scene.image, scene.colour)
    assert own_error < 60 and all(own_error < measures.colour_error(scene.image, other)
                                  for other in world.COLOURS if other != scene.colour)
    assert measures.shape_of(mask) == scene.shape
    assert measures.iou(measures.edge_outlined_mask(scene.edge), scene.mask) > 0.7
    assert measures.iou(measures.depth_foreground(scene.depth), scene.mask) > 0.8


def test_measures_reject_what_is_not_there():
    flat = np.full((64, 64, 3), world.COLOURS["blue"], np.uint8)
    assert not measures.object_mask(flat).any()
    assert measures.shape_of(measures.object_mask(flat)) == "none"
    assert measures.colour_error(flat, "blue") == measures.MAX_RGB_DISTANCE
    scene = world.make_scene(EVAL, "object", shape="circle")
    assert measures.iou(measures.object_mask(scene.image), np.roll(scene.mask, 20, axis=1)) < 0.5


def test_limb_coverage_on_ground_truth_and_on_a_wrong_pose():
    scenes = [world.make_scene(EVAL + 50 + i, "person") for i in range(10)]
    for scene in scenes:
        assert measures.limb_coverage(measures.figure_mask(scene.image), scene.keypoints) == 1.0
    raised = world.make_scene(EVAL, "person", pose_name="arms raised")
    down = world.make_scene(EVAL, "person", pose_name="arms down")
    assert measures.limb_coverage(measures.figure_mask(down.image), raised.keypoints) < 0.85


def test_style_measures_see_the_styles():
    for index in range(5):
        plain = world.make_scene(EVAL + index, "object")
        stripes = world.make_scene(EVAL + index, "object", style="stripes")
        mono = world.make_scene(EVAL + index, "object", style="mono")
        assert measures.stripe_energy(stripes.image) > 4 * measures.stripe_energy(plain.image)
        assert measures.chroma(mono.image) < 0.02 < measures.chroma(plain.image)


def test_colour_share_counts_the_named_colour():
    scene = world.make_scene(EVAL, "object", colour="red", background="blue")
    red, blue = measures.colour_share(scene.image, "red"), measures.colour_share(scene.image, "blue")
    assert abs(red - scene.mask.mean()) < 0.05 and red + blue > 0.95


def test_a_flooded_image_covers_no_limbs():
    scene = world.make_scene(EVAL + 7, "person")
    noise = np.random.default_rng(0).integers(0, 256, scene.image.shape, dtype=np.uint8)
    assert measures.limb_coverage(measures.figure_mask(noise), scene.keypoints) == 0.0


def test_the_text_evaluation_reads_its_own_prompts_ground_truth_right():
    truth = evaluation.ground_truth_text_scores()
    assert truth["colour"] == 1.0 and truth["shape"] == 1.0 and truth["held_out_colour"] == 1.0
    assert 0 < truth["colour_error"] < 40
