"""One tab per mode (Text, Pose, Edge, Depth), each also an API endpoint: /text2img, /pose2img, ...

A tab is made from its mode's declaration (`pipelines/modes.py`) and the parameters it takes
(`pipelines/parameters.py`): the components, their order and grouping, and the endpoint's signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import gradio as gr

from pipelines.gpu import gpu_task
from pipelines.lora.triggers import add_trigger_words
from pipelines.modes import SAMPLING, Mode
from pipelines.parameters import PARAMETERS, Param, bind
from pipelines.request import GenerationRequest, GenerationResult
from pipelines.studio import Studio
from ui.errors import shown_to_person
from ui.examples import example_columns, mode_examples
from ui.fields import component_for, with_signature

# Every generating event joins one queue, so one generation runs at a time per GPU whatever the tab.
GPU_QUEUE = "gpu"
PREPROCESSING = ("detect_resolution", "low_threshold", "high_threshold", "include_hands", "include_face")
# How the tab shows some fields; a person exploring gets a new seed each run, an API caller the declared default.
LOOKS = {
    "prompt": dict(lines=2, placeholder="a red circle on a blue background"),
    "image": dict(height=260),
    "randomize_seed": dict(value=True),
}


def build_mode_tab(studio: Studio, mode: Mode) -> dict[str, gr.components.Component]:
    """The tab for `mode`; its event is the API endpoint `/<mode.endpoint>` with keyword parameters.

    Returns its input components by parameter name, so other parts of the page can fill them in.
    """
    params = mode_parameters(studio, mode)
    with gr.Tab(mode.title, id=mode.name):
        with gr.Row():
            with gr.Column(scale=1):
                fields = _input_fields(studio, mode, params)
                run = gr.Button("Generate", variant="primary")
            with gr.Column(scale=1):
                gallery = gr.Gallery(
                    label="Images", format="png", columns=2, height=520, object_fit="contain", elem_classes="pixelated"
                )
                control_map = gr.Image(
                    label="Control map used", format="png", visible=mode.is_controlled, height=260,
                    elem_classes="pixelated",
                )
                seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
                info = gr.Markdown(label="Parameters")
        examples = mode_examples(studio.model.family, mode.name)
        if examples:
            columns = [fields[name] for name in example_columns(mode.name)]
            gr.Examples(examples, inputs=columns, label="Examples (click one)")
        run.click(
            mode_handler(studio, mode, params),
            inputs=[fields[param.name] for param in params],
            outputs=[gallery, control_map, seed_used, info],
            api_name=mode.endpoint,
            api_description=f"{mode.title} mode: {mode.hint}",
            concurrency_id=GPU_QUEUE,
        )
    return fields


def mode_parameters(studio: Studio, mode: Mode) -> list[Param]:
    served = replace(studio.served, preprocessors=mode.preprocessors)
    return [bind(PARAMETERS[name], served) for name in mode.parameters]


def _input_fields(studio: Studio, mode: Mode, params: list[Param]) -> dict[str, gr.components.Component]:
    """name -> component, laid out in groups: the inputs, preprocessing, then generation settings."""
    by_group = {"main": [], "preprocessing": [], "settings": []}
    for param in params:
        group = "preprocessing" if param.name in PREPROCESSING or param.name == "preprocessor" else "main"
        if param.name in SAMPLING or param.name.startswith("control"):
            group = "settings"
        by_group[group].append(param)
    fields: dict[str, gr.components.Component] = {}
    for param in by_group["main"]:
        fields[param.name] = component_for(param, **LOOKS.get(param.name, {}))
        if param.name == "image":
            gr.Markdown(mode.hint)
        if param.name == "loras":
            _lora_picker(studio, fields)
    if by_group["preprocessing"]:
        with gr.Accordion("Preprocessing", open=True):
            for param in by_group["preprocessing"]:
                fields[param.name] = component_for(param)
    with gr.Accordion("Generation settings", open=False):
        for param in by_group["settings"]:
            fields[param.name] = component_for(param)
    return fields


def _lora_picker(studio: Studio, fields: dict[str, gr.components.Component]) -> None:
    """A menu of the LoRA folder that adds `name:1` to the LoRA box, and its trigger words to the prompt if asked
    (the LoRA lab has uploads and the Hub)."""
    names = [Path(entry.name).stem for entry in studio.loras.available()]
    if not names:
        return
    with gr.Row():
        picker = gr.Dropdown(names, value=None, label="Add a LoRA from the folder", scale=3)
        with_triggers = gr.Checkbox(label="and its trigger words", value=True, scale=1)
    picker.select(
        partial(add_lora, studio),
        inputs=[fields["loras"], fields["prompt"], picker, with_triggers],
        outputs=[fields["loras"], fields["prompt"], picker],
        api_visibility="private",
    )


def add_lora(studio: Studio, loras: str, prompt: str, name: str | None, with_triggers: bool) -> tuple[str, str, None]:
    if not name:
        return loras, prompt, None
    if with_triggers:
        with shown_to_person():
            prompt = add_trigger_words(prompt, studio.loras.check(name).trigger_words)
    return ", ".join(filter(None, [loras.strip(), f"{name}:1"])), prompt, None


def mode_handler(studio: Studio, mode: Mode, params: list[Param]) -> Callable:
    """The endpoint: one keyword parameter per declared parameter, in the declared order."""
    names = [param.name for param in params]

    @gpu_task
    def handler(*values, progress=gr.Progress()):
        request = GenerationRequest(mode=mode.name, **dict(zip(names, values, strict=True)))
        return run_request(studio, request, progress)

    return with_signature(handler, params, mode.endpoint)


def run_request(studio: Studio, request: GenerationRequest, progress=None) -> tuple:
    def report(step: int, total: int) -> None:
        if progress is not None:
            progress(step / total, desc=f"Denoising step {step}/{total}")

    with shown_to_person():
        result = studio.generate(request, progress=report)
    return _outputs(result)


def _outputs(result: GenerationResult) -> tuple:
    gallery = [(image, f"seed {seed}") for image, seed in zip(result.images, result.seeds, strict=True)]
    notes = "".join(f"- {note}\n" for note in result.notes)
    info = f"{notes}\n**Parameters of the first image** (also in each PNG):\n```\n{result.parameters[0]}\n```"
    return gallery, result.control_map, result.seeds[0], info
