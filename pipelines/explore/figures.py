"""Measured figures a sweep shows under its columns, and the words of the embedded model's world they need.

The embedded model draws one shape in one palette colour on another (`embedded/world.py` draws with the palette
and shape words defined here; serving cannot import `embedded/`). On its pictures the object's colour can be
measured against the colour the prompt names; saturation (clipped pixel values) and the distance between two
pictures mean something on any model. Images are RGB uint8, HxWx3.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
MAX_RGB_DISTANCE = float(np.sqrt(3) * 255)
PALETTE_NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[name] for name in PALETTE_NAMES], np.float32)
_OBJECT_COLOUR = re.compile(rf"\b({'|'.join(COLOURS)})\s+({'|'.join(SHAPES)})\b", re.IGNORECASE)


def named_object_colour(prompt: str) -> str | None:
    """The colour a prompt gives its shape ("a red circle on ..." -> "red"), or None if it names none."""
    found = _OBJECT_COLOUR.search(prompt)
    return found.group(1).lower() if found else None


def nearest_colour(rgb) -> str:
    """The palette colour nearest to an RGB triple (shading keeps objects nearest their own colour)."""
    distances = np.linalg.norm(PALETTE - np.asarray(rgb, np.float32), axis=-1)
    return PALETTE_NAMES[int(np.argmin(distances))]


def background_colour(image: np.ndarray) -> np.ndarray:
    """Median colour of the image's border, where the synthetic world never puts the object."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def object_mask(image: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """The foreground: largest blob of pixels far from the background colour, holes filled.

    A first cut at `threshold` finds the object; the final cut is halfway between the background and the
    object's own colour, so anti-aliased rims count as they would at pixel coverage one half.
    """
    distance = np.linalg.norm(image.astype(np.float32) - background_colour(image), axis=-1)
    core = _largest_blob(distance > threshold)
    if core.sum() >= 4:
        threshold = 0.5 * float(np.percentile(distance[core], 25))
    return fill_holes(_largest_blob(distance > threshold))


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=-1)
    return filled.astype(bool)


def object_rgb(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray | None:
    """Median RGB of the object's inner pixels (its rim blends with the background), or None if no object."""
    mask = object_mask(image) if mask is None else mask
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    pixels = image[inner if inner.sum() >= 4 else mask]
    return np.median(pixels.astype(np.float32), axis=0) if len(pixels) else None


def object_colour(image: np.ndarray, mask: np.ndarray | None = None) -> str:
    """Name of the object's colour: the palette colour nearest the median of its inner pixels."""
    rgb = object_rgb(image, mask)
    return "none" if rgb is None else nearest_colour(rgb)


def colour_error(image: np.ndarray, colour: str, mask: np.ndarray | None = None) -> float:
    """Distance (0..441, RGB) from the object's colour to the named palette colour; no object counts as the
    largest distance. Finer than right/wrong: it still tells two models apart when both name every colour."""
    rgb = object_rgb(image, mask)
    return MAX_RGB_DISTANCE if rgb is None else float(np.linalg.norm(rgb - PALETTE[PALETTE_NAMES.index(colour)]))


def chroma(image: np.ndarray) -> float:
    """Mean colourfulness (max - min channel, 0..1): the greyscale style drives it toward 0."""
    pixels = image.astype(np.float32)
    return float((pixels.max(axis=-1) - pixels.min(axis=-1)).mean() / 255)


def saturated_share(image: np.ndarray) -> float:
    """Share of pixel values (0..1) at the very end of the range, 0 or 255: where the decoder's output was clipped.
    Strong guidance pushes colours past what can be shown, the over-cooked look; this counts it."""
    return float(((image == 0) | (image == 255)).mean())


def pixel_distance(image: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference per channel, 0..255: 0 is the same picture."""
    return float(np.abs(image.astype(np.float32) - reference.astype(np.float32)).mean())
