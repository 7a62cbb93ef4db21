"""Every mode, declared once: its tab title, endpoint, hint, preprocessors and default ControlNet per family.

A mode's parameters follow from the declaration: every mode takes the prompting and sampling parameters;
a mode with preprocessors also takes a control image, its preprocessors' options and the ControlNet settings.
Adding a mode is one entry here plus its pipeline code; the tab, the endpoint and the checks follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipelines.preprocessors import PREPROCESSORS

PROMPTING = ("prompt", "negative_prompt", "loras")
SAMPLING = (
    "seed", "randomize_seed", "steps", "guidance_scale", "scheduler", "width", "height", "num_images",
)
CONTROL = ("controlnet_scale", "control_start", "control_end")
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
    own_parameters: tuple[str, ...] = ()  # for an endpoint that is not a generation mode (the LoRA grid)
    edits: str = ""  # "img2img" or "inpaint": the mode starts from the request's image instead of noise
    union_type: int | None = None  # the control type a ControlNet Union model knows this mode's maps by
    image_label: str = "Control image"

    @property
    def starts_from_image(self) -> bool:
        return bool(self.edits)

    @property
    def is_controlled(self) -> bool:
        return bool(self.preprocessors)

    @property
    def parameters(self) -> tuple[str, ...]:
        """The endpoint's parameters, in the order the API lists them."""
        if self.own_parameters:
            return self.own_parameters
        if self.edits:
            return (*EDITING[self.edits], *SAMPLING, "preset", "control_units")
        # New parameters come last, so every earlier parameter keeps its position for positional API callers.
        if not self.is_controlled:
            return (*PROMPTING, *SAMPLING, "preset", "control_units")
        options = dict.fromkeys(option for name in self.preprocessors for option in PREPROCESSORS[name].options)
        return ("image", *PROMPTING, "preprocessor", *options, *SAMPLING, *CONTROL, "preset", "control_units")


MODES: Mapping[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("text", "Text", "text2img", "Describe the image; the prompt alone guides it."),
        Mode(
            "pose", "Pose", "pose2img",
            "A photo of a person, or a ready OpenPose map (choose preprocessor 'none').",
            preprocessors=("openpose", "none"),
            union_type=0,
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

LORA_GRID = Mode(
    "lora_grid", "LoRA lab", "lora_grid",
    "Compare style LoRAs side by side: a 'no LoRA' row, then each LoRA at each weight, one column per seed "
    "(the same seed down each column). In pose, edge and depth mode the image is a ready control map.",
    own_parameters=(
        "lora_names", "weights", "seeds", "prompt", "negative_prompt", "mode", "image", "steps", "guidance_scale",
        "add_triggers", "together", "add_together",
    ),
)

# The Explore tab (pipelines/explore/): every image is a text-mode generation, as the Text tab makes it.
DENOISE_TIMELINE = Mode(
    "denoise_timeline", "Denoising timeline", "denoise_timeline",
    "Watch one text-mode run denoise: every k-th step's current latent, decoded, beside the model's predicted clean "
    "image (x0); the last frame is the image the Text tab makes with the same settings.",
    own_parameters=(*PROMPTING, *(name for name in SAMPLING if name != "num_images"), "keep_every"),
)
FORWARD_NOISE = Mode(
    "forward_noise", "Forward noising", "forward_noise",
    "Noise an image to timestep t with a schedule from diffusers: in the VAE's latent space (decoded), as Stable "
    "Diffusion trains, and in pixel space, side by side.",
    own_parameters=("clean_image", "schedule", "timestep", "seed"),
)
SWEEP = Mode(
    "sweep", "Sweeps", "sweep",
    "One prompt and seed across guidance scales, step counts, or DDPM against DDIM at several step counts: a "
    "labelled grid with a measured figure under every column.",
    own_parameters=(
        "sweep", "prompt", "negative_prompt", "loras", "seed", "guidance_scales", "step_counts", "steps",
        "guidance_scale", "scheduler",
    ),
)
EXPLORE = (DENOISE_TIMELINE, FORWARD_NOISE, SWEEP)
