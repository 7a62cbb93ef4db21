"""More ControlNet units in a tab, added the way AUTOMATIC1111's ControlNet tabs add them: each with its own
mode, image, preprocessor, scale and start/end.

The endpoint takes the units as one list parameter (`control_units`, declared in `pipelines/parameters.py`);
on the page that list is filled from these widgets just before a run, with each image sent as the uploaded file
Gradio already holds (Gradio checks a file sent that way is one of its uploads).
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.modes import CONTROL_MODES, MODES, Mode
from pipelines.parameters import MAX_CONTROL_UNITS, PARAMETERS, Param
from pipelines.studio import Studio
from ui.fields import component_for

OFF = "off"
UNIT_SETTINGS = ("controlnet_scale", "control_start", "control_end")


@dataclass(frozen=True)
class UnitWidgets:
    mode: gr.Dropdown
    image: gr.Image
    preprocessor: gr.Dropdown
    settings: tuple[gr.components.Component, ...]  # scale, start, end

    @property
    def all(self) -> list[gr.components.Component]:
        return [self.mode, self.image, self.preprocessor, *self.settings]

    def by_name(self, index: int) -> dict[str, gr.components.Component]:
        """The widgets under the names PNG info fills them by (`unit_updates`); the image is never in a PNG."""
        names = ("mode", "preprocessor", "scale", "start", "end")
        return {unit_key(index, name): widget for name, widget in zip(names, [self.mode, self.preprocessor,
                                                                                *self.settings], strict=True)}


def unit_key(index: int, name: str) -> str:
    return f"control_units[{index}].{name}"


def build_control_units(studio: Studio, mode: Mode, param: Param) -> tuple[gr.components.Component, list[UnitWidgets]]:
    """The hidden `control_units` input and, in an accordion, a block of widgets per unit the mode has room for."""
    units_input = component_for(param, visible=False)
    modes = [name for name in CONTROL_MODES if name in studio.controlnets.registry]
    room = MAX_CONTROL_UNITS - int(mode.is_controlled)
    widgets = []
    with gr.Accordion("More ControlNet units", open=False):
        gr.Markdown(
            f"Up to {room} more ControlNets steer this run at once, each from its own map: say a pose and a depth "
            "map together. A unit is used when its mode is set."
        )
        for number in range(int(mode.is_controlled), MAX_CONTROL_UNITS):
            with gr.Group(), gr.Row():
                with gr.Column(scale=1, min_width=160):
                    unit_mode = gr.Dropdown([OFF, *modes], value=OFF, label=f"ControlNet unit {number}")
                    preprocessor = gr.Dropdown(["none"], value="none", label="Preprocessor")
                    settings = tuple(component_for(PARAMETERS[name]) for name in UNIT_SETTINGS)
                image = gr.Image(label=f"Unit {number} image", type="filepath", height=200, scale=1)
            unit_mode.change(
                _preprocessors_of, [unit_mode, preprocessor], preprocessor, api_visibility="private", queue=False
            )
            widgets.append(UnitWidgets(unit_mode, image, preprocessor, settings))
    return units_input, widgets


def _preprocessors_of(mode: str, current: str | None = None) -> gr.Dropdown:
    """The unit's preprocessor menu for `mode`, keeping the current choice where the mode has it."""
    choices = list(MODES[mode].preprocessors) if mode in MODES else ["none"]
    return gr.Dropdown(choices=choices, value=current if current in choices else "none")


def unit_updates(fields: dict[str, gr.components.Component], units: list[dict]) -> dict:
    """PNG info's read units into the tab's unit widgets (by `unit_key`); slots without a unit are switched off."""
    updates: dict = {}
    index = 0
    while unit_key(index, "mode") in fields:
        unit = units[index] if index < len(units) else {"mode": OFF, "preprocessor": "none"}
        updates[fields[unit_key(index, "mode")]] = unit["mode"]
        updates[fields[unit_key(index, "preprocessor")]] = _preprocessors_of(unit["mode"], unit["preprocessor"])
        settings = ("scale", "start", "end")
        updates.update({fields[unit_key(index, name)]: unit[name] for name in settings if name in unit})
        index += 1
    return updates


def units_from_widgets(*values: object) -> list[dict]:
    """The `control_units` list from the widgets' values, unit by unit (mode, image, preprocessor, scale, start,
    end); units left off are skipped, a unit without an image is kept so the studio can say so."""
    size = len(UNIT_SETTINGS) + 3
    units = []
    for start in range(0, len(values), size):
        mode, image, preprocessor, scale, begin, end = values[start : start + size]
        if mode == OFF:
            continue
        sent = {"path": image, "meta": {"_type": "gradio.FileData"}} if image else None
        units.append({"mode": mode, "image": sent, "preprocessor": preprocessor, "scale": scale, "start": begin,
                      "end": end})
    return units
