"""img2img and inpainting: the start image and mask at the request's size, and keeping what the mask keeps.

An image of another shape than the output is cropped at its centre, as control maps are (A1111's "Crop and
Resize"), so a start image and a control map made from the same picture line up; the result's notes say so.

diffusers' inpainting pipeline blends the original latents back outside the mask at every step, but the VAE's
round trip still changes those pixels. As AUTOMATIC1111 does, the original is pasted back over the result
through the blurred mask: outside it every pixel is the input's, and the seam is as wide as the blur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from pipelines.errors import StudioError
from pipelines.images import prepare_user_image
from pipelines.modes import MODES
from pipelines.preprocessors.resize import crop_note, crop_to_aspect
from pipelines.request import GenerationRequest
from pipelines.vae import decode_latents, encode

# A mask may be drawn at another resolution than its image, but not at another shape: it would no longer line up.
MASK_SHAPE_TOLERANCE = 0.02


@dataclass(frozen=True)
class EditInputs:
    start: Image.Image  # the image to start from, at the request's size
    mask: Image.Image | None = None  # inpainting: white is repainted, blurred by the request's mask blur
    notes: tuple[str, ...] = ()  # what was cropped, for the person to read


def edit_inputs(request: GenerationRequest, max_pixels: int) -> EditInputs:
    """The start image (and mask) cropped to the output's shape as the control maps are, so all of them line up."""
    mode = MODES[request.mode]
    size = (request.width, request.height)
    what = mode.image_label.lower()
    given = prepare_user_image(request.image, max_pixels=max_pixels, what=what, background="white")
    notes = tuple(filter(None, [crop_note(what, given.size, size)]))
    start = crop_to_aspect(given, size).resize(size, Image.Resampling.LANCZOS)
    if mode.edits != "inpaint":
        return EditInputs(start, notes=notes)
    mask = prepare_user_image(request.mask, max_pixels=max_pixels, what="mask").convert("L")
    _check_mask_shape(mask.size, given.size)
    mask = crop_to_aspect(mask, size).resize(size, Image.Resampling.NEAREST)
    mask = mask.point(lambda value: 255 if value >= 128 else 0)
    if not mask.getbbox():
        raise StudioError("The mask (mask) has no white or light part, so nothing would be repainted: paint the part "
                          "to redo white.")
    blurred = VaeImageProcessor.blur(mask, request.mask_blur) if request.mask_blur else mask
    return EditInputs(start, blurred, notes)


def size_for_picture(picture: tuple[int, int], area: int, multiple: int, max_side: int) -> tuple[int, int]:
    """A width and height for an edit of `picture`: multiples of `multiple` up to `max_side`, of about `area` pixels
    and as near the picture's shape as those allow, so that little or nothing of it is cropped."""
    shape = picture[0] / picture[1]

    def misfit(size: tuple[int, int]) -> float:
        # A wrong shape crops the picture; a wrong area only scales it: the shape weighs more.
        return 10 * abs(math.log(size[0] / size[1] / shape)) + abs(math.log(size[0] * size[1] / area))

    sides = range(multiple, max_side + 1, multiple)
    return min(((width, min(sides, key=lambda height: abs(height - width / shape))) for width in sides), key=misfit)


def _check_mask_shape(mask: tuple[int, int], image: tuple[int, int]) -> None:
    if abs(mask[0] / mask[1] - image[0] / image[1]) > MASK_SHAPE_TOLERANCE * image[0] / image[1]:
        raise StudioError(f"The mask (mask) is {mask[0]}x{mask[1]} and the image {image[0]}x{image[1]}: a mask must "
                          "have its image's shape to line up with it (any resolution).")


def strength_of(request: GenerationRequest) -> float:
    """Noise as the masked content: the repainted part starts from pure noise (strength 1)."""
    return 1.0 if request.mode == "inpaint" and request.masked_content == "noise" else request.strength


def denoises(request: GenerationRequest) -> bool:
    """Whether the strength leaves at least one denoising step (diffusers runs int(steps x strength) of them)."""
    return int(request.steps * strength_of(request)) > 0


def through_the_vae(pipe: DiffusionPipeline, image: Image.Image) -> Image.Image:
    """What a run with no denoising step gives: the image encoded and decoded by the model's VAE."""
    [decoded] = decode_latents(pipe, encode(pipe, pipe.image_processor.preprocess(image)))
    return decoded


def keep_unmasked(pipe: DiffusionPipeline, inputs: EditInputs, image: Image.Image) -> Image.Image:
    """`image` with the start image pasted back wherever the mask keeps it."""
    return pipe.image_processor.apply_overlay(inputs.mask, inputs.start, image)

