"""The synthetic world the embedded model is trained on: scenes with exact captions and control maps.

Every scene is a pure function of its seed, so the training set, the evaluation set and the examples are
reproducible. Scenes are drawn at 4x the native resolution and shrunk with area averaging, which gives
anti-aliased edges like a real photo's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipelines.explore.figures import COLOURS, SHAPES  # the palette and shape words the app measures with

RESOLUTION = 64
SUPERSAMPLE = 4
POSE_CANVAS = 512  # OpenPose maps are drawn at the detector's resolution, then resized like any control image

# Colour-shape pairs never shown in training: the text measure checks the model composes words.
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "square")})
# The embedded family's ControlNets. Their order fixes the training and evaluation seeds of each mode.
CONTROL_MODES = ("edge", "depth", "pose")
POSES = ("arms down", "arms raised", "the left arm raised", "the right arm raised", "arms out")
SKIN = (230, 185, 150)
STRIPE_WIDTH = 8  # band width along x + y, in pixels: the 4x-downsampling VAE blurs narrower bands away
# Style name -> trigger word. Each style is a visible change a classical measure can see.
STYLES = {"stripes": "zkstripes", "mono": "zkmono"}

# OpenPose body limbs (0-based keypoint indices), in draw_bodypose's order; the last four are the face.
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
BODY_LIMBS = LIMBS[:13]


@dataclass
class Scene:
    """One scene: the image, its caption and every control map, all at the native resolution (RGB uint8)."""

    seed: int
    kind: str  # "object" or "person"
    caption: str
    image: np.ndarray
    mask: np.ndarray  # bool, the object or figure
    depth: np.ndarray  # MiDaS-style: near is bright
    edge: np.ndarray  # Canny at 4x resolution, shrunk so thin edges survive, like the app's preprocessor
    edge_native: np.ndarray  # Canny straight on the native image at random thresholds
    pose: np.ndarray  # OpenPose body map (black for object scenes)
    colour: str
    background: str
    shape: str | None = None
    pose_name: str | None = None
    keypoints: np.ndarray | None = None  # (18, 2) normalised x, y
    style: str | None = None


def caption_for(colour: str, background: str, shape: str | None = None, pose_name: str | None = None,
                style: str | None = None) -> str:
    """The caption the model learns for a scene; the trigger word of a style comes first."""
    if shape is not None:
        text = f"a {colour} {shape} on a {background} background"
    else:
        text = f"a person in a {colour} shirt with {pose_name} on a {background} background"
    return f"{STYLES[style]}, {text}" if style else text


def make_scene(seed: int, kind: str | None = None, *, colour: str | None = None, background: str | None = None,
               shape: str | None = None, pose_name: str | None = None, style: str | None = None,
               allow_held_out: bool = True) -> Scene:
    """Draw the scene of `seed`; any attribute given is fixed, the rest are drawn from the seed."""
    rng = np.random.default_rng(seed)
    kind = kind or ("person" if rng.random() < 0.3 else "object")
    names = list(COLOURS)
    while True:
        colour_pick = colour or names[rng.integers(len(names))]
        shape_pick = (shape or SHAPES[rng.integers(len(SHAPES))]) if kind == "object" else None
        if allow_held_out or (colour_pick, shape_pick) not in HELD_OUT_PAIRS:
            break
    choices = [name for name in names if name != colour_pick]
    background_pick = background or choices[rng.integers(len(choices))]
    if kind == "object":
        scene = _object_scene(seed, rng, colour_pick, background_pick, shape_pick)
    else:
        scene = _person_scene(seed, rng, colour_pick, background_pick, pose_name or POSES[rng.integers(len(POSES))])
    if style:
        scene = _stylise(scene, style)
    return scene


def training_seeds(count: int, start: int = 0) -> range:
    return range(start, start + count)


EVALUATION_SEED_OFFSET = 10_000_000  # seeds at and above this are never used in training


def _object_scene(seed: int, rng: np.random.Generator, colour: str, background: str, shape: str) -> Scene:
    size = RESOLUTION * SUPERSAMPLE
    radius = rng.uniform(10, 21) * SUPERSAMPLE
    margin = radius + 2 * SUPERSAMPLE
    centre = rng.uniform(margin, size - margin, size=2)
    big_mask = np.zeros((size, size), np.uint8)
    cx, cy = centre
    if shape == "circle":
        cv2.circle(big_mask, (int(cx), int(cy)), int(radius), 1, -1)
    elif shape == "square":
        half = radius * 0.9
        cv2.rectangle(big_mask, (int(cx - half), int(cy - half)), (int(cx + half), int(cy + half)), 1, -1)
    else:
        points = np.array([[cx, cy - radius], [cx - radius * 1.05, cy + radius * 0.8],
                           [cx + radius * 1.05, cy + radius * 0.8]], np.int32)
        cv2.fillConvexPoly(big_mask, points, 1)
    height = _dome(big_mask)
    shade = _lambert(height, radius)
    image = np.empty((size, size, 3), np.float32)
    image[:] = COLOURS[background]
    object_pixels = big_mask.astype(bool)
    image[object_pixels] = np.asarray(COLOURS[colour], np.float32) * shade[object_pixels, None]
    depth = np.where(object_pixels, 120 + 130 * height, 15).astype(np.float32)
    return _finish(seed, "object", rng, image, big_mask, depth, colour, background,
                   caption_for(colour, background, shape=shape), shape=shape)


def _person_scene(seed: int, rng: np.random.Generator, colour: str, background: str, pose_name: str) -> Scene:
    keypoints = _pose_keypoints(rng, pose_name)
    size = RESOLUTION * SUPERSAMPLE
    points = keypoints * size
    body_height = np.linalg.norm(points[1] - (points[10] + points[13]) / 2)
    width = max(int(body_height * 0.07), 6)
    figure = np.zeros((size, size), np.uint8)
    head = np.zeros((size, size), np.uint8)
    torso = np.array([points[2], points[5], points[11], points[8]], np.int32)
    cv2.fillConvexPoly(figure, torso, 1)
    for a, b in BODY_LIMBS[:12]:
        cv2.line(figure, tuple(points[a].astype(int)), tuple(points[b].astype(int)), 1, width)
    cv2.circle(head, tuple(points[0].astype(int)), int(body_height * 0.09), 1, -1)
    image = np.empty((size, size, 3), np.float32)
    image[:] = COLOURS[background]
    image[figure.astype(bool)] = COLOURS[colour]
    image[head.astype(bool)] = SKIN
    big_mask = np.maximum(figure, head)
    depth = np.where(big_mask.astype(bool), 200, 15).astype(np.float32)
    scene = _finish(seed, "person", rng, image, big_mask, depth, colour, background,
                    caption_for(colour, background, pose_name=pose_name), pose_name=pose_name)
    scene.keypoints = keypoints
    scene.pose = draw_pose_map(keypoints)
    return scene


def _pose_keypoints(rng: np.random.Generator, pose_name: str) -> np.ndarray:
    """18 OpenPose keypoints (normalised) of a standing figure facing the viewer: its left is image right."""
    scale = rng.uniform(0.6, 0.85)
    cx = rng.uniform(0.32, 0.68)
    top = rng.uniform(0.06, 0.94 - scale)
    unit = scale  # body height
    neck = np.array([cx, top + 0.2 * unit])
    points = np.zeros((18, 2))
    points[1] = neck
    points[0] = neck + [0, -0.1 * unit]
    points[14], points[15] = points[0] + [-0.03 * unit, -0.03 * unit], points[0] + [0.03 * unit, -0.03 * unit]
    points[16], points[17] = points[0] + [-0.06 * unit, -0.01 * unit], points[0] + [0.06 * unit, -0.01 * unit]
    points[2], points[5] = neck + [-0.13 * unit, 0.02 * unit], neck + [0.13 * unit, 0.02 * unit]
    points[8], points[11] = neck + [-0.08 * unit, 0.38 * unit], neck + [0.08 * unit, 0.38 * unit]
    arm_angles = {  # degrees from straight down, outwards positive, for (right arm, left arm)
        "arms down": (15, 15), "arms raised": (160, 160), "the left arm raised": (15, 160),
        "the right arm raised": (160, 15), "arms out": (90, 90),
    }[pose_name]
    for (shoulder, elbow, wrist), side, angle in zip(((2, 3, 4), (5, 6, 7)), (-1, 1), arm_angles):
        for joint, start in ((elbow, shoulder), (wrist, elbow)):
            theta = np.radians(angle + rng.uniform(-12, 12))
            points[joint] = points[start] + 0.19 * unit * np.array([side * np.sin(theta), np.cos(theta)])
    spread = rng.uniform(0.0, 0.12)
    for (hip, knee, ankle), side in zip(((8, 9, 10), (11, 12, 13)), (-1, 1)):
        points[knee] = points[hip] + [side * spread * unit, 0.21 * unit]
        points[ankle] = points[knee] + [side * spread * 0.5 * unit, 0.2 * unit]
    return np.clip(points, 0.01, 0.99)


def draw_pose_map(keypoints: np.ndarray, size: int = RESOLUTION) -> np.ndarray:
    """The OpenPose body map, drawn by controlnet_aux's own draw_bodypose, resized like the pipeline does."""
    from controlnet_aux.open_pose.body import Keypoint
    from controlnet_aux.open_pose.util import draw_bodypose
    from PIL import Image

    canvas = np.zeros((POSE_CANVAS, POSE_CANVAS, 3), np.uint8)
    canvas = draw_bodypose(canvas, [Keypoint(float(x), float(y)) for x, y in keypoints])
    if size == POSE_CANVAS:
        return canvas
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.LANCZOS))


def _dome(mask: np.ndarray) -> np.ndarray:
    """A rounded solid over the mask: height 1 on the medial axis, 0 at the outline."""
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    ratio = distance / max(float(distance.max()), 1.0)
    return np.sqrt(np.clip(1 - (1 - ratio) ** 2, 0, 1)) * (mask > 0)


def _lambert(height: np.ndarray, radius: float) -> np.ndarray:
    """Soft light from the top left on the solid, kept between 0.75 and 1 so the colour stays nameable."""
    gy, gx = np.gradient(height * radius * 0.6)
    normal = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([-0.5, -0.5, 0.7])
    light /= np.linalg.norm(light)
    return 0.75 + 0.25 * np.clip(normal @ light, 0, 1)


def _finish(seed, kind, rng, big_image, big_mask, big_depth, colour, background, caption, **extra) -> Scene:
    shrink = (RESOLUTION, RESOLUTION)
    big_uint8 = np.clip(big_image, 0, 255).astype(np.uint8)
    image = cv2.resize(big_uint8, shrink, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(big_mask.astype(np.float32), shrink, interpolation=cv2.INTER_AREA) > 0.5
    depth = cv2.resize(big_depth, shrink, interpolation=cv2.INTER_AREA).astype(np.uint8)
    edges_big = cv2.Canny(big_uint8, 100, 200)
    edge = (cv2.resize(edges_big, shrink, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8) * 255
    low = int(rng.integers(50, 120))
    edge_native = cv2.Canny(image, low, low * 2)
    return Scene(seed=seed, kind=kind, caption=caption, image=image, mask=mask,
                 depth=np.repeat(depth[..., None], 3, axis=-1), edge=np.repeat(edge[..., None], 3, axis=-1),
                 edge_native=np.repeat(edge_native[..., None], 3, axis=-1),
                 pose=np.zeros((RESOLUTION, RESOLUTION, 3), np.uint8), colour=colour, background=background,
                 **extra)


def _stylise(scene: Scene, style: str) -> Scene:
    image = scene.image.astype(np.float32)
    if style == "mono":
        luma = image @ np.array([0.299, 0.587, 0.114], np.float32)
        image = np.repeat(luma[..., None], 3, axis=-1)
    elif style == "stripes":
        yy, xx = np.mgrid[:RESOLUTION, :RESOLUTION]
        band = ((xx + yy) // STRIPE_WIDTH) % 2 == 0
        ink = np.array(_stripe_ink(scene.colour, scene.background), np.float32)
        image[scene.mask & band] = ink
    else:
        raise ValueError(f"Unknown style {style!r}; known styles: {', '.join(STYLES)}")
    scene.image = np.clip(image, 0, 255).astype(np.uint8)
    scene.style = style
    scene.caption = f"{STYLES[style]}, {scene.caption}"
    return scene


def _stripe_ink(colour: str, background: str) -> tuple[int, int, int]:
    """Black stripes, or white or grey where black would vanish into the object or the background."""
    for ink in ("black", "white"):
        if ink not in (colour, background):
            return COLOURS[ink]
    return (128, 128, 128)
