"""Edge maps: OpenCV Canny, no weights. White edges on black, strictly binary at any output size."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from .resize import resize_short_side


def canny_map(
    image: Image.Image, size: tuple[int, int], *, low_threshold: int, high_threshold: int, detect_resolution: int
) -> Image.Image:
    """Canny edges found at `detect_resolution` (short side), returned as a binary RGB map of `size`."""
    pixels = resize_short_side(np.asarray(image.convert("RGB")), detect_resolution)
    edges = cv2.Canny(pixels, low_threshold, high_threshold)
    return Image.fromarray(resize_binary(edges, size)).convert("RGB")


def resize_binary(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 0/255 mask to `size` (width, height) and keep it 0/255.

    Shrinking marks a pixel as an edge if any edge falls in its area, so thin edges are not lost;
    growing repeats pixels, so no grey fringe appears.
    """
    height, width = mask.shape[:2]
    if (width, height) == tuple(size):
        return mask
    shrinking = size[0] * size[1] < width * height
    resized = cv2.resize(mask, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_NEAREST)
    return np.where(resized > 0, 255, 0).astype(np.uint8)
