"""Resizing shared by the preprocessors: crop to the output's aspect ratio, detection resolution."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def crop_to_aspect(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Centre-crop `image` to the aspect ratio of `size` (width, height), like A1111's "Crop and Resize".

    Cropping before detection keeps poses and shapes undistorted and aligned with the generated image.
    """
    return image.crop(_centre_box(image.size, size))


def crop_note(what: str, original: tuple[int, int], size: tuple[int, int]) -> str | None:
    """What `crop_to_aspect` takes off an image of `original` size for an output of `size`, in words; else None."""
    left, top, right, bottom = _centre_box(original, size)
    if (right - left, bottom - top) == tuple(original):
        return None
    return (f"The {what}, {original[0]}x{original[1]}, was cropped at its centre to {right - left}x{bottom - top}, "
            f"the shape of the {size[0]}x{size[1]} output; set the width and height to its shape to keep all of it.")


def _centre_box(original: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = original
    target_ratio = size[0] / size[1]
    if width / height > target_ratio:
        new_width = max(1, round(height * target_ratio))
        left = (width - new_width) // 2
        return left, 0, left + new_width, height
    new_height = max(1, round(width / target_ratio))
    top = (height - new_height) // 2
    return 0, top, width, top + new_height


def resize_short_side(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """Resize an HxWxC array so its short side is `resolution`, keeping the aspect ratio."""
    height, width = pixels.shape[:2]
    scale = resolution / min(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new_size == (width, height):
        return pixels
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(pixels, new_size, interpolation=interpolation)


def resize_map(pixels: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Resize a detector's map (HxW or HxWx3 uint8) to exactly `size` and return it as RGB."""
    height, width = pixels.shape[:2]
    if (width, height) != tuple(size):
        shrinking = size[0] * size[1] < width * height
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return Image.fromarray(pixels).convert("RGB")
