"""Every parameter a request can carry, declared once: kind, label, default, range or choices, unit, help.

From these declarations come the request type (`pipelines/request.py`), the server-side checks
(`pipelines/validation.py`), the Gradio components and each endpoint's signature (`ui/fields.py`). A bound
or default that depends on the model served or on the settings (the largest side, the model's own number of
steps) is a `Ref` to a `Served` value and is filled in by `bind`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Literal

from pipelines.block_weights import SYNTAX as BLOCK_SYNTAX
from pipelines.preprocessors.weights import DetectorSources

# What each kind is (its API type, how a value is checked, which input shows it): `pipelines/validation.py` KINDS.
KindName = Literal[
    "text", "whole", "number", "flag", "choice", "image", "loras", "names", "numbers", "lora_weights", "wholes",
    "units", "style_mode",
]


@dataclass(frozen=True)
class Ref:
    """A bound or default read from the model and settings being served (a field of `Served`)."""

    name: str


@dataclass(frozen=True)
class Param:
    name: str
    kind: KindName
    label: str
    help: str
    default: object = None
    low: float | Ref | None = None
    high: float | Ref | None = None
    step: float | Ref | None = None
    choices: tuple[str, ...] | Ref | None = None
    unit: str = ""
    # Sizes the model cannot take are rounded down to this multiple (with a note) instead of refused.
    multiple_of: int | Ref | None = None

    @property
    def range_text(self) -> str:
        """The range as people read it ("0 to 255 px", "at most 2000 characters"); "" where there is none."""
        unit = f" {self.unit}" if self.unit else ""
        if self.low is not None and self.high is not None:
            return f"{number_text(self.low)} to {number_text(self.high)}{unit}"
        if self.high is not None:
            return f"at most {number_text(self.high)}{unit}"
        return ""


@dataclass(frozen=True)
class Served:
    """What bounds and defaults depend on: the limits in the settings and the model being served."""

    max_side: int
    size_multiple: int
    max_steps: int
    max_images: int
    max_guidance: float
    max_prompt_chars: int
    max_seed: int
    resolution: int
    default_steps: int
    default_guidance: float
    default_scheduler: str
    schedulers: tuple[str, ...]
    family: str = ""
    presets: tuple[str, ...] = ("none",)  # "none", then the family's few-step presets (pipelines/presets.py)
    modes: tuple[str, ...] = ()
    preprocessors: tuple[str, ...] = ()  # the mode's own; the first is its default
    unavailable_preprocessors: tuple[str, ...] = ()  # their weights are not on this machine
    lora_names: tuple[str, ...] = ()
    detectors: DetectorSources = DetectorSources()
    axes: tuple[str, ...] = ()  # the X/Y plot's axes
    lora_blocks: tuple[str, ...] = ()  # the UNet's blocks a LoRA's block weights can name (pipelines/block_weights.py)
    default_style_scale: float = 1.0  # the model's style adapter's own default (pipelines/style.py)


def bind(param: Param, served: Served) -> Param:
    """`param` with every `Ref` replaced by the served value it names."""
    concrete = {
        item.name: getattr(served, value.name)
        for item in fields(param)
        if isinstance(value := getattr(param, item.name), Ref)
    }
    if param.name == "preprocessor" and served.preprocessors:
        concrete["default"] = served.preprocessors[0]
    return replace(param, **concrete)


def number_text(value: float) -> str:
    """A bound as people read it: whole numbers in full (4294967295, not 4.29497e+09)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


MAX_SEED = 2**32 - 1
MAX_CONTROL_UNITS = 3  # ControlNets in one request, the mode's own included
MAX_LORA_WEIGHT = 2.0
MAX_STYLE_SCALE = 2.0
# InstantStyle's block presets (pipelines/style.py says which blocks each takes on the model served)
STYLE_MODES = ("style", "style and layout", "everything")

_PARAMETERS = (
    Param("image", "image", "Image", "an image file: the photo or ready map a ControlNet follows, or the picture "
          "img2img and inpainting start from"),
    Param("mask", "image", "Mask",
          "an image file of the image's shape, any resolution: white is repainted, black kept"),
    Param("strength", "number", "Denoising strength", "how much of the image is redrawn: 0 keeps it, 1 ignores it",
          default=0.75, low=0.0, high=1.0, step=0.05),
    Param("mask_blur", "whole", "Mask blur", "the seam between kept and repainted pixels", default=4, low=0,
          high=64, step=1, unit="px"),
    Param("masked_content", "choice", "Masked content", "what the repainted part starts from: the original "
          "picture (at the denoising strength) or noise (strength 1 there)", default="original",
          choices=("original", "noise")),
    Param("prompt", "text", "Prompt", "what to draw; empty draws without a prompt", default="",
          high=Ref("max_prompt_chars"), unit="characters"),
    Param("negative_prompt", "text", "Negative prompt", "what to steer away from", default="",
          high=Ref("max_prompt_chars"), unit="characters"),
    # A loras field's choices are the model's blocks its block weights may name.
    Param("loras", "loras", "LoRAs", f"style LoRAs as name:weight, comma-separated (weights -2 to 2); {BLOCK_SYNTAX}",
          default="", choices=Ref("lora_blocks")),
    Param("preprocessor", "choice", "Preprocessor",
          "how the image becomes a control map; 'none' takes it as a ready map", choices=Ref("preprocessors")),
    Param("detect_resolution", "whole", "Detection resolution", "short side the detector works at",
          default=512, low=64, high=2048, step=64, unit="px"),
    Param("low_threshold", "whole", "Canny low threshold", "weaker edges below this are dropped",
          default=100, low=0, high=255, step=1),
    Param("high_threshold", "whole", "Canny high threshold", "edges above this are always kept",
          default=200, low=0, high=255, step=1),
    Param("include_hands", "flag", "Detect hands", "also draw hand keypoints (needs hand_pose_model.pth)",
          default=False),
    Param("include_face", "flag", "Detect face", "also draw face keypoints (needs facenet.pth)", default=False),
    Param("seed", "whole", "Seed", "the same seed and settings give the same image", default=0,
          low=0, high=MAX_SEED, step=1),
    Param("randomize_seed", "flag", "Randomize seed", "pick a new seed for every run", default=False),
    Param("steps", "whole", "Steps", "denoising steps", default=Ref("default_steps"), low=1,
          high=Ref("max_steps"), step=1),
    Param("guidance_scale", "number", "Guidance scale", "how strongly the prompt steers (classifier-free guidance)",
          default=Ref("default_guidance"), low=0.0, high=Ref("max_guidance"), step=0.5),
    Param("scheduler", "choice", "Scheduler", "the sampler that takes the denoising steps",
          default=Ref("default_scheduler"), choices=Ref("schedulers")),
    Param("width", "whole", "Width", "image width", default=Ref("resolution"), low=Ref("size_multiple"),
          high=Ref("max_side"), step=Ref("size_multiple"), unit="px", multiple_of=Ref("size_multiple")),
    Param("height", "whole", "Height", "image height", default=Ref("resolution"), low=Ref("size_multiple"),
          high=Ref("max_side"), step=Ref("size_multiple"), unit="px", multiple_of=Ref("size_multiple")),
    Param("preset", "choice", "Few-step preset", "a published few-step recipe for this model; sets the scheduler, "
          "steps and guidance and adds its LoRA, over the values given", default="none", choices=Ref("presets")),
    Param("control_units", "units", "More ControlNet units",
          f"more ControlNets at once ({MAX_CONTROL_UNITS} in all with the mode's own): a list of "
          "{mode, image, preprocessor, scale, start, end}, the image sent with handle_file", default=()),
    Param("num_images", "whole", "Number of images", "images per run, seeds counting up from the seed",
          default=1, low=1, high=Ref("max_images"), step=1),
    Param("controlnet_scale", "number", "ControlNet conditioning scale", "how strongly the control map steers",
          default=1.0, low=0.0, high=2.0, step=0.05),
    Param("control_start", "number", "Control guidance start", "fraction of the steps where control begins",
          default=0.0, low=0.0, high=1.0, step=0.05),
    Param("control_end", "number", "Control guidance end", "fraction of the steps where control ends",
          default=1.0, low=0.0, high=1.0, step=0.05),
    # The style reference (IP-Adapter, pipelines/style.py)
    Param("style_image", "image", "Style reference", "an image file whose style (colours, textures, background) the "
          "images take; the prompt still says what is drawn. Its hash, not the picture, goes into the PNG"),
    Param("style_scale", "number", "Style scale", "how strongly the style reference steers; 0 ignores it",
          default=Ref("default_style_scale"), low=0.0, high=MAX_STYLE_SCALE, step=0.05),
    Param("style_mode", "style_mode", "Style mode", "which of the UNet's blocks see the reference (InstantStyle): "
          "'style' its look only, 'style and layout' its arrangement too, 'everything' all blocks (plain "
          "IP-Adapter); through the API also per-block scales as JSON, like {\"up\": {\"block_0\": [0, 1, 0]}}, "
          "each multiplied by the style scale", default="style", choices=STYLE_MODES),
    # The LoRA lab's grid
    Param("lora_names", "names", "LoRAs in the grid", "LoRA names: folder files, uploads or hub:owner/repo",
          default=(), choices=Ref("lora_names")),
    Param("weights", "lora_weights", "Weights", "weights to try, comma-separated, or a range: 0-1 step 0.25; "
          "each with block weights after @ (1@out, 1@in=0:mid=1:out=0.5) as in the LoRAs field",
          default="0.5, 1", low=-MAX_LORA_WEIGHT, high=MAX_LORA_WEIGHT, choices=Ref("lora_blocks")),
    Param("seeds", "wholes", "Seeds (one column each)", "seeds, comma-separated, or a range: 1-4 step 1",
          default="1, 2", low=0, high=MAX_SEED),
    Param("together", "loras", "Weight per LoRA for the 'together' row",
          "name:weight pairs for a row with all chosen LoRAs at once (block weights too: name:1@out)", default="",
          choices=Ref("lora_blocks")),
    Param("add_together", "flag", "Add a 'together' row", "a last row with all chosen LoRAs at once",
          default=False),
    Param("add_triggers", "flag", "Add each row's trigger words", "each row's prompt gets its LoRAs' trigger "
          "words; the 'no LoRA' row keeps the prompt as written", default=True),
    Param("mode", "choice", "Mode", "which mode renders the cells", default="text", choices=Ref("modes")),
    # The LoRA lab's X/Y plot (its axes: pipelines/endpoints.py AXES)
    Param("x_axis", "choice", "X axis", "what changes from column to column", default="LoRA weight",
          choices=Ref("axes")),
    Param("x_values", "text", "X values", "the columns' values, comma-separated (ranges too: 0-1 step 0.25); for "
          "prompt S/R the first is the text the others replace", default="0, 0.5, 1", high=Ref("max_prompt_chars"),
          unit="characters"),
    Param("y_axis", "choice", "Y axis", "what changes from row to row", default="seed", choices=Ref("axes")),
    Param("y_values", "text", "Y values", "the rows' values, comma-separated", default="1, 2",
          high=Ref("max_prompt_chars"), unit="characters"),
    # The Explore tab
    Param("keep_every", "whole", "Keep every k-th step", "a frame every this many steps; the last step is always kept",
          default=2, low=1, high=Ref("max_steps"), step=1),
    Param("clean_image", "image", "Image to noise", "the picture forward noising starts from (an image file)"),
    Param("schedule", "choice", "Noise schedule",
          "how fast noise comes in: linear (DDPM), scaled linear (Stable Diffusion) or cosine",
          default="scaled linear", choices=("linear", "scaled linear", "cosine")),
    Param("timestep", "whole", "Timestep t", "how far the image is noised: 0 keeps it, 999 is (nearly) pure noise",
          default=500, low=0, high=999, step=1),
    Param("sweep", "choice", "Sweep", "what changes from column to column", default="guidance scale",
          choices=("guidance scale", "steps", "samplers")),
    Param("guidance_scales", "numbers", "Guidance scales",
          "guidance scales to compare (guidance sweep), comma-separated, or a range: 2-8 step 2",
          default="1, 2, 4, 8, 12", low=0.0, high=Ref("max_guidance")),
    Param("step_counts", "wholes", "Step counts",
          "step counts to compare (steps and samplers sweeps), comma-separated, or a range: 10-50 step 20",
          default="10, 20, 50",
          low=1, high=Ref("max_steps")),
)

PARAMETERS: Mapping[str, Param] = {param.name: param for param in _PARAMETERS}
