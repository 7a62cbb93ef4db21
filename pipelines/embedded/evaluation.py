"""Scores of the committed embedded model on scenes never used in training, through plain diffusers.

Used by scripts/evaluate_embedded.py (prints every figure) and by the tests (assert the floors).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..loader import describe_model
from ..schedulers import make_scheduler
from . import measures, world

MODELS = Path(__file__).resolve().parents[2] / "models"
STEPS = 20
VALIDATION_SEED_OFFSET = world.EVALUATION_SEED_OFFSET + 700_000


@dataclass
class EmbeddedModels:
    """The base pipeline, one ControlNet pipeline per mode, and the studio defaults."""

    base: object
    controlled: dict = field(default_factory=dict)
    guidance_scale: float = 4.0
    folder: Path = MODELS


def load(models: Path = MODELS, modes=world.CONTROL_MODES) -> EmbeddedModels:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    folder = models / "embedded"
    base = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    # The defaults, sampler and ControlNets the studio serves this family with, read from studio.json as the studio
    # reads them: the scores are of its images.
    info = describe_model(base, str(folder))
    base.scheduler = make_scheduler(info.default_scheduler, base.scheduler.config)
    base.set_progress_bar_config(disable=True)
    loaded = EmbeddedModels(base=base, guidance_scale=info.default_guidance, folder=models)
    for mode in modes:
        controlnet = ControlNetModel.from_pretrained(info.controlnets[mode], torch_dtype=torch.float32)
        pipe = StableDiffusionControlNetPipeline(**base.components, controlnet=controlnet)
        pipe.set_progress_bar_config(disable=True)
        loaded.controlled[mode] = pipe
    return loaded


def generate(pipe, prompts: list[str], seeds: list[int], guidance_scale: float, **kwargs) -> list[np.ndarray]:
    """RGB uint8 images, one per prompt, each with its own seeded generator."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    with torch.no_grad():
        images = pipe(prompt=prompts, num_inference_steps=STEPS, guidance_scale=guidance_scale,
                      generator=generators, output_type="np", **kwargs).images
    return [np.round(image * 255).astype(np.uint8) for image in images]


def text_prompts(count: int = 24, seed_offset: int = world.EVALUATION_SEED_OFFSET) -> list[world.Scene]:
    """Every colour-shape pair in turn (held-out pairs included), each on a background drawn from the seed."""
    pairs = [(colour, shape) for shape in world.SHAPES for colour in world.COLOURS]
    return [world.make_scene(seed_offset + index, "object", colour=pairs[index % len(pairs)][0],
                             shape=pairs[index % len(pairs)][1]) for index in range(count)]


def validation_prompts(count: int = 48) -> list[world.Scene]:
    """Prompts for choosing training and sampling settings, so the evaluation's own prompts stay unseen."""
    return text_prompts(count, VALIDATION_SEED_OFFSET)


def text_scores(models: EmbeddedModels, guidance_scale: float, scenes: list[world.Scene] | None = None) -> dict:
    scenes = text_prompts() if scenes is None else scenes
    images = generate(models.base, [s.caption for s in scenes], [s.seed for s in scenes], guidance_scale)
    return score_text_images(images, scenes)


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


def negative_prompt_scores(models: EmbeddedModels, count: int = 12) -> dict:
    """Share of the object's colour in the image without and with a negative prompt naming that colour."""
    scenes = text_prompts(count)
    prompts, seeds = [s.caption for s in scenes], [s.seed for s in scenes]
    plain = generate(models.base, prompts, seeds, models.guidance_scale)
    negated = generate(models.base, prompts, seeds, models.guidance_scale, negative_prompt=[s.colour for s in scenes])
    return {"share_without": float(np.mean([measures.colour_share(i, s.colour) for i, s in zip(plain, scenes)])),
            "share_with": float(np.mean([measures.colour_share(i, s.colour) for i, s in zip(negated, scenes)]))}


def control_scenes(mode: str, count: int) -> list[world.Scene]:
    kind = "person" if mode == "pose" else "object"
    offset = world.EVALUATION_SEED_OFFSET + 100_000 * (1 + world.CONTROL_MODES.index(mode))
    return [world.make_scene(offset + index, kind) for index in range(count)]


def control_scores(models: EmbeddedModels, mode: str, count: int = 12) -> dict:
    """edge/depth: IoU of the generated object with the map's object; pose: share of limbs covered."""
    from PIL import Image

    scenes = control_scenes(mode, count)
    maps = [getattr(scene, mode) for scene in scenes]
    images = generate(models.controlled[mode], [s.caption for s in scenes], [s.seed for s in scenes],
                      models.guidance_scale, image=[Image.fromarray(m) for m in maps])
    if mode == "pose":
        values = [measures.limb_coverage(measures.figure_mask(i), s.keypoints) for i, s in zip(images, scenes)]
        return {"limb_coverage": float(np.mean(values)), "count": count}
    if mode == "depth":
        values = [measures.iou(measures.object_mask(i), measures.depth_foreground(m)) for i, m in zip(images, maps)]
    else:
        values = [measures.iou(measures.object_mask(i), s.mask) for i, s in zip(images, scenes)]
    return {"iou": float(np.mean(values)), "min_iou": float(np.min(values)), "count": count}


def lora_scores(models: EmbeddedModels, style: str, scenes: list[world.Scene] | None = None) -> dict:
    """The style's own measure without the LoRA and at weight 1; whether weight 0 gives the base pixels."""
    name, measure, _ = measures.STYLE_MEASURES[style]
    trigger = world.STYLES[style]
    scenes = text_prompts(8) if scenes is None else scenes
    prompts, seeds = [f"{trigger}, {s.caption}" for s in scenes], [s.seed for s in scenes]
    pipe = models.base
    before = generate(pipe, prompts, seeds, models.guidance_scale)
    pipe.load_lora_weights(models.folder / "loras", weight_name=f"{style}.safetensors", adapter_name=style)
    try:
        pipe.set_adapters([style], adapter_weights=[1.0])
        styled = generate(pipe, prompts, seeds, models.guidance_scale)
        pipe.set_adapters([style], adapter_weights=[0.0])
        zero = generate(pipe, prompts, seeds, models.guidance_scale)
    finally:
        pipe.delete_adapters(style)
    return {"measure": name, "without": float(np.mean([measure(i) for i in before])),
            "weight_1": float(np.mean([measure(i) for i in styled])),
            "weight_0_identical": all(np.array_equal(a, b) for a, b in zip(before, zero)), "count": len(scenes)}


def seconds_for_20_steps(pipe, guidance_scale: float, repeats: int = 3, **kwargs) -> float:
    """Median wall time of one 20-step image at the native resolution, after a warm-up run."""
    prompt = "a red circle on a blue background"
    generate(pipe, [prompt], [0], guidance_scale, **kwargs)
    times = []
    for repeat in range(repeats):
        started = time.perf_counter()
        generate(pipe, [prompt], [repeat], guidance_scale, **kwargs)
        times.append(time.perf_counter() - started)
    return float(np.median(times))
