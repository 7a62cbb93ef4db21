"""One tab per mode (Text, Pose, Edge, Depth), each also an API endpoint: /text2img, /pose2img, ...

A tab is made from its mode's declaration (`pipelines/modes.py`) and the parameters it takes
(`pipelines/parameters.py`): the components, their order and grouping, and the endpoint's signature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import numpy as np
from PIL import Image

from pipelines.editing import size_for_picture
from pipelines.endpoints import MODE_ENDPOINTS
from pipelines.lora.triggers import add_trigger_words
from pipelines.modes import SAMPLING, STYLE, Mode
from pipelines.outputs import OutputFolder
from pipelines.parameters import PARAMETERS, Param
from pipelines.preprocessors import PREPROCESSORS
from pipelines.presets import Preset, apply_preset, is_cached, presets_for
from pipelines.previews import Preview, Previewer
from pipelines.request import GenerationRequest, GenerationResult
from pipelines.studio import Studio
from ui.control_units import build_control_units, units_from_widgets
from ui.endpoints import Call, endpoint_handler
from ui.errors import shown_to_person
from ui.examples import mode_examples
from ui.fields import component_for
from ui.live import Progress, live
from ui.stop import request_stop

if TYPE_CHECKING:
    from ui.history import History

# Every generating event joins one queue, so one generation runs at a time per GPU whatever the tab.
GPU_QUEUE = "gpu"
RESULT_HEIGHT = 400
RESULTS_LABEL = "Images"
# EXIF orientations that turn a photo a quarter (the run applies them: `pipelines/images.py`).
ORIENTATION, TURNED = 0x0112, (5, 6, 7, 8)
# How the tab shows some fields. A component's first value is also the API's default, so every field starts at its
# declared default (an API caller's seed=7 means seed 7); see `ui/app.py` for what the page then changes.
LOOKS = {
    "prompt": dict(lines=2, placeholder="a red circle on a blue background"),
    "image": dict(height=260),
    "mask": dict(height=260, label="Mask (white = repaint)"),
    "loras": dict(info=PARAMETERS["loras"].help, placeholder="stripes:0.8, mono:1@out"),  # the block-weight syntax
    "style_image": dict(height=200),
    # The presets in the menu; per-block scales as JSON typed in, as the API takes them.
    "style_mode": dict(allow_custom_value=True, info=PARAMETERS["style_mode"].help),
}


def build_mode_tab(studio: Studio, mode: Mode, history: History | None = None) -> dict[str, gr.components.Component]:
    """The tab for `mode`; its event is the API endpoint `/<mode.endpoint>` with keyword parameters. With a
    `history`, every result is saved to its output folder and listed in the History tab.

    Returns its input components by parameter name, so other parts of the page can fill them in.
    """
    endpoint = MODE_ENDPOINTS[mode.name]
    served = endpoint.served_for(studio.served)
    params = endpoint.params(studio.served)
    with gr.Tab(mode.title, id=mode.name):
        with gr.Row():
            with gr.Column(scale=1):
                fields = _input_fields(studio, mode, params, served.unavailable_preprocessors)
                fields["control_units"], unit_widgets = build_control_units(
                    studio, mode, next(param for param in params if param.name == "control_units")
                )
                for index, unit in enumerate(unit_widgets):
                    fields.update(unit.by_name(index))
                _preset_buttons(studio, params, fields)
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", scale=3)
                    stop = gr.Button("Stop", variant="stop", scale=1)
            with gr.Column(scale=1):
                # The result takes half the column, where its fixed height fits a square image whole; beside it
                # the control map at the same scale, or in text mode the run's seed and parameters.
                with gr.Row(equal_height=True):
                    gallery = gr.Gallery(
                        label=RESULTS_LABEL, format="png", columns=1, object_fit="contain", height=RESULT_HEIGHT,
                        elem_classes="pixelated", scale=1, interactive=False,
                    )
                    control_map = gr.Image(
                        label="Control map used", format="png", visible=mode.is_controlled, height=RESULT_HEIGHT,
                        elem_classes="pixelated", interactive=False, scale=1,
                    )
                    if not mode.is_controlled:
                        with gr.Column(scale=1):
                            seed_used, info = _run_details()
                if mode.is_controlled:
                    seed_used, info = _run_details()
        examples = mode_examples(studio.model.family, mode.name, hidden=served.unavailable_preprocessors)
        if examples:
            columns = [fields[name] for name in mode.example_columns]
            gr.Examples(examples, inputs=columns, label="Examples (click one)")
        outputs = [gallery, control_map, seed_used, info]
        # A new run first clears the last one's outputs, so what shows is always this run's (or its error), and
        # gathers the extra ControlNet units into the one list the endpoint takes.
        private = dict(queue=False, api_visibility="private")
        unit_values = [component for unit in unit_widgets for component in unit.all]
        generating = run.click(_cleared, None, outputs, **private).then(
            units_from_widgets, unit_values, fields["control_units"], **private
        ).then(
            mode_handler(studio, mode, history.outputs if history else None),
            inputs=[fields[param.name] for param in params],
            outputs=outputs,
            api_name=endpoint.name,
            api_description=endpoint.description,
            concurrency_id=GPU_QUEUE,
            show_progress_on=info,  # over the gallery it would hide the previews
        )
        # While a run goes on the gallery shows previews under a "Preview, step n/N" label; the result, or a Stop
        # (which also clears a stopped run's previews), gives it back its own label.
        generating.then(lambda: gr.update(label=RESULTS_LABEL), None, gallery, **private)
        if history is not None:
            history.follow_run(generating, gallery, seed_used, mode)
        generating.success(lambda shown: gr.update(visible=shown is not None), control_map, control_map, **private)
        # A run the Stop flag ended before Gradio's cancel did ends without a result: no seed to show then.
        generating.success(lambda seed: gr.update(visible=seed is not None), seed_used, seed_used, **private)
        # Queued, so that its message reaches the page (Gradio sends messages over the queue's stream).
        stop.click(request_stop, None, None, cancels=[generating], api_visibility="private").then(
            lambda: gr.update(value=None, label=RESULTS_LABEL), None, gallery, **private
        )
    return fields


def _run_details() -> tuple[gr.Number, gr.Markdown]:
    # Shown once a run gives it a value: Gradio's number box draws an empty value as 0, which reads as a seed.
    seed_used = gr.Number(label="Seed used", value=None, precision=0, interactive=False, visible=False)
    return seed_used, gr.Markdown(label="Parameters", elem_classes="parameters")


def _cleared() -> tuple:
    return None, None, gr.update(value=None, visible=False), ""


def _input_fields(
    studio: Studio, mode: Mode, params: list[Param], unavailable: tuple[str, ...]
) -> dict[str, gr.components.Component]:
    """name -> component, laid out in groups: the inputs, preprocessing, generation settings, the style reference."""
    by_group = {"main": [], "preprocessing": [], "settings": [], "style": []}
    preprocessing = {"preprocessor", *(option for name in mode.preprocessors for option in PREPROCESSORS[name].options)}
    for param in params:
        group = "preprocessing" if param.name in preprocessing else "main"
        if param.name in SAMPLING or param.name.startswith("control"):
            group = "settings"
        by_group["style" if param.name in STYLE else group].append(param)
    fields: dict[str, gr.components.Component] = {}
    for param in by_group["main"]:
        if param.name == "preset":
            continue  # a row of buttons instead (_preset_buttons)
        looks = {**LOOKS.get(param.name, {}), **({"label": mode.image_label} if param.name == "image" else {})}
        fields[param.name] = component_for(param, **looks)
        if param.name == "image":
            gr.Markdown(mode.hint)
        if param.name == "mask":
            _mask_painter(fields)
        if param.name == "loras":
            _lora_picker(studio, fields)
    if by_group["preprocessing"]:
        with gr.Accordion("Preprocessing", open=True):
            _preprocessing_fields(fields, by_group["preprocessing"], unavailable)
    with gr.Accordion("Generation settings", open=False):
        for param in by_group["settings"]:
            if param.name == "control_units":
                continue  # widgets of their own (ui/control_units.py)
            looks = _size_looks(studio, param) if param.name in ("width", "height") else LOOKS.get(param.name, {})
            fields[param.name] = component_for(param, **looks)
    with gr.Accordion("Style reference", open=False):
        style_fields(by_group["style"], fields)
    if mode.starts_from_image:
        _size_follows_the_picture(studio, fields)
    return fields


def style_fields(params: list[Param], fields: dict[str, gr.components.Component]) -> None:
    """The style reference's fields (an IP-Adapter, `pipelines/style.py`), for a tab's collapsed group."""
    gr.Markdown("A picture whose style the images take; the prompt still says what is drawn.")
    for param in params:
        fields[param.name] = component_for(param, **LOOKS.get(param.name, {}))


def _size_follows_the_picture(studio: Studio, fields: dict[str, gr.components.Component]) -> None:
    """An edit keeps its picture's shape: a new picture sets the width and height (at the area they had)."""
    served = studio.served

    def fitted(path: str | None, width: float | None, height: float | None) -> tuple:
        area = int(width or served.resolution) * int(height or served.resolution)  # a cleared box: the native side
        return picture_size(path, area, served.size_multiple, served.max_side)

    sizes = [fields["width"], fields["height"]]
    fields["image"].change(fitted, [fields["image"], *sizes], sizes, api_visibility="private", queue=False)


def picture_size(path: str | None, area: int, multiple: int, max_side: int) -> tuple:
    """The width and height for the picture at `path`, upright as the run will see it; unchanged without one."""
    try:
        with Image.open(path) as picture:
            size = picture.size[::-1] if picture.getexif().get(ORIENTATION) in TURNED else picture.size
    except (OSError, ValueError, TypeError, AttributeError, Image.DecompressionBombError):
        return gr.skip(), gr.skip()  # no picture, or not one: the run itself says what is wrong
    return size_for_picture(size, area, multiple, max_side)


def _preprocessing_fields(fields: dict, params: list[Param], unavailable: tuple[str, ...]) -> None:
    """The preprocessor menu, then only the options the chosen preprocessor reads."""
    chosen = next(param.default for param in params if param.name == "preprocessor")
    for param in params:
        if param.name == "preprocessor":
            fields[param.name] = component_for(param, **_preprocessor_menu(param, unavailable))
        else:
            fields[param.name] = component_for(param, visible=param.name in PREPROCESSORS[chosen].options)
    if unavailable:
        gr.Markdown(_missing_weights_hint(unavailable))
    options = [fields[param.name] for param in params if param.name != "preprocessor"]
    names = [param.name for param in params if param.name != "preprocessor"]
    fields["preprocessor"].change(
        lambda name: [gr.update(visible=option in PREPROCESSORS[name].options) for option in names],
        fields["preprocessor"],
        options,
        api_visibility="private",
        queue=False,
    )


def _mask_painter(fields: dict[str, gr.components.Component]) -> None:
    """Paint the mask on the image in the browser; the strokes become the `mask` field the endpoint takes."""
    painter = gr.ImageEditor(
        label="Or paint the part to repaint", type="pil", image_mode="RGBA", sources=(), layers=False,
        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), height=260, elem_classes="pixelated",
    )
    private = dict(api_visibility="private", queue=False)
    fields["image"].change(lambda image: image, fields["image"], painter, **private)
    painter.change(mask_from_painting, painter, fields["mask"], **private)


def mask_from_painting(painting: dict | None) -> Image.Image | None:
    """White wherever a stroke was painted, black elsewhere; None before the first stroke."""
    layers = [layer for layer in (painting or {}).get("layers") or [] if layer is not None]
    if not layers:
        return None
    painted = np.zeros(layers[0].size[::-1], dtype=bool)
    for layer in layers:
        painted |= np.asarray(layer.convert("RGBA"))[..., 3] > 0
    return Image.fromarray(np.where(painted, 255, 0).astype(np.uint8)) if painted.any() else None


def _preset_buttons(studio: Studio, params: list[Param], fields: dict[str, gr.components.Component]) -> None:
    """One button per few-step preset, filling in its sampler, steps, guidance and LoRA for the person to see.

    The request's own `preset` field (for API callers) stays "none" on the page: the filled-in values are sent.
    """
    fields["preset"] = component_for(next(param for param in params if param.name == "preset"), visible=False)
    presets = presets_for(studio.model.family)
    if not presets:
        return
    with gr.Row():
        gr.Markdown("Few-step presets:")
        for preset in presets:
            label = preset.label if is_cached(preset) else f"{preset.label} (its LoRA needs the Hub)"
            button = gr.Button(label, size="sm", variant="secondary")
            button.click(
                partial(preset_values, preset),
                inputs=[fields["loras"], fields["guidance_scale"]],
                outputs=[fields["steps"], fields["guidance_scale"], fields["scheduler"], fields["loras"]],
                api_visibility="private",
                queue=False,
            )


def preset_values(preset: Preset, loras: str, guidance: float) -> tuple[int, float, str, str]:
    """What the preset's button puts in the steps, guidance, scheduler and LoRA fields."""
    values = {"loras": (), "guidance_scale": guidance}
    apply_preset(values, preset)
    added = [f"{choice.name}:{choice.weight:g}" for choice in values["loras"] if choice.name not in loras]
    return values["steps"], values["guidance_scale"], values["scheduler"], ", ".join(filter(None, [loras, *added]))


def _size_looks(studio: Studio, param: Param) -> dict:
    native = studio.model.resolution
    return {"info": f"The model draws best at {native} px; up to {param.high} px here (STUDIO_MAX_SIDE)."}


def _preprocessor_menu(param: Param, unavailable: tuple[str, ...]) -> dict:
    """The menu marks detectors whose weights are not on this machine (choosing one says what to provide)."""
    return {"choices": [(f"{name} (weights missing)" if name in unavailable else name, name) for name in param.choices]}


def _missing_weights_hint(unavailable: tuple[str, ...]) -> str:
    return (
        f"Not on this machine: the weights of {', '.join(unavailable)}. Upload a ready map with preprocessor "
        "'none', or see the README's settings (`STUDIO_ANNOTATORS`, `STUDIO_DEPTH_MODEL`) to provide them."
    )


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


def mode_handler(studio: Studio, mode: Mode, outputs: OutputFolder | None = None) -> Callable:
    """The mode's endpoint; each result is saved to `outputs` (when given)."""

    def run(request: GenerationRequest, call: Call) -> Iterator[tuple]:
        yield from run_request(studio, request, call.progress, should_stop=call.should_stop, outputs=outputs)

    return endpoint_handler(MODE_ENDPOINTS[mode.name], studio.served, run)


def run_request(
    studio: Studio, request: GenerationRequest, progress=None, should_stop=None, outputs: OutputFolder | None = None
) -> Iterator[tuple]:
    """Yields a preview into the gallery every few steps while the run goes on, then the result's outputs (saved to
    `outputs` first, where a failure to save is a note beside the images, not an error)."""

    def work(send: Callable, stop: Callable[[], bool]) -> GenerationResult:
        return studio.generate(
            request,
            progress=lambda done, total: send(Progress(done, total)),
            should_stop=stop,
            on_step=Previewer(studio.model.family, send),
        )

    with shown_to_person():
        for item in live(work, should_stop, progress):
            if isinstance(item, Progress):
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip()  # nothing new, but a cancel reaches the run here
            elif isinstance(item, Preview):
                # An update, not a component: on ZeroGPU every yield is pickled back from the GPU worker.
                yield gr.update(value=item.images, label=item.caption), gr.skip(), gr.skip(), gr.skip()
            else:
                if outputs is not None:
                    outputs.keep(item.result)
                yield _outputs(item.result)


def _outputs(result: GenerationResult) -> tuple:
    gallery = [(image, f"seed {seed}") for image, seed in zip(result.images, result.seeds, strict=True)]
    notes = "".join(f"- {note}\n" for note in result.notes)
    info = f"{notes}\n**Parameters of the first image** (also in each PNG):\n```\n{result.parameters[0]}\n```"
    return gallery, result.control_map, result.seeds[0], info
