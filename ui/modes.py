"""One tab per mode (Text, Pose, Edge, Depth), each also an API endpoint: /text2img, /pose2img, ..."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import gradio as gr

from pipelines.errors import StudioError
from pipelines.gpu import gpu_task
from pipelines.preprocessors import PREPROCESSORS
from pipelines.request import GenerationRequest, GenerationResult, parse_lora_list
from pipelines.schedulers import scheduler_names
from pipelines.studio import Studio
from ui.control_image import ControlImage
from ui.examples import example_columns, mode_examples

logger = logging.getLogger(__name__)

# Every generating event joins one queue, so one generation runs at a time per GPU whatever the tab.
GPU_QUEUE = "gpu"

TITLES = {"text": "Text", "pose": "Pose", "edge": "Edge", "depth": "Depth"}
API_NAMES = {"text": "text2img", "pose": "pose2img", "edge": "edge2img", "depth": "depth2img"}
IMAGE_HINTS = {
    "pose": "A photo of a person, or a ready OpenPose map (choose preprocessor 'none').",
    "edge": "A photo or drawing, or a ready edge map: white lines on black (preprocessor 'none').",
    "depth": "A photo, or a ready depth map: near is bright (preprocessor 'none').",
}


def build_mode_tab(studio: Studio, mode: str) -> None:
    """The tab for `mode`; its event is the API endpoint `/<API_NAMES[mode]>` with keyword parameters."""
    with gr.Tab(TITLES[mode], id=mode):
        with gr.Row():
            with gr.Column(scale=1):
                fields = _input_fields(studio, mode)
                run = gr.Button("Generate", variant="primary")
            with gr.Column(scale=1):
                gallery = gr.Gallery(
                    label="Images", format="png", columns=2, height=520, object_fit="contain", elem_classes="pixelated"
                )
                control_map = gr.Image(
                    label="Control map used", format="png", visible=mode != "text", height=260, elem_classes="pixelated"
                )
                seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
                info = gr.Markdown()
        examples = mode_examples(studio.model.family, mode)
        if examples:
            columns = [fields[name] for name in example_columns(mode)]
            gr.Examples(examples, inputs=columns, label="Examples (click one)")
        run.click(
            _endpoint(studio, mode, list(fields)),
            inputs=list(fields.values()),
            outputs=[gallery, control_map, seed_used, info],
            api_name=API_NAMES[mode],
            concurrency_id=GPU_QUEUE,
        )


def _input_fields(studio: Studio, mode: str) -> dict[str, gr.components.Component]:
    """name -> component; the names are the endpoint's keyword parameters."""
    model, limits, multiple = studio.model, studio.settings.limits, studio.size_multiple
    fields: dict[str, gr.components.Component] = {}
    if mode != "text":
        fields["image"] = ControlImage(label=f"{TITLES[mode]} image", type="filepath", height=260)
        gr.Markdown(IMAGE_HINTS[mode])
    fields["prompt"] = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle on a blue background")
    fields["negative_prompt"] = gr.Textbox(label="Negative prompt")
    fields["loras"] = gr.Textbox(label="LoRAs", placeholder="name:weight, name:weight", value="")
    _lora_picker(studio, fields["loras"])
    if mode != "text":
        with gr.Accordion("Preprocessing", open=True):
            choices = list(PREPROCESSORS[mode])
            fields["preprocessor"] = gr.Dropdown(choices, value=choices[0], label="Preprocessor")
            fields["detect_resolution"] = gr.Slider(64, 2048, value=512, step=64, label="Detection resolution")
            if mode == "edge":
                fields["low_threshold"] = gr.Slider(0, 255, value=100, step=1, label="Canny low threshold")
                fields["high_threshold"] = gr.Slider(0, 255, value=200, step=1, label="Canny high threshold")
            if mode == "pose":
                fields["include_hands"] = gr.Checkbox(label="Detect hands", value=False)
                fields["include_face"] = gr.Checkbox(label="Detect face", value=False)
    with gr.Accordion("Generation settings", open=False):
        fields["seed"] = gr.Number(label="Seed", value=0, precision=0, minimum=0)
        fields["randomize_seed"] = gr.Checkbox(label="Randomize seed", value=True)
        fields["steps"] = gr.Slider(1, limits.max_steps, value=model.default_steps, step=1, label="Steps")
        fields["guidance_scale"] = gr.Slider(
            0, limits.max_guidance, value=model.default_guidance, step=0.5, label="Guidance scale"
        )
        fields["scheduler"] = gr.Dropdown(scheduler_names(), value=model.default_scheduler, label="Scheduler")
        fields["width"] = gr.Slider(multiple, limits.max_side, value=model.resolution, step=multiple, label="Width")
        fields["height"] = gr.Slider(multiple, limits.max_side, value=model.resolution, step=multiple, label="Height")
        fields["num_images"] = gr.Slider(1, limits.max_images, value=1, step=1, label="Number of images")
        if mode != "text":
            fields["controlnet_scale"] = gr.Slider(0, 2, value=1.0, step=0.05, label="ControlNet conditioning scale")
            fields["control_start"] = gr.Slider(0, 1, value=0.0, step=0.05, label="Control guidance start")
            fields["control_end"] = gr.Slider(0, 1, value=1.0, step=0.05, label="Control guidance end")
    return fields


def _lora_picker(studio: Studio, loras: gr.Textbox) -> None:
    """A menu of the LoRA folder that appends `name:1` to the LoRA box (the lab tab has uploads and the hub)."""
    names = [lora.name for lora in studio.loras.available()]
    if not names:
        return
    picker = gr.Dropdown(names, value=None, label="Add a LoRA from the folder")
    picker.select(_append_lora, inputs=[loras, picker], outputs=[loras, picker], api_visibility="private")


def _append_lora(current: str, name: str | None) -> tuple[str, None]:
    if not name:
        return current, None
    return ", ".join(filter(None, [current.strip(), f"{name}:1"])), None


def _endpoint(studio: Studio, mode: str, names: list[str]) -> Callable:
    """A handler whose signature lists `names`, so Gradio's API takes them as keyword parameters."""

    @gpu_task
    def handler(*values, progress=gr.Progress()):
        return run_request(studio, build_request(mode, dict(zip(names, values, strict=True))), progress)

    parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    progress_parameter = inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=gr.Progress())
    handler.__signature__ = inspect.Signature([*parameters, progress_parameter])
    handler.__name__ = API_NAMES[mode]
    return handler


def build_request(mode: str, values: dict) -> GenerationRequest:
    """The request a tab (or an API caller) describes; the studio validates every value again."""
    values = dict(values)
    image = values.pop("image", None)
    randomize = values.pop("randomize_seed", False)
    loras = parse_lora_list(values.pop("loras", ""))
    seed = values.pop("seed", -1)
    seed = -1 if randomize or seed is None else seed
    return GenerationRequest(mode=mode, image=image, seed=seed, loras=loras, **values)


def run_request(studio: Studio, request: GenerationRequest, progress=None) -> tuple:
    def report(step: int, total: int) -> None:
        if progress is not None:
            progress(step / total, desc=f"Denoising step {step}/{total}")

    try:
        result = studio.generate(request, progress=report)
    except StudioError as error:
        raise gr.Error(str(error)) from error
    except Exception as error:  # the server keeps serving; the person learns what failed
        logger.exception("generation failed")
        raise gr.Error(f"Generation failed: {type(error).__name__}: {error}") from error
    return _outputs(result)


def _outputs(result: GenerationResult) -> tuple:
    gallery = [(image, f"seed {seed}") for image, seed in zip(result.images, result.seeds, strict=True)]
    notes = "".join(f"- {note}\n" for note in result.notes)
    info = f"{notes}\n**Parameters of the first image** (also in each PNG):\n```\n{result.parameters[0]}\n```"
    return gallery, result.control_map, result.seeds[0], info
