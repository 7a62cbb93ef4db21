"""Turn whatever a person or API caller sent as an input image into an 8-bit RGB PIL image.

Everything that can go wrong with an upload (nothing sent, a missing, empty, corrupt or truncated file,
an image far too large, an exotic pixel format) ends in a `StudioError` with a plain message.

Conversions, and why:

- Transparency (RGBA, LA, PA, P or L with a transparent colour) is composited onto black by default: in a
  ready control map (edges, pose skeleton, depth) or a mask black means "no signal", so a transparent
  background must not turn into a white (or random) one that the ControlNet would read as edges or as "very
  near". A picture to edit asks for white instead, as AUTOMATIC1111's img2img does: a cut-out on a
  transparent background is an object on a white page, not in the dark.
- 16-bit images ("I;16", "I;16B", "I;16L") have a fixed full scale, so they are scaled by 65535: the
  result looks exactly as in any image viewer and a mid-grey stays mid-grey.
- 32-bit integer ("I") and float ("F") images have no full scale (raw depth in millimetres, floats in
  an arbitrary unit), so they are stretched from their actual minimum to their actual maximum, the
  same normalisation depth estimators apply to their own output; a constant image becomes black.
- Greyscale, bilevel, CMYK and other colour modes go through Pillow's own conversion to RGB.
- EXIF orientation is applied, so a phone photo is upright, as the person saw it.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import StudioError

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_UNSCALED_MODES = ("I", "F")


def prepare_user_image(
    image: Image.Image | str | os.PathLike | None,
    *,
    max_pixels: int,
    what: str = "control image",
    background: str = "black",
) -> Image.Image:
    """Return `image` (a PIL image or the path of an image file) as a new 8-bit RGB image.

    `what` names the image in messages, e.g. "pose image" gives "Pose mode needs a pose image ...".
    The size is checked against `max_pixels` before the pixels of a file are decoded. Transparent parts show
    `background`.
    """
    if image is None or (isinstance(image, str) and not image.strip()):
        raise StudioError(f"No {what} was given: upload an image first.")
    if isinstance(image, (str, os.PathLike)):
        return _open_image_file(os.fspath(image), max_pixels=max_pixels, what=what, background=background)
    if isinstance(image, Image.Image):
        _check_size(image.size, max_pixels=max_pixels, what=what)
        return _to_rgb(ImageOps.exif_transpose(image), what=what, background=background)
    raise StudioError(f"The {what} must be an image or the path of an image file, not {type(image).__name__}.")


def _open_image_file(path: str, *, max_pixels: int, what: str, background: str) -> Image.Image:
    if not os.path.isfile(path):
        raise StudioError(f"The {what} file {os.path.basename(path)!r} does not exist.")
    if os.path.getsize(path) == 0:
        raise StudioError(f"The {what} file {os.path.basename(path)!r} is empty.")
    name = os.path.basename(path)
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a refusal must not depend on warning filters.
    with warnings.catch_warnings(action="error", category=Image.DecompressionBombWarning):
        try:
            with Image.open(path) as opened:
                # Image.open reads only the header: refuse a huge image before decoding its pixels.
                _check_size(opened.size, max_pixels=max_pixels, what=what)
                opened.load()
                upright = ImageOps.exif_transpose(opened)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise StudioError(
                f"The {what} {name!r} declares a size too large to open safely ({error}); "
                f"the limit is {max_pixels:,} pixels."
            ) from None
        except UnidentifiedImageError:
            raise StudioError(f"The {what} {name!r} is not an image file Pillow can read.") from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            # Truncated or corrupt data shows up on decode as OSError / SyntaxError / EOFError / ValueError.
            raise StudioError(f"The {what} {name!r} is damaged and cannot be decoded ({error}).") from None
    return _to_rgb(upright, what=what, background=background)


def _check_size(size: tuple[int, int], *, max_pixels: int, what: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise StudioError(f"The {what} is empty ({width}x{height} pixels).")
    if width * height > max_pixels:
        raise StudioError(
            f"The {what} is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels. "
            "Resize it and upload it again."
        )


def _to_rgb(image: Image.Image, *, what: str, background: str) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _scale_to_8bit(np.asarray(image, dtype=np.float64), low=0.0, high=65535.0)
    elif image.mode in _UNSCALED_MODES:
        image = _stretch_to_8bit(np.asarray(image, dtype=np.float64))
    if _has_transparency(image):
        return _composite_on(image, background)
    if image.mode == "RGB":
        return image.copy()
    try:
        return image.convert("RGB")
    except ValueError:
        raise StudioError(
            f"The {what} uses the colour mode {image.mode!r}, which cannot be converted to RGB."
        ) from None


def _has_transparency(image: Image.Image) -> bool:
    return "A" in image.getbands() or image.mode in ("RGBa", "La") or "transparency" in image.info


def _composite_on(image: Image.Image, background: str) -> Image.Image:
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba).convert("RGB")


def _stretch_to_8bit(values: np.ndarray) -> Image.Image:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Image.new("L", (values.shape[1], values.shape[0]), 0)
    return _scale_to_8bit(
        np.nan_to_num(values, nan=finite.min(), posinf=finite.max(), neginf=finite.min()),
        low=finite.min(),
        high=finite.max(),
    )


def _scale_to_8bit(values: np.ndarray, *, low: float, high: float) -> Image.Image:
    span = high - low
    if span <= 0:
        return Image.new("L", (values.shape[1], values.shape[0]), 0)
    scaled = np.clip((values - low) / span, 0.0, 1.0) * 255.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8))
