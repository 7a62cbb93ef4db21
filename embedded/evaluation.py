"""Scores of the committed embedded model on scenes never used in training, on images made by the studio.

Every image comes from `Studio.generate`, the path a person or API caller gets (loading, studio.json's sampler,
ControlNets and guidance, the LoRA manager), one request per image. Used by scripts/evaluate_embedded.py (prints
every figure) and by the tests (assert the floors).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from embedded import measures, world
from pipelines.editing import edit_inputs, keep_unmasked, through_the_vae
from pipelines.endpoints import validate_request
from pipelines.request import ControlUnit, GenerationRequest, LoraChoice
from pipelines.settings import Settings
from pipelines.studio import Studio

MODELS = Path(__file__).resolve().parents[1] / "models"
STEPS = 20
VALIDATION_SEED_OFFSET = world.EVALUATION_SEED_OFFSET + 700_000


def load(models: Path = MODELS) -> Studio:
    """The studio serving `models`/embedded with its LoRA folder, on the CPU; ControlNets load on first use."""
    return Studio(Settings(model=str(models / "embedded"), lora_dir=str(models / "loras"), device="cpu"))


def default_guidance(studio: Studio) -> float:
    """The guidance scale the studio serves the model with (studio.json's), used where a request names none."""
    return studio.model.default_guidance


def request(scene: world.Scene, guidance_scale: float | None = None, mode: str = "text") -> GenerationRequest:
    """`scene`'s caption and seed at the evaluation's steps; a control mode sends the scene's own map as a ready
    map. Guidance None is the model's default, as for a person who leaves the slider alone."""
    image = Image.fromarray(getattr(scene, mode)) if mode != "text" else None
    return GenerationRequest(mode=mode, prompt=scene.caption, image=image, preprocessor="none", seed=scene.seed,
                             steps=STEPS, guidance_scale=guidance_scale)


def generate(studio: Studio, requests: list[GenerationRequest]) -> list[np.ndarray]:
    """RGB uint8 images, one per request, each made by the studio as a person would get it."""
    return [np.asarray(studio.generate(one).images[0]) for one in requests]


def text_prompts(count: int = 24, seed_offset: int = world.EVALUATION_SEED_OFFSET) -> list[world.Scene]:
    """Every colour-shape pair in turn (held-out pairs included), each on a background drawn from the seed."""
    pairs = [(colour, shape) for shape in world.SHAPES for colour in world.COLOURS]
    return [world.make_scene(seed_offset + index, "object", colour=pairs[index % len(pairs)][0],
                             shape=pairs[index % len(pairs)][1]) for index in range(count)]


def validation_prompts(count: int = 48) -> list[world.Scene]:
    """Prompts for choosing training and sampling settings, so the evaluation's own prompts stay unseen."""
    return text_prompts(count, VALIDATION_SEED_OFFSET)


def text_scores(studio: Studio, guidance_scale: float | None = None, scenes: list[world.Scene] | None = None) -> dict:
    scenes = text_prompts() if scenes is None else scenes
    return score_text_images(generate(studio, [request(s, guidance_scale) for s in scenes]), scenes)


def ground_truth_text_scores(scenes: list[world.Scene] | None = None) -> dict:
    """The same scores on the world's own images of the prompts: the reference a model is read against (its
    objects are shaded, so even they sit some way from the named palette colour)."""
    scenes = text_prompts() if scenes is None else scenes
    return score_text_images([s.image for s in scenes], scenes)


def score_text_images(images: list[np.ndarray], scenes: list[world.Scene]) -> dict:
    masks = [measures.object_mask(image) for image in images]
    colour_right = [measures.object_colour(i, m) == s.colour for i, m, s in zip(images, masks, scenes)]
    colour_error = [measures.colour_error(i, s.colour, m) for i, m, s in zip(images, masks, scenes)]
    shape_right = [measures.shape_of(m) == s.shape for m, s in zip(masks, scenes)]
    held_out = [right for right, s in zip(colour_right, scenes) if (s.colour, s.shape) in world.HELD_OUT_PAIRS]
    return {"colour": float(np.mean(colour_right)), "colour_error": float(np.mean(colour_error)),
            "shape": float(np.mean(shape_right)),
            "held_out_colour": float(np.mean(held_out)) if held_out else float("nan"), "count": len(scenes)}


def colour_beats(a: dict, b: dict) -> bool:
    """Whether text scores `a` are more colour-accurate than `b`: more colours named right, or as many and a
    smaller mean colour error (at 100% right the names alone cannot tell two settings apart)."""
    return a["colour"] > b["colour"] or (a["colour"] == b["colour"] and a["colour_error"] < b["colour_error"])


def negative_prompt_scores(studio: Studio, count: int = 12) -> dict:
    """Share of the object's colour in the image without and with a negative prompt naming that colour."""
    scenes = text_prompts(count)
    plain = generate(studio, [request(s) for s in scenes])
    negated = generate(studio, [replace(request(s), negative_prompt=s.colour) for s in scenes])
    return {"share_without": float(np.mean([measures.colour_share(i, s.colour) for i, s in zip(plain, scenes)])),
            "share_with": float(np.mean([measures.colour_share(i, s.colour) for i, s in zip(negated, scenes)]))}


def control_scenes(mode: str, count: int) -> list[world.Scene]:
    kind = "person" if mode == "pose" else "object"
    offset = world.EVALUATION_SEED_OFFSET + 100_000 * (1 + world.CONTROL_MODES.index(mode))
    return [world.make_scene(offset + index, kind) for index in range(count)]


def control_scores(studio: Studio, mode: str, count: int = 12) -> dict:
    """edge/depth: IoU of the generated object with the map's object; pose: share of limbs covered."""
    scenes = control_scenes(mode, count)
    images = generate(studio, [request(s, mode=mode) for s in scenes])
    if mode == "pose":
        values = [measures.limb_coverage(measures.figure_mask(i), s.keypoints) for i, s in zip(images, scenes)]
        return {"limb_coverage": float(np.mean(values)), "count": count}
    truths = [measures.depth_foreground(s.depth) if mode == "depth" else s.mask for s in scenes]
    values = [measures.iou(measures.object_mask(i), truth) for i, truth in zip(images, truths)]
    return {"iou": float(np.mean(values)), "min_iou": float(np.min(values)), "count": count}


def lora_scores(studio: Studio, style: str, scenes: list[world.Scene] | None = None) -> dict:
    """The style's own measure without the LoRA and at weight 1; whether weight 0 gives the base pixels."""
    name, measure, _ = measures.STYLE_MEASURES[style]
    scenes = text_prompts(8) if scenes is None else scenes
    prompted = [replace(request(s), prompt=f"{world.STYLES[style]}, {s.caption}") for s in scenes]

    def made_with(*loras: LoraChoice) -> list[np.ndarray]:
        return generate(studio, [replace(r, loras=loras) for r in prompted])

    before = made_with()
    styled = made_with(LoraChoice(f"{style}.safetensors", 1.0))
    zero = made_with(LoraChoice(f"{style}.safetensors", 0.0))
    return {"measure": name, "without": float(np.mean([measure(i) for i in before])),
            "weight_1": float(np.mean([measure(i) for i in styled])),
            "weight_0_identical": all(np.array_equal(a, b) for a, b in zip(before, zero)), "count": len(scenes)}


def lora_block_scores(studio: Studio, style: str, specs: Sequence[str], scenes: list[world.Scene] | None = None,
                      steps: int = STEPS) -> dict[str, float]:
    """The style's own measure (mean over `scenes`) without the LoRA ("none"), at weight 1 ("" : every block) and
    with each block-weight spec of `specs` (`pipelines/block_weights.py`), the style's trigger word in every prompt."""
    _, measure, _ = measures.STYLE_MEASURES[style]
    scenes = text_prompts(8) if scenes is None else scenes
    prompted = [replace(request(s), prompt=f"{world.STYLES[style]}, {s.caption}", steps=steps) for s in scenes]
    scores = {}
    for spec in ("none", "", *specs):
        loras = () if spec == "none" else (LoraChoice(f"{style}.safetensors", 1.0, spec),)
        scores[spec] = float(np.mean([measure(i) for i in generate(studio, [replace(r, loras=loras)
                                                                              for r in prompted])]))
    return scores


def seconds_for_20_steps(studio: Studio, mode: str = "text", repeats: int = 3) -> float:
    """Median wall time of one 20-step image at the native resolution through the studio, after a warm-up run."""
    scene = world.make_scene(world.EVALUATION_SEED_OFFSET, "object")
    generate(studio, [request(scene, mode=mode)])
    times = []
    for repeat in range(repeats):
        started = time.perf_counter()
        generate(studio, [replace(request(scene, mode=mode), seed=repeat)])
        times.append(time.perf_counter() - started)
    return float(np.median(times))


# ---------------------------------------------------------------- img2img and inpainting

IMG2IMG_SEED_OFFSET = world.EVALUATION_SEED_OFFSET + 400_000
INPAINT_SEED_OFFSET = world.EVALUATION_SEED_OFFSET + 500_000
EDIT_VALIDATION_SEED_OFFSET = VALIDATION_SEED_OFFSET + 10_000  # for choosing the middle strength
# The strength the "in between" measures are read at, chosen on 24 validation scenes (evaluate_embedded.py
# --strength-sweep 0.3 0.4 0.5 0.6 0.7 1.0): the lowest that takes a new colour in most cases (29% at 0.3, 62% at
# 0.4, 88% at 0.5), so it keeps the most of the start that still edits it: there the object under its own caption
# keeps IoU 0.75 with the start's (0.88 at 0.3, 0.32 at strength 1, where nothing of the place is kept).
MIDDLE_STRENGTH = 0.5
BOX_MARGIN = 3  # pixels around the object's bounding box in the inpainting mask (the rim is anti-aliased)
WHOLE_IMAGE = 10**6  # pixel limit for re-reading a checked request's mask: ours are 64x64


@dataclass(frozen=True)
class Edit:
    """A start picture of the world and a prompt naming another colour for its object. `prompted` is the
    world's own picture of that prompt with the start's seed, shape, place and size: the edit's ground truth."""

    start: world.Scene
    prompted: world.Scene

    @property
    def box(self) -> np.ndarray:
        """Inpainting mask (uint8, 255 = repaint): the object's bounding box, BOX_MARGIN pixels larger."""
        ys, xs = np.nonzero(self.start.mask)
        mask = np.zeros(self.start.mask.shape, np.uint8)
        mask[max(ys.min() - BOX_MARGIN, 0) : ys.max() + BOX_MARGIN + 1,
             max(xs.min() - BOX_MARGIN, 0) : xs.max() + BOX_MARGIN + 1] = 255
        return mask

    @property
    def background(self) -> np.ndarray:
        """The start scene without its object: a plain picture of its background colour."""
        return np.full_like(self.start.image, world.COLOURS[self.start.background])


def edit_scenes(count: int = 12, seed_offset: int = IMG2IMG_SEED_OFFSET) -> list[Edit]:
    """Unseen object scenes, the shapes in turn; the prompt's colour cycles through those that are neither the
    object's nor the background's. Fixing colour, shape and background keeps the seed's draws of place and size,
    so `start` and `prompted` differ in the object's colour alone."""
    edits = []
    for index in range(count):
        seed = seed_offset + index
        drawn = world.make_scene(seed, "object", shape=world.SHAPES[index % len(world.SHAPES)])
        others = [name for name in world.COLOURS if name not in (drawn.colour, drawn.background)]
        fixed = dict(shape=drawn.shape, background=drawn.background)
        edits.append(Edit(world.make_scene(seed, "object", colour=drawn.colour, **fixed),
                          world.make_scene(seed, "object", colour=others[index % len(others)], **fixed)))
    return edits


def edit_request(edit: Edit, mode: str, *, same_caption: bool = False, start: np.ndarray | None = None,
                 **values) -> GenerationRequest:
    """img2img or inpainting of `edit`'s start picture (or `start`) with the prompted caption (or the start's own),
    at the evaluation's steps and the model's default guidance; inpainting masks the object's box."""
    prompt = edit.start.caption if same_caption else edit.prompted.caption
    picture = Image.fromarray(edit.start.image if start is None else start)
    if mode == "inpaint":
        values.setdefault("mask", Image.fromarray(edit.box))
    return GenerationRequest(mode=mode, prompt=prompt, image=picture, seed=edit.start.seed, steps=STEPS, **values)


def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference per channel, 0..255."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def round_trip_scores(studio: Studio, edits: list[Edit]) -> dict:
    """img2img at strength 0 against the start picture's VAE round trip (encode, decode) and the picture itself."""
    pipe = studio.pipeline_for("img2img")
    outputs = generate(studio, [edit_request(e, "img2img", strength=0.0) for e in edits])
    trips = [np.asarray(through_the_vae(pipe, Image.fromarray(e.start.image))) for e in edits]
    return {"to_round_trip": float(np.mean([mean_distance(o, t) for o, t in zip(outputs, trips)])),
            "identical_to_round_trip": all(np.array_equal(o, t) for o, t in zip(outputs, trips)),
            "to_input": float(np.mean([mean_distance(o, e.start.image) for o, e in zip(outputs, edits)])),
            "count": len(edits)}


def ground_truth_round_trip_scores(edits: list[Edit]) -> dict:
    """The distance's scale: a picture to itself, and to another unseen scene's picture."""
    others = [edits[(index + 1) % len(edits)].start.image for index in range(len(edits))]
    return {"to_itself": float(np.mean([mean_distance(e.start.image, e.start.image) for e in edits])),
            "to_another_scene": float(np.mean([mean_distance(e.start.image, o) for e, o in zip(edits, others)]))}


def score_keeping(images: list[np.ndarray], edits: list[Edit]) -> dict:
    """How much of the start picture's object an image keeps: IoU of its object with the start's object (place
    and size), and whether its colour is the prompted one, the start's, or another."""
    masks = [measures.object_mask(image) for image in images]
    ious = [measures.iou(mask, e.start.mask) for mask, e in zip(masks, edits)]
    colours = [measures.object_colour(i, m) for i, m in zip(images, masks)]
    return {"iou": float(np.mean(ious)), "min_iou": float(np.min(ious)),
            "prompted_colour": float(np.mean([c == e.prompted.colour for c, e in zip(colours, edits)])),
            "start_colour": float(np.mean([c == e.start.colour for c, e in zip(colours, edits)])),
            "count": len(edits)}


def strength_images(studio: Studio, edits: list[Edit], strength: float, same_caption: bool = False) -> list[np.ndarray]:
    return generate(studio, [edit_request(e, "img2img", strength=strength, same_caption=same_caption) for e in edits])


def prompted_colour_scores(studio: Studio, edits: list[Edit]) -> dict:
    """img2img at strength 1 and text mode on the same prompts and seeds, by text mode's measures (colour named
    right, colour error, shape), and how much of the start's object strength 1 keeps (`score_keeping`)."""
    prompted = [e.prompted for e in edits]
    img2img = strength_images(studio, edits, 1.0)
    text = generate(studio, [request(e.prompted) for e in edits])  # the start's seed
    return {"img2img": score_text_images(img2img, prompted), "text": score_text_images(text, prompted),
            "img2img_keeping": score_keeping(img2img, edits)}


def keeping_scores(studio: Studio, edits: list[Edit], strength: float = MIDDLE_STRENGTH) -> dict:
    """img2img at `strength` prompted with another colour, and with the start's own caption."""
    return {"new_colour": score_keeping(strength_images(studio, edits, strength), edits),
            "same_caption": score_keeping(strength_images(studio, edits, strength, same_caption=True), edits),
            "strength": strength}


def ground_truth_keeping_scores(edits: list[Edit]) -> dict:
    """The world's own pictures: the prompted scene keeps the place and takes the colour; the start picture keeps
    both; another scene's prompted picture keeps neither place nor (mostly) colour."""
    others = [edits[(index + 1) % len(edits)].prompted.image for index in range(len(edits))]
    return {"prompted": score_keeping([e.prompted.image for e in edits], edits),
            "start": score_keeping([e.start.image for e in edits], edits),
            "another_scene": score_keeping(others, edits)}


def ground_truth_prompted_colour_scores(edits: list[Edit]) -> dict:
    """Text mode's colour measure on the world's pictures of the prompts, and on the start pictures (whose object
    is never in the prompted colour, so a model that ignores the prompt scores 0 there)."""
    prompted = [e.prompted for e in edits]
    return {"prompted": score_text_images([e.prompted.image for e in edits], prompted),
            "start": score_text_images([e.start.image for e in edits], prompted)}


def inpaint(studio: Studio, requests: list[GenerationRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, the blurred mask the studio pasted the start back through) for each inpainting request."""
    made = []
    for one in requests:
        result = studio.generate(one)
        mask = np.asarray(edit_inputs(result.request, WHOLE_IMAGE).mask)
        made.append((np.asarray(result.images[0]), mask))
    return made


def score_inpainting(made: list[tuple[np.ndarray, np.ndarray]], starts: list[np.ndarray], edits: list[Edit]) -> dict:
    """Outside the blurred mask (where it is 0): how many pixels differ from the start picture, exactly. Inside:
    text mode's colour measure against the prompted colour, and the shape."""
    outside = [mask == 0 for _, mask in made]
    changed = [int(((image != start).any(axis=-1) & keep).sum())
               for (image, _), start, keep in zip(made, starts, outside)]
    scores = score_text_images([image for image, _ in made], [e.prompted for e in edits])
    return {"changed_outside": int(np.sum(changed)), "outside_pixels": int(np.sum([k.sum() for k in outside])),
            "colour": scores["colour"], "colour_error": scores["colour_error"], "shape": scores["shape"],
            "count": len(edits)}


def inpaint_starts(edits: list[Edit], start: str) -> list[np.ndarray]:
    """"object": the start picture (the prompt recolours its object); "background": the start's plain background
    (the prompt asks for an object where there is none)."""
    return [e.start.image if start == "object" else e.background for e in edits]


def inpaint_scores(studio: Studio, edits: list[Edit], masked_content: str = "original", start: str = "object",
                   **values) -> dict:
    """Inpainting of the object's box with the prompted caption, at the request's defaults (strength, mask blur)
    unless `values` say otherwise."""
    starts = inpaint_starts(edits, start)
    requests = [edit_request(e, "inpaint", start=s, masked_content=masked_content, **values)
                for e, s in zip(edits, starts)]
    made = inpaint(studio, requests)
    scores = score_inpainting(made, starts, edits)
    checked, _ = validate_request(requests[0], studio.served)  # the defaults the runs were given
    return {**scores, "strength": checked.strength, "mask_blur": checked.mask_blur}


def ground_truth_inpaint_scores(studio: Studio, edits: list[Edit], start: str = "object") -> dict:
    """The world's picture of the prompt pasted into the start through the studio's blurred mask scores 0 pixels
    changed outside and the prompted colour inside; its VAE round trip (no paste) changes pixels outside; the
    start picture left as it is never has the prompted colour."""
    pipe = studio.pipeline_for("inpaint")
    starts = inpaint_starts(edits, start)
    pasted, unpasted, untouched = [], [], []
    for edit, picture in zip(edits, starts):
        checked, _ = validate_request(edit_request(edit, "inpaint", start=picture), studio.served)
        inputs = edit_inputs(checked, WHOLE_IMAGE)
        mask = np.asarray(inputs.mask)
        pasted.append((np.asarray(keep_unmasked(pipe, inputs, Image.fromarray(edit.prompted.image))), mask))
        unpasted.append((np.asarray(through_the_vae(pipe, Image.fromarray(edit.prompted.image))), mask))
        untouched.append((picture, mask))
    return {"pasted": score_inpainting(pasted, starts, edits), "round_trip": score_inpainting(unpasted, starts, edits),
            "start": score_inpainting(untouched, starts, edits)}


def strength_sweep(studio: Studio, strengths: list[float], edits: list[Edit] | None = None) -> dict[float, dict]:
    """`keeping_scores` at each strength on the validation scenes: where the middle strength was chosen."""
    edits = edit_scenes(24, EDIT_VALIDATION_SEED_OFFSET) if edits is None else edits
    return {strength: keeping_scores(studio, edits, strength) for strength in strengths}


# ---------------------------------------------------------------- two ControlNets at once

TWO_CONTROLS_SEED_OFFSET = world.EVALUATION_SEED_OFFSET + 600_000
TWO_CONTROLS_GAP = 4  # pixels of background at least between the two objects (dilation of each mask)
TWO_CONTROLS_PRESENT = 0.5  # an object counts as drawn where its per-object IoU reaches this


@dataclass(frozen=True)
class TwoControls:
    """Two unseen object scenes of different shapes whose objects do not overlap: `edge` gives the edge map,
    `depth` the depth map. Both share colour and background, so one in-vocabulary caption names the colour and
    background of each object truly; the captions the model learned name one shape, and `prompt` names the edge
    object's (the depth map alone says where and what the second is)."""

    edge: world.Scene
    depth: world.Scene

    @property
    def prompt(self) -> str:
        return self.edge.caption

    @property
    def composite(self) -> np.ndarray:
        """The world's picture of both objects: the edge scene with the depth scene's object pasted in."""
        image = self.edge.image.copy()
        image[self.depth.mask] = self.depth.image[self.depth.mask]
        return image

    @property
    def regions(self) -> tuple[np.ndarray, np.ndarray]:
        """Each object's half of the picture: the pixels nearer to its mask than to the other's (a Voronoi split
        along the gap), so one object's score never counts the other's pixels."""
        import cv2

        def distance_to(mask: np.ndarray) -> np.ndarray:
            return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)

        to_edge, to_depth = distance_to(self.edge.mask), distance_to(self.depth.mask)
        return to_edge <= to_depth, to_depth < to_edge


def _apart(a: np.ndarray, b: np.ndarray, gap: int = TWO_CONTROLS_GAP) -> bool:
    import cv2

    grown = cv2.dilate(a.astype(np.uint8), np.ones((2 * gap + 1, 2 * gap + 1), np.uint8)).astype(bool)
    return not (grown & b).any()


def two_control_pairs(count: int = 12, seed_offset: int = TWO_CONTROLS_SEED_OFFSET) -> list[TwoControls]:
    """`count` pairs of unseen scenes: the edge object's shape cycles through the shapes, the depth object has the
    next shape, the same colour and background; both are redrawn from successive seeds until they stand
    TWO_CONTROLS_GAP pixels clear of each other (rejection, which favours smaller objects)."""
    pairs = []
    for index in range(count):
        seed = seed_offset + 1000 * index
        shape, other = world.SHAPES[index % len(world.SHAPES)], world.SHAPES[(index + 1) % len(world.SHAPES)]
        for attempt in range(0, 1000, 2):
            edge = world.make_scene(seed + attempt, "object", shape=shape)
            depth = world.make_scene(seed + attempt + 1, "object", colour=edge.colour, background=edge.background,
                                     shape=other)
            if _apart(edge.mask, depth.mask):
                break
        else:
            raise RuntimeError(f"no two objects clear of each other for pair {index}")
        pairs.append(TwoControls(edge, depth))
    return pairs


def two_controls_request(pair: TwoControls, units: str = "both") -> GenerationRequest:
    """"both": the edge map as the mode's ControlNet and the depth map as a second unit; "edge" or "depth": that
    map alone (the one-control baselines). Same prompt and seed for all three."""
    edge_map, depth_map = Image.fromarray(pair.edge.edge), Image.fromarray(pair.depth.depth)
    mode, image = ("depth", depth_map) if units == "depth" else ("edge", edge_map)
    extra = (ControlUnit("depth", depth_map, scale=1.0),) if units == "both" else ()
    return GenerationRequest(mode=mode, prompt=pair.prompt, image=image, preprocessor="none", seed=pair.edge.seed,
                             steps=STEPS, control_units=extra)


def object_in_region(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """`measures.object_mask` of the image with everything outside `region` painted the background colour."""
    restricted = image.copy()
    restricted[~region] = measures.background_colour(image).astype(np.uint8)
    return measures.object_mask(restricted)


def score_two_controls(images: list[np.ndarray], pairs: list[TwoControls]) -> dict:
    """Per object: IoU of the image's object within that object's region with its true mask; "both" is the
    share of images where both IoUs reach TWO_CONTROLS_PRESENT."""
    edge_ious, depth_ious = [], []
    for image, pair in zip(images, pairs):
        edge_region, depth_region = pair.regions
        edge_ious.append(measures.iou(object_in_region(image, edge_region), pair.edge.mask))
        depth_ious.append(measures.iou(object_in_region(image, depth_region), pair.depth.mask))
    edge_ious, depth_ious = np.array(edge_ious), np.array(depth_ious)
    return {"edge_iou": float(edge_ious.mean()), "depth_iou": float(depth_ious.mean()),
            "min_edge_iou": float(edge_ious.min()), "min_depth_iou": float(depth_ious.min()),
            "edge_present": float(np.mean(edge_ious >= TWO_CONTROLS_PRESENT)),
            "depth_present": float(np.mean(depth_ious >= TWO_CONTROLS_PRESENT)),
            "both": float(np.mean((edge_ious >= TWO_CONTROLS_PRESENT) & (depth_ious >= TWO_CONTROLS_PRESENT))),
            "count": len(pairs)}


def ground_truth_two_controls_scores(pairs: list[TwoControls]) -> dict:
    """The world's pictures: both objects pasted together, each scene alone, and the plain background."""
    return {"composite": score_two_controls([p.composite for p in pairs], pairs),
            "edge_scene": score_two_controls([p.edge.image for p in pairs], pairs),
            "depth_scene": score_two_controls([p.depth.image for p in pairs], pairs),
            "background": score_two_controls([np.full_like(p.edge.image, world.COLOURS[p.edge.background])
                                              for p in pairs], pairs)}


def two_controls_scores(studio: Studio, pairs: list[TwoControls]) -> dict:
    """The studio's images with both ControlNets, and with each alone (same prompt and seed)."""
    return {units: score_two_controls(generate(studio, [two_controls_request(p, units) for p in pairs]), pairs)
            for units in ("both", "edge", "depth")}


# ------------------------------------------------------------------ the page's examples


def shows_its_prompt(image: np.ndarray, prompt: str) -> list[str]:
    """What an image of the embedded model's world fails to show of its caption-like `prompt` (empty: it shows it
    all): the background's colour, the object's colour and shape or the shirt's colour, and a style by its own
    measure. A style changes what the rest can read: greyscale takes the colours away, stripes cut the object's
    outline and colour into bands, so a styled object is judged by its colour's share of the picture instead."""
    scene = _parse_caption(prompt)
    problems = []
    if scene["style"] is not None:
        name, measure, sign = measures.STYLE_MEASURES[scene["style"]]
        threshold = style_threshold(scene["style"])
        if sign * (measure(image) - threshold) <= 0:
            problems.append(f"{name} {measure(image):.3f} is not past {threshold:.3f}")
    if scene["style"] == "mono":
        return problems
    background = measures.nearest_colour(measures.background_colour(image))
    if background != scene["background"]:
        problems.append(f"the background is {background}, not {scene['background']}")
    if scene["shape"] is None or scene["style"] is not None:
        if measures.colour_share(image, scene["colour"]) < MIN_COLOUR_SHARE:
            problems.append(f"almost nothing is {scene['colour']}")
        return problems
    mask = measures.object_mask(image)
    colour, shape = measures.object_colour(image, mask), measures.shape_of(mask)
    if colour != scene["colour"]:
        problems.append(f"the object is {colour}, not {scene['colour']}")
    if shape != scene["shape"]:
        problems.append(f"the object is a {shape}, not a {scene['shape']}")
    return problems


@cache
def style_threshold(style: str, count: int = 48) -> float:
    """Halfway between the most style-like tenth of the world's plain object pictures and the least style-like tenth
    of the same pictures styled (a plain picture's measure varies with its shape and colours: a black square on
    white has no chroma at all)."""
    _, measure, sign = measures.STYLE_MEASURES[style]
    seeds = range(world.EVALUATION_SEED_OFFSET, world.EVALUATION_SEED_OFFSET + count)
    plain = [sign * measure(world.make_scene(seed, "object").image) for seed in seeds]
    styled = [sign * measure(world.make_scene(seed, "object", style=style).image) for seed in seeds]
    return float(sign * (np.percentile(plain, 90) + np.percentile(styled, 10)) / 2)


# A shirt is about a twentieth of the picture in the world's person scenes, a striped object's own colour about a
# tenth; a picture drawn in other colours has next to none of it.
MIN_COLOUR_SHARE = 0.01


def _parse_caption(prompt: str) -> dict:
    """The world's caption grammar (`world.caption_for`), read back."""
    triggers = {trigger: style for style, trigger in world.STYLES.items()}
    head, _, rest = prompt.partition(", ")
    style = triggers.get(head) if rest else None
    text = rest if style else prompt
    colours = "|".join(measures.PALETTE_NAMES)
    found = re.fullmatch(rf"an? ({colours}) (circle|square|triangle) on an? ({colours}) background", text) or \
        re.fullmatch(rf"a person in an? ({colours}) shirt with .+ on an? ({colours}) background", text)
    if found is None:
        raise ValueError(f"not a caption of the embedded model's world: {prompt!r}")
    groups = found.groups()
    shape = groups[1] if len(groups) == 3 else None
    return {"style": style, "colour": groups[0], "shape": shape, "background": groups[-1]}
