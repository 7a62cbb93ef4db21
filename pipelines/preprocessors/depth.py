"""Depth maps: Depth Anything V2 through transformers, or MiDaS (DPT-Hybrid) through controlnet-aux.

Both models predict relative inverse depth, so after scaling to 0..255 near is bright and far is dark,
which is what ControlNet depth models were trained on. The map is greyscale repeated over 3 channels.
Both run in fp32 on `DetectorSources.device`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import StudioError
from .resize import resize_map
from .weights import (
    DEFAULT_DEPTH_MODEL,
    DetectorSources,
    annotator_file,
    cached_detector,
    import_controlnet_aux,
    load_annotator,
    missing_weights_error,
)

MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"


def depth_anything_map(
    image: Image.Image, size: tuple[int, int], *, detect_resolution: int, sources: DetectorSources
) -> Image.Image:
    """Depth estimated with the short side near `detect_resolution`, as a 3-channel grey map of `size`."""
    estimator = depth_anything(sources)
    model = estimator.model
    # The processor's own size (518) would ignore the detection resolution; it keeps the aspect ratio
    # and rounds to the model's patch multiple.
    inputs = estimator.image_processor(
        images=image.convert("RGB"),
        size={"height": detect_resolution, "width": detect_resolution},
        return_tensors="pt",
    )
    # The model is called directly (the pipeline's __call__ has no detection size), so moving tensors is ours
    # to do: inputs to the model's device, the result back to the CPU, the only memory numpy reads.
    with torch.inference_mode():
        predicted = model(**inputs.to(device=model.device, dtype=model.dtype)).predicted_depth
        upsampled = torch.nn.functional.interpolate(
            predicted[:, None].float(), size=(size[1], size[0]), mode="bicubic", align_corners=False
        )
    return _grey_rgb(upsampled[0, 0].cpu().numpy())


def midas_map(
    image: Image.Image, size: tuple[int, int], *, detect_resolution: int, sources: DetectorSources
) -> Image.Image:
    """MiDaS DPT-Hybrid depth found at `detect_resolution` (short side), as a 3-channel grey map of `size`."""
    depth = midas(sources)(
        np.asarray(image.convert("RGB")),
        detect_resolution=detect_resolution,
        image_resolution=detect_resolution,
        output_type="np",
    )
    return resize_map(depth, size)


def depth_anything(sources: DetectorSources):
    """The Depth Anything pipeline on `sources.device`, loaded once."""
    source, device = sources.depth_model, sources.device
    return cached_detector("depth_anything", source, device, lambda: _load_depth_pipeline(source, device))


def midas(sources: DetectorSources):
    """controlnet-aux's MiDaS detector on `sources.device`, loaded once."""
    return cached_detector("midas", sources.annotators_label, sources.device, lambda: _load_midas(sources))


def _load_depth_pipeline(source: str, device: str):
    from transformers import pipeline

    try:
        # An explicit device: given none, transformers 5 moves the model to the first accelerator it finds.
        # An explicit dtype: "auto" would keep whatever precision the checkpoint was saved in.
        return pipeline("depth-estimation", model=source, device=device, dtype=torch.float32)
    except (OSError, ValueError) as error:
        # Offline and uncached, transformers raises OSError; a folder without a usable config, ValueError.
        files = "config.json, preprocessor_config.json and model.safetensors"
        reason = f"{source if source == DEFAULT_DEPTH_MODEL else 'the STUDIO_DEPTH_MODEL model'} could not be loaded"
        raise missing_weights_error(
            "Depth Anything", files, "STUDIO_DEPTH_MODEL", DEFAULT_DEPTH_MODEL, "depth", reason
        ) from error


def _load_midas(sources: DetectorSources):
    path = annotator_file(MIDAS_FILE, what="MiDaS", mode="depth", sources=sources)
    detectors = import_controlnet_aux("midas")
    inference = load_annotator(
        path, lambda weights: import_controlnet_aux("midas.api").MiDaSInference("dpt_hybrid", weights), what="MiDaS"
    )
    # Moved after loading, so a device error is not reported as a damaged file. MidasDetector itself moves each
    # input to its weights' device and the depth back to the CPU.
    return detectors.MidasDetector(inference.to(sources.device))


def _grey_rgb(depth: np.ndarray) -> Image.Image:
    low, high = float(depth.min()), float(depth.max())
    if not np.isfinite([low, high]).all():
        raise StudioError("The depth model produced invalid values for this image.")
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    grey = np.rint(scaled * 255.0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
