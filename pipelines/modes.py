"""Every mode, declared once: its tab title, endpoint, hint, preprocessors and default ControlNet per family.

A mode's parameters follow from the declaration: every mode takes the prompting and sampling parameters;
a mode with preprocessors also takes a control image, its preprocessors' options and the ControlNet settings.
Adding a mode is one entry here plus its pipeline code; the tab, the endpoint and the checks follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipelines.a1111 import ControlModule
from pipelines.preprocessors import PREPROCESSORS

PROMPTING = ("prompt", "negative_prompt", "loras")
SAMPLING = (
    "seed", "randomize_seed", "steps", "guidance_scale", "scheduler", "width", "height", "num_images",
)
CONTROL = ("controlnet_scale", "control_start", "control_end")
# The style reference (an IP-Adapter, pipelines/style.py), which every mode takes, last.
STYLE = ("style_image", "style_scale", "style_mode")
# The fields an example fills in (`examples/<set>/prompts.json`, `ui/examples.py`): its seed is fixed, so a person
# who clicks it sees what its prompt says.
EXAMPLE_SEED = ("seed", "randomize_seed")
# What img2img and inpainting take before the prompt's sampling settings: the image, and how much of it to redo.
EDITING = {
    "img2img": ("image", *PROMPTING, "strength"),
    "inpaint": ("image", "mask", *PROMPTING, "strength", "mask_blur", "masked_content"),
}


@dataclass(frozen=True)
class Mode:
    name: str
    title: str
    endpoint: str
    hint: str
    preprocessors: tuple[str, ...] = ()  # the first whose weights are here is the default
    controlnets: Mapping[str, str] = field(default_factory=dict)  # family -> ControlNet hub id
    edits: str = ""  # "img2img" or "inpaint": the mode starts from the request's image instead of noise
    union_type: int | None = None  # the control type a ControlNet Union model knows this mode's maps by
    image_label: str = "Control image"
    # AUTOMATIC1111's ControlNet names: the module each preprocessor is written as (the first listed for it; the
    # others are read too), and the word its module and model names carry (depth_leres, control_v11p_sd15_canny).
    a1111_modules: Mapping[str, ControlModule] = field(default_factory=dict)
    a1111_word: str = ""

    @property
    def starts_from_image(self) -> bool:
        return bool(self.edits)

    @property
    def is_controlled(self) -> bool:
        return bool(self.preprocessors)

    @property
    def example_columns(self) -> tuple[str, ...]:
        """The fields an example of this mode fills in, in the order `ui/examples.py` gives their values."""
        if self.edits:
            pictures = tuple(name for name in EDITING[self.edits] if name in ("image", "mask"))
            return ("prompt", *pictures, "strength", "loras", *EXAMPLE_SEED)
        if self.is_controlled:
            return ("prompt", "image", "preprocessor", "loras", *EXAMPLE_SEED)
        return ("prompt", "loras", *EXAMPLE_SEED)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The endpoint's parameters, in the order the API lists them."""
        if self.edits:
            return (*EDITING[self.edits], *SAMPLING, "preset", "control_units", *STYLE)
        # New parameters come last, so every earlier parameter keeps its position for positional API callers.
        if not self.is_controlled:
            return (*PROMPTING, *SAMPLING, "preset", "control_units", *STYLE)
        options = dict.fromkeys(option for name in self.preprocessors for option in PREPROCESSORS[name].options)
        return ("image", *PROMPTING, "preprocessor", *options, *SAMPLING, *CONTROL, "preset", "control_units", *STYLE)


MODES: Mapping[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("text", "Text", "text2img", "Describe the image; the prompt alone guides it."),
        Mode(
            "pose", "Pose", "pose2img",
            "A photo of a person, or a ready OpenPose map (choose preprocessor 'none').",
            preprocessors=("openpose", "none"),
            union_type=0,
            a1111_modules={
                "openpose": ControlModule("openpose", {"include_hands": False, "include_face": False}),
                "openpose_hand": ControlModule("openpose", {"include_hands": True, "include_face": False}),
                "openpose_face": ControlModule("openpose", {"include_hands": False, "include_face": True}),
                "openpose_full": ControlModule("openpose", {"include_hands": True, "include_face": True}),
            },
            a1111_word="openpose",
            controlnets={
                "sd15": "lllyasviel/control_v11p_sd15_openpose",
                "sd2": "thibaud/controlnet-sd21-openpose-diffusers",
                "sdxl": "thibaud/controlnet-openpose-sdxl-1.0",
            },
        ),
        Mode(
            "edge", "Edge", "edge2img",
            "A photo or drawing, or a ready edge map: white lines on black (preprocessor 'none').",
            preprocessors=("canny", "none"),
            union_type=3,
            a1111_modules={"canny": ControlModule("canny")},
            a1111_word="canny",
            controlnets={
                "sd15": "lllyasviel/control_v11p_sd15_canny",
                "sd2": "thibaud/controlnet-sd21-canny-diffusers",
                "sdxl": "diffusers/controlnet-canny-sdxl-1.0",
            },
        ),
        Mode(
            "depth", "Depth", "depth2img",
            "A photo, or a ready depth map: near is bright (preprocessor 'none').",
            preprocessors=("depth_anything", "midas", "none"),
            union_type=1,
            # "midas": what the studio wrote before it wrote A1111's name
            a1111_modules={
                "depth_anything": ControlModule("depth_anything"),
                "depth_midas": ControlModule("midas"),
                "depth_anything_v2": ControlModule("depth_anything"),
                "midas": ControlModule("midas"),
            },
            a1111_word="depth",
            controlnets={
                "sd15": "lllyasviel/control_v11f1p_sd15_depth",
                "sd2": "thibaud/controlnet-sd21-depth-diffusers",
                "sdxl": "diffusers/controlnet-depth-sdxl-1.0",
            },
        ),
        Mode(
            "img2img", "Image to image", "img2img",
            "A picture to start from: strength 0 keeps it, 1 ignores it; in between its layout stays and the prompt "
            "redraws the rest.",
            edits="img2img", image_label="Start image",
        ),
        Mode(
            "inpaint", "Inpaint", "inpaint",
            "A picture and a mask: white is repainted from the prompt, black is kept pixel for pixel. Paint the mask "
            "on the picture, or upload one.",
            edits="inpaint", image_label="Image to repaint",
        ),
    )
}
CONTROL_MODES = tuple(name for name, mode in MODES.items() if mode.is_controlled)
# One model that serves every control mode (its control types are the modes' `union_type`s, as
# xinsir/controlnet-union-sdxl-1.0 numbers them): several units then share it instead of loading one model each.
UNION = "union"
UNION_CONTROLNETS = {"sdxl": "xinsir/controlnet-union-sdxl-1.0"}
