"""Preprocessors: turn a person's photo into the control map a ControlNet expects (edges, pose, depth).

"none" is a choice in every mode: the upload is then used as a ready map. Every map is RGB and exactly the
requested output size; the input is first centre-cropped to that aspect ratio (A1111's "Crop and Resize"),
so the map lines up with the generated image. Detection runs at `detect_resolution` (short side), which
is independent of the output size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from PIL import Image

from ..errors import StudioError
from .depth import MIDAS_FILE, depth_anything, depth_anything_map, midas, midas_map
from .edge import canny_map
from .pose import BODY_FILE, openpose_body, openpose_map
from .resize import crop_to_aspect
from .weights import DetectorSources, annotators_present, clear_detector_cache, model_present

logger = logging.getLogger(__name__)

__all__ = [
    "PREPROCESSORS",
    "DetectorSources",
    "Preprocessor",
    "available_preprocessors",
    "clear_detector_cache",
    "load_detectors",
    "make_control_map",
]


@dataclass(frozen=True)
class Preprocessor:
    name: str
    options: tuple[str, ...]  # the request parameters it reads (declared in pipelines/parameters.py)
    run: Callable[..., Image.Image] | None  # (cropped image, size, **options) -> map; None: a ready map
    # Whether its weights are on this machine; None: it needs none. A detector with weights also takes
    # `sources=` (where to find them) in `run`.
    present: Callable[[DetectorSources], bool] | None = None
    load: Callable[[DetectorSources], object] | None = None  # loads (and caches) the weights every run needs

    def available(self, sources: DetectorSources) -> bool:
        return self.present is None or self.present(sources)


PREPROCESSORS: Mapping[str, Preprocessor] = {
    preprocessor.name: preprocessor
    for preprocessor in (
        Preprocessor("none", (), None),
        Preprocessor("canny", ("detect_resolution", "low_threshold", "high_threshold"), canny_map),
        Preprocessor(
            "openpose", ("detect_resolution", "include_hands", "include_face"), openpose_map,
            lambda sources: annotators_present(sources, BODY_FILE), openpose_body,
        ),
        Preprocessor(
            "depth_anything", ("detect_resolution",), depth_anything_map,
            lambda sources: model_present(sources.depth_model), depth_anything,
        ),
        Preprocessor(
            "midas", ("detect_resolution",), midas_map, lambda sources: annotators_present(sources, MIDAS_FILE), midas
        ),
    )
}


def make_control_map(
    preprocessor: str,
    image: Image.Image,
    size: tuple[int, int],
    options: Mapping[str, object],
    sources: DetectorSources | None = None,
) -> Image.Image:
    """The control map `preprocessor` makes from `image`, as an RGB image of exactly `size` (width, height).

    The values are checked already (`pipelines/validation.py`); `options` holds at least the preprocessor's own.
    With "none" the image is taken as a ready map and only cropped and resized. Missing detector weights raise
    a StudioError that names the file.
    """
    chosen = PREPROCESSORS[preprocessor]
    cropped = crop_to_aspect(image, size)
    if chosen.run is None:
        return cropped.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    kwargs = {name: options[name] for name in chosen.options}
    if chosen.present is not None:
        kwargs["sources"] = sources or DetectorSources()
    return chosen.run(cropped, size, **kwargs)


def available_preprocessors(names: tuple[str, ...], sources: DetectorSources) -> tuple[str, ...]:
    """`names` whose weights are on this machine, in their order."""
    return tuple(name for name in names if PREPROCESSORS[name].available(sources))


def load_detectors(sources: DetectorSources) -> list[str]:
    """Load every detector whose weights are on this machine (ZeroGPU: before the fork, so no call loads one);
    returns the names loaded."""
    loaded = []
    for preprocessor in PREPROCESSORS.values():
        if preprocessor.load is not None and preprocessor.available(sources):
            try:
                preprocessor.load(sources)
            except StudioError as error:  # a damaged file: said again to whoever asks for that detector
                logger.warning("the %s detector did not load: %s", preprocessor.name, error)
                continue
            loaded.append(preprocessor.name)
    return loaded
