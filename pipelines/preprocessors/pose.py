"""Pose maps: controlnet-aux's OpenPose (body, optionally hands and face), drawn OpenPose-style on black.

Only the parts asked for are loaded: body_pose_model.pth always, hand_pose_model.pth with hands,
facenet.pth with the face (controlnet-aux's own `from_pretrained` would load all three). Each part is put on
`DetectorSources.device` (`OpenposeDetector.to` would fail on a part left out); Body, Hand and Face move their
inputs to their weights' device and their results back to the CPU themselves.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .resize import resize_map
from .weights import DetectorSources, annotator_file, cached_detector, import_controlnet_aux, load_annotator

BODY_FILE = "body_pose_model.pth"
HAND_FILE = "hand_pose_model.pth"
FACE_FILE = "facenet.pth"


def openpose_map(
    image: Image.Image,
    size: tuple[int, int],
    *,
    include_hands: bool,
    include_face: bool,
    detect_resolution: int,
    sources: DetectorSources,
) -> Image.Image:
    """The OpenPose skeleton(s) found at `detect_resolution` (short side), as an RGB map of `size`."""
    open_pose = import_controlnet_aux("open_pose")
    detector = open_pose.OpenposeDetector(
        openpose_body(sources),
        _part("hand", HAND_FILE, "Hand", sources) if include_hands else None,
        _part("face", FACE_FILE, "Face", sources) if include_face else None,
    )
    skeleton = detector(
        np.asarray(image.convert("RGB")),
        detect_resolution=detect_resolution,
        image_resolution=detect_resolution,
        include_body=True,
        include_hand=include_hands,
        include_face=include_face,
        output_type="np",
    )
    return resize_map(skeleton, size)


def openpose_body(sources: DetectorSources) -> object:
    """The OpenPose body model on `sources.device`, loaded once (hands and face load when a request asks)."""
    return _part("body", BODY_FILE, "Body", sources)


def _part(name: str, filename: str, class_name: str, sources: DetectorSources) -> object:
    def load() -> object:
        path = annotator_file(filename, what=f"OpenPose {name}", mode="pose", sources=sources)
        part_class = getattr(import_controlnet_aux("open_pose"), class_name)
        part = load_annotator(path, part_class, what=f"OpenPose {name}")
        return part.to(sources.device)  # after loading, so a device error is not reported as a damaged file

    return cached_detector(f"openpose-{name}", sources.annotators_label, sources.device, load)
