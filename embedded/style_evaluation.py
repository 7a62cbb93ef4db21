"""Scores of the embedded model's style reference (IP-Adapter) on pairs never used in training.

Images come from `Studio.generate`, the path people get: the studio loads the family's adapter from its studio.json
("style_adapter") on the first request with a style image, at the family's steps, guidance and sampler. Used by
scripts/evaluate_style.py (prints every figure) and tests/test_embedded_style.py (asserts them on a few pairs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from embedded import measures, world
from pipelines.request import GenerationRequest

MODELS = Path(__file__).resolve().parents[1] / "models"
STEPS = 20
GUIDANCE = 2.0
# Seeds at and above EVALUATION_SEED_OFFSET are never used in training (the adapter trains on 50,000,000 and up).
STYLE_SEED_OFFSET = world.EVALUATION_SEED_OFFSET + 800_000
STYLE_VALIDATION_SEED_OFFSET = world.EVALUATION_SEED_OFFSET + 900_000  # for choosing the scale and the presets
COLOUR_PAIRS = [(colour, background) for colour in world.COLOURS for background in world.COLOURS
                if colour != background]


def studio_json(models: Path = MODELS) -> dict:
    return json.loads((models / "embedded" / "studio.json").read_text())


def load_studio(models: Path = MODELS):
    """The embedded model's studio on the CPU, one torch thread (the images the figures were measured on)."""
    from pipelines.settings import Settings
    from pipelines.studio import Studio

    return Studio(Settings(model=str(models / "embedded"), device="cpu", threads=1))


def request(prompt: str, seed: int, reference: np.ndarray | None = None, *, scale: float | None = None,
            style_mode: str | dict = "everything", guidance: float = GUIDANCE, **changes) -> GenerationRequest:
    """A text request (or another mode through `changes`) with `reference` as its style image; `scale` None is the
    family's default, and `style_mode` a preset's name or per-block scales (each times `scale`)."""
    style = {}
    if reference is not None:
        style = dict(style_image=Image.fromarray(reference), style_mode=style_mode if isinstance(style_mode, str)
                     else json.dumps(style_mode), **({"style_scale": scale} if scale is not None else {}))
    return GenerationRequest(prompt=prompt, seed=seed, steps=STEPS, guidance_scale=guidance, **style, **changes)


def generate(studio, requests: list[GenerationRequest]) -> list[np.ndarray]:
    return [np.asarray(studio.generate(each).images[0]) for each in requests]


@dataclass(frozen=True)
class StylePair:
    """A prompt naming a shape only ("a circle"), a reference picture of another shape in the colours to take, and
    the seed both the reference and the generation use."""

    seed: int
    shape: str
    reference: world.Scene

    @property
    def prompt(self) -> str:
        return f"a {self.shape}"


def style_pairs(count: int, seed_offset: int = STYLE_SEED_OFFSET) -> list[StylePair]:
    """Every shape in turn; colour and background go through all 56 ordered pairs (a stride of 17 mixes them);
    the reference is an object of the next shape in those colours."""
    pairs = []
    for index in range(count):
        shape = world.SHAPES[index % len(world.SHAPES)]
        other = world.SHAPES[(index + 1) % len(world.SHAPES)]
        colour, background = COLOUR_PAIRS[(17 * index) % len(COLOUR_PAIRS)]
        seed = seed_offset + index
        reference = world.make_scene(seed + 50_000, "object", colour=colour, background=background, shape=other)
        pairs.append(StylePair(seed, shape, reference))
    return pairs


def read(image: np.ndarray) -> dict:
    mask = measures.object_mask(image)
    return {"shape": measures.shape_of(mask), "colour": measures.object_colour(image, mask),
            "background": measures.nearest_colour(measures.background_colour(image)), "mask": mask}


def score_pairs(images: list[np.ndarray], pairs: list[StylePair], shape: bool = True) -> dict:
    """Shares of images whose object colour, background and (prompted) shape are right, and all of them at once."""
    seen = [read(image) for image in images]
    colour = np.array([s["colour"] == p.reference.colour for s, p in zip(seen, pairs)])
    background = np.array([s["background"] == p.reference.background for s, p in zip(seen, pairs)])
    shape_right = np.array([s["shape"] == p.shape for s, p in zip(seen, pairs)])
    both = colour & background
    return {"colour": float(colour.mean()), "background": float(background.mean()), "both_colours": float(both.mean()),
            "shape": float(shape_right.mean()), "all": float((both & shape_right).mean()) if shape else float("nan"),
            "count": len(pairs)}


def prompt_and_reference_scores(studio, pairs: list[StylePair], scale: float | None = None,
                                style_mode: str | dict = "everything", guidance: float = GUIDANCE) -> dict:
    """(b): "a circle" with a reference of another shape: the shape from the words, the colours from the picture."""
    images = generate(studio, [request(p.prompt, p.seed, p.reference.image, scale=scale, style_mode=style_mode,
                                       guidance=guidance) for p in pairs])
    return score_pairs(images, pairs)


def reference_alone_scores(studio, pairs: list[StylePair], scale: float | None = None,
                           guidance: float = GUIDANCE) -> dict:
    """(c): the reference alone with an empty prompt: both colours follow it."""
    images = generate(studio, [request("", p.seed, p.reference.image, scale=scale, guidance=guidance) for p in pairs])
    return score_pairs(images, pairs, shape=False)


def without_reference_scores(studio, pairs: list[StylePair], guidance: float = GUIDANCE) -> dict:
    """The same prompts without a reference: how often the colours match by chance."""
    return score_pairs(generate(studio, [request(p.prompt, p.seed, guidance=guidance) for p in pairs]), pairs)


def identical_without_reference(studio, plain, pairs: list[StylePair]) -> dict:
    """(a): once `studio` has loaded its adapter, a request without a reference, and one with a reference at scale 0,
    give the pixels of a studio that never loaded it (`plain`), prompts with and without colours."""
    generate(studio, [request(pairs[0].prompt, pairs[0].seed, pairs[0].reference.image)])  # the adapter loads
    same = []
    for pair in pairs:
        for prompt in (pair.prompt, pair.reference.caption):
            [before] = generate(plain, [request(prompt, pair.seed)])
            after = generate(studio, [request(prompt, pair.seed), request(prompt, pair.seed, pair.reference.image,
                                                                          scale=0.0)])
            same += [np.array_equal(before, image) for image in after]
    return {"identical": float(np.mean(same)), "count": len(same)}


@dataclass(frozen=True)
class ControlPair:
    """An unseen scene whose edge or depth map sets the layout, prompted with its shape only, and a reference in
    two other colours."""

    scene: world.Scene
    reference: world.Scene

    @property
    def prompt(self) -> str:
        return f"a {self.scene.shape}"

    @property
    def seed(self) -> int:
        return self.scene.seed

    @property
    def shape(self) -> str:
        return self.scene.shape


def control_pairs(count: int, seed_offset: int = STYLE_SEED_OFFSET + 20_000) -> list[ControlPair]:
    pairs = []
    for index in range(count):
        scene = world.make_scene(seed_offset + index, "object", shape=world.SHAPES[index % len(world.SHAPES)])
        others = [pair for pair in COLOUR_PAIRS if scene.colour not in pair and scene.background not in pair]
        colour, background = others[(7 * index) % len(others)]
        reference = world.make_scene(seed_offset + index + 50_000, "object", colour=colour, background=background,
                                     shape=world.SHAPES[(index + 1) % len(world.SHAPES)])
        pairs.append(ControlPair(scene, reference))
    return pairs


def layout_truth(scene: world.Scene, mode: str) -> np.ndarray:
    return measures.depth_foreground(scene.depth) if mode == "depth" else scene.mask


def control_style_scores(studio, mode: str, pairs: list[ControlPair], style_mode: str | dict = "style",
                         scale: float | None = None, guidance: float = GUIDANCE) -> dict:
    """(d): the map's layout kept (IoU of the object with the map's, against the same request without a reference)
    while the colours follow the reference."""
    controlled = [request(p.prompt, p.seed, guidance=guidance, mode=mode, preprocessor="none",
                          image=Image.fromarray(getattr(p.scene, mode))) for p in pairs]
    plain = generate(studio, controlled)
    styled = generate(studio, [replace(each, **_style_of(p, style_mode, scale)) for each, p in zip(controlled, pairs)])
    truths = [layout_truth(p.scene, mode) for p in pairs]
    iou_plain = [measures.iou(measures.object_mask(i), t) for i, t in zip(plain, truths)]
    iou_styled = [measures.iou(measures.object_mask(i), t) for i, t in zip(styled, truths)]
    colours = score_pairs(styled, pairs)
    return {"iou_without": float(np.mean(iou_plain)), "iou_with": float(np.mean(iou_styled)),
            "iou_drop": float(np.mean(iou_plain) - np.mean(iou_styled)), "colour": colours["colour"],
            "background": colours["background"], "both_colours": colours["both_colours"], "count": len(pairs)}


def _style_of(pair: ControlPair, style_mode: str | dict, scale: float | None) -> dict:
    styled = request("", 0, pair.reference.image, scale=scale, style_mode=style_mode)
    return {name: getattr(styled, name) for name in ("style_image", "style_scale", "style_mode")}


def cross_attention_blocks(pipe) -> list[str]:
    """set_ip_adapter_scale's block keys of the UNet's cross-attention layers, in order (down, mid, up)."""
    from embedded.style_adapter import block_of

    blocks = []
    for name in pipe.unet.attn_processors:
        if name.endswith("attn2.processor") and block_of(name) not in blocks:
            blocks.append(block_of(name))
    return blocks


def block_only(pipe, blocks: list[str], scale: float = 1.0) -> dict:
    """A per-block scale dict giving `scale` to `blocks` ("up.block_0", "mid", ...) and 0 to every other."""
    layers = {}
    for name in pipe.unet.attn_processors:
        if name.endswith("attn2.processor"):
            from embedded.style_adapter import block_of

            layers.setdefault(block_of(name), 0)
            layers[block_of(name)] += 1
    out: dict = {"down": {}, "up": {}, "mid": scale if "mid" in blocks else 0.0}
    for block, count in layers.items():
        if block == "mid":
            continue
        side, key = block.split(".")
        out[side][key] = [scale if block in blocks else 0.0] * count
    return out
