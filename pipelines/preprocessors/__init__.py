"""Preprocessors: turn a person's photo into the control map a ControlNet expects (edges, pose, depth).

"none" is a choice in every mode: the upload is then used as a ready map. Every map is RGB and exactly the
requested output size; the input is first centre-cropped to that aspect ratio (A1111's "Crop and Resize"),
so the map lines up with the generated image. Detection runs at `detect_resolution` (short side), which
is independent of the output size.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ..errors import StudioError
from .depth import DEFAULT_DEPTH_MODEL, DEPTH_MODEL_ENV, depth_anything_map, midas_map
from .edge import canny_map
from .pose import openpose_map
from .resize import crop_to_aspect
from .weights import ANNOTATORS_ENV, ANNOTATORS_REPO, clear_detector_cache

__all__ = [
    "ANNOTATORS_ENV",
    "ANNOTATORS_REPO",
    "DEFAULT_DEPTH_MODEL",
    "DEPTH_MODEL_ENV",
    "PREPROCESSORS",
    "PreprocessOptions",
    "clear_detector_cache",
    "make_control_map",
    "validate_preprocessing",
]

PREPROCESSORS: dict[str, tuple[str, ...]] = {
    "edge": ("canny", "none"),
    "pose": ("openpose", "none"),
    "depth": ("depth_anything", "midas", "none"),
}

MIN_DETECT_RESOLUTION = 64
MAX_DETECT_RESOLUTION = 2048
MAX_SIDE = 8192


@dataclass(frozen=True)
class PreprocessOptions:
    low_threshold: int = 100
    high_threshold: int = 200
    include_hands: bool = False
    include_face: bool = False
    detect_resolution: int = 512


def validate_preprocessing(mode: str, preprocessor: str, options: PreprocessOptions) -> None:
    """Raise StudioError for an unknown mode or preprocessor, or options out of range for the chosen one.

    Only options the chosen preprocessor uses are checked, so stale slider values of another one do no harm.
    """
    if mode not in PREPROCESSORS:
        raise StudioError(f"Unknown control mode {mode!r}; choose one of: {', '.join(PREPROCESSORS)}.")
    if preprocessor not in PREPROCESSORS[mode]:
        choices = ", ".join(PREPROCESSORS[mode])
        raise StudioError(f"Unknown preprocessor {preprocessor!r} for {mode} mode; choose one of: {choices}.")
    if preprocessor == "none":
        return
    if preprocessor == "canny":
        _check_thresholds(options.low_threshold, options.high_threshold)
    resolution = options.detect_resolution
    if not _is_int(resolution) or not MIN_DETECT_RESOLUTION <= resolution <= MAX_DETECT_RESOLUTION:
        raise StudioError(
            f"Detection resolution must be a whole number from {MIN_DETECT_RESOLUTION} to "
            f"{MAX_DETECT_RESOLUTION}, not {resolution!r}."
        )


def make_control_map(
    mode: str, preprocessor: str, image: Image.Image, size: tuple[int, int], options: PreprocessOptions
) -> Image.Image:
    """The control map for `mode` made from `image` by `preprocessor`, as an RGB image of exactly `size`.

    `size` is (width, height). With preprocessor "none" the image is taken as a ready map and only
    cropped and resized. Missing detector weights raise a StudioError that names the file.
    """
    validate_preprocessing(mode, preprocessor, options)
    _check_size(size)
    size = (int(size[0]), int(size[1]))
    cropped = crop_to_aspect(image, size)
    resolution = options.detect_resolution
    if preprocessor == "none":
        return cropped.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    if preprocessor == "canny":
        return canny_map(
            cropped,
            size,
            low_threshold=int(options.low_threshold),
            high_threshold=int(options.high_threshold),
            detect_resolution=resolution,
        )
    if preprocessor == "openpose":
        return openpose_map(
            cropped,
            size,
            include_hands=bool(options.include_hands),
            include_face=bool(options.include_face),
            detect_resolution=resolution,
        )
    if preprocessor == "depth_anything":
        return depth_anything_map(cropped, size, detect_resolution=resolution)
    return midas_map(cropped, size, detect_resolution=resolution)


def _check_thresholds(low: int, high: int) -> None:
    for name, value in (("Low", low), ("High", high)):
        if not _is_int(value) or not 0 <= value <= 255:
            raise StudioError(f"{name} Canny threshold must be a whole number from 0 to 255, not {value!r}.")
    if low > high:
        raise StudioError(f"Low Canny threshold ({low}) must not be above the high threshold ({high}).")


def _check_size(size: tuple[int, int]) -> None:
    if len(size) != 2 or not all(_is_int(side) and 1 <= side <= MAX_SIDE for side in size):
        raise StudioError(f"Control map size must be two whole numbers from 1 to {MAX_SIDE}, not {size!r}.")


def _is_int(value: object) -> bool:
    # Sliders and API callers send 100.0 for 100; accept whole floats, refuse 100.5 and True.
    return not isinstance(value, bool) and isinstance(value, (int, float)) and float(value).is_integer()
