"""Classical measures of what a generated image shows: colours, the object's shape and mask, limbs, styles.

They read images of the synthetic world (RGB uint8, HxWx3) and are checked on its ground truth first.
"""

from __future__ import annotations

import cv2
import numpy as np

from embedded.world import BODY_LIMBS

# The colour measures live with the app's Explore tab, which shows them and cannot import embedded/.
from pipelines.explore.figures import (  # noqa: F401 - measures.* is where training and tests read them
    MAX_RGB_DISTANCE,
    PALETTE,
    PALETTE_NAMES,
    background_colour,
    chroma,
    colour_error,
    fill_holes,
    nearest_colour,
    object_colour,
    object_mask,
    object_rgb,
)

MAX_FIGURE_SHARE = 0.35



def figure_mask(image: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Every foreground pixel (a figure's limbs are thin), without filling.

    A figure covers about a tenth of the picture; when most pixels differ from the background, no figure
    stands out (noise, a flood of colour) and the mask is empty, so coverage cannot be won by flooding.
    """
    distance = np.linalg.norm(image.astype(np.float32) - background_colour(image), axis=-1)
    mask = distance > threshold
    return mask if mask.mean() < MAX_FIGURE_SHARE else np.zeros(mask.shape, bool)


def shape_of(mask: np.ndarray) -> str:
    """circle, square or triangle from how much of its bounding box the outline fills and its corners."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return "none"
    contour = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(contour)
    _, _, width, height = cv2.boundingRect(contour)
    if area < 6 or width < 3 or height < 3:
        return "none"
    fill = area / float(width * height)
    if fill < 0.66:
        return "triangle"
    if fill > 0.86:
        return "square"
    return "circle"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def edge_outlined_mask(edge_map: np.ndarray) -> np.ndarray:
    """The region an edge map outlines: close small gaps in the edges, then fill the outer contour."""
    edges = (edge_map[..., 0] if edge_map.ndim == 3 else edge_map) > 127
    closed = cv2.morphologyEx(edges.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    return fill_holes(closed)


def depth_foreground(depth_map: np.ndarray) -> np.ndarray:
    """Near pixels of a MiDaS-style map (near = bright): brighter than halfway between far and near."""
    depth = (depth_map[..., 0] if depth_map.ndim == 3 else depth_map).astype(np.float32)
    far, near = np.percentile(depth, 5), depth.max()
    return depth > (far + near) / 2


def limb_coverage(mask: np.ndarray, keypoints: np.ndarray, samples: int = 9, needed: float = 0.6) -> float:
    """Share of body limbs (OpenPose skeleton, face excluded) lying on the figure for most of their length."""
    height, width = mask.shape
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    covered = 0
    for a, b in BODY_LIMBS:
        t = np.linspace(0.1, 0.9, samples)[:, None]
        points = keypoints[a] * (1 - t) + keypoints[b] * t
        xs = np.clip((points[:, 0] * width).astype(int), 0, width - 1)
        ys = np.clip((points[:, 1] * height).astype(int), 0, height - 1)
        covered += grown[ys, xs].mean() >= needed
    return covered / len(BODY_LIMBS)


def colour_share(image: np.ndarray, colour: str, max_distance: float = 90.0) -> float:
    """Share of the image's pixels whose nearest palette colour is `colour` (and near enough to it)."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    distances = np.linalg.norm(pixels[:, None, :] - PALETTE[None], axis=-1)
    nearest = np.argmin(distances, axis=1)
    index = PALETTE_NAMES.index(colour)
    return float(((nearest == index) & (distances[:, index] < max_distance)).mean())


def stripe_energy(image: np.ndarray) -> float:
    """Mean absolute Laplacian of the luma inside the object (0..1): flat objects score low, stripes high."""
    mask = object_mask(image)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if inner.sum() < 4:
        return 0.0
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    return float(np.abs(cv2.Laplacian(luma, cv2.CV_32F))[inner].mean())


STYLE_MEASURES = {"stripes": ("stripe energy", stripe_energy, +1), "mono": ("chroma", chroma, -1)}
