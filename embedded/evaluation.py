"""Scores of the committed embedded model on scenes never used in training, on images made by the studio.

Every image comes from `Studio.generate`, the path a person or API caller gets (loading, studio.json's sampler,
ControlNets and guidance, the LoRA manager), one request per image. Used by scripts/evaluate_embedded.py (prints
every figure) and by the tests (assert the floors).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from embedded import measures, world
from pipelines.request import GenerationRequest, LoraChoice
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
