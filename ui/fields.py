"""Gradio components and endpoint signatures made from the parameter declarations (`pipelines/parameters.py`).

Every component hands its value to the handler exactly as it was sent: Gradio's own checks would refuse an
out-of-range slider value without naming the field, round 512.7 to 513 silently, or turn a list into text.
The studio checks every value instead (`pipelines/validation.py`), with messages that name the field. The
API page and `client.view_api()` show each parameter's help line, range and unit from the same declaration.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import gradio as gr

from pipelines.parameters import Param
from pipelines.validation import KINDS
from ui.control_image import ControlImage


class _Declared:
    """Mixin: the value passes through unchanged; the API info carries the declaration's help line."""

    description = ""

    def preprocess(self, payload):
        return payload

    def api_info(self) -> dict:
        return {**super().api_info(), "additional_description": self.description}

    def get_block_name(self) -> str:
        # The browser draws, and the API page names, the Gradio component this one extends.
        gradio_class = next(cls for cls in type(self).__mro__ if cls.__module__.startswith("gradio."))
        return gradio_class.__name__.lower()

    get_block_class = get_block_name


class DeclaredSlider(_Declared, gr.Slider):
    pass


class DeclaredNumber(_Declared, gr.Number):
    pass


class DeclaredTextbox(_Declared, gr.Textbox):
    pass


class DeclaredCheckbox(_Declared, gr.Checkbox):
    pass


class DeclaredDropdown(_Declared, gr.Dropdown):
    def api_info(self) -> dict:
        """A menu that also takes typed values (the style mode's per-block JSON) lists no enum: the MCP library checks
        calls against the schema and would refuse them."""
        info = super().api_info()
        if self.allow_custom_value and not self.multiselect:
            info.pop("enum", None)
        return info


class DeclaredUnits(_Declared, gr.JSON):
    """A list of control units; each image must arrive as a file (Gradio then checks it is one of its uploads),
    never as a path string, which would let a caller name any file on the server."""

    def preprocess(self, payload):
        value = payload.model_dump() if hasattr(payload, "model_dump") else payload
        for unit in value if isinstance(value, list) else ():
            if isinstance(unit, dict) and isinstance(unit.get("image"), str):
                raise gr.Error(
                    "More ControlNet units (control_units): send each unit's image as a file (handle_file in "
                    "gradio_client), not as a path."
                )
        return value


class DeclaredImage(_Declared, ControlImage):
    def preprocess(self, payload):
        return ControlImage.preprocess(self, payload)


def describe(param: Param) -> str:
    """The one-line help with the range or choices, as the API page shows it."""
    if param.range_text:
        return f"{param.help}; {param.range_text}"
    if isinstance(param.choices, tuple) and KINDS[param.kind].component == "dropdown":
        return f"{param.help}; one of {', '.join(param.choices)}"
    return param.help


def component_for(param: Param, **overrides) -> gr.components.Component:
    """The input component for a bound `param`; `overrides` adjust its look (lines, height, visibility)."""
    common = dict(label=param.label, value=param.default)
    common.update(overrides)
    component = _build(param, common)
    component.description = describe(param)
    return component


def _build(param: Param, common: dict) -> gr.components.Component:
    kind = KINDS[param.kind]
    if kind.component == "image":
        return DeclaredImage(type="filepath", **{**common, "value": None})
    if kind.component == "units":
        return DeclaredUnits(**{**common, "value": list(common["value"])})
    precision = 0 if kind.api_type is int else None
    if kind.component == "slider" and _is_open_ended(param):
        return DeclaredNumber(precision=precision, minimum=param.low, **common)
    if kind.component == "slider":
        return DeclaredSlider(param.low, param.high, step=param.step, precision=precision, **common)
    if kind.component == "checkbox":
        return DeclaredCheckbox(**common)
    if kind.component == "dropdown":
        return DeclaredDropdown(common.pop("choices", list(param.choices)), **common)
    if kind.component == "multiselect":
        common["value"] = list(common["value"] or ())
        return DeclaredDropdown(list(param.choices or ()), multiselect=True, allow_custom_value=True, **common)
    return DeclaredTextbox(**common)


def _is_open_ended(param: Param) -> bool:
    """A range too wide for a slider (the seed)."""
    return param.high is None or param.high - param.low > 100_000


def with_signature(handler: Callable, params: Iterable[Param], name: str, hidden: Iterable[str] = ()) -> Callable:
    """Give `handler(*args)` the declared parameters as its signature, so the API takes them by name, and a
    docstring that documents each of them, so its MCP tool does too.

    `args` are the declared values, then the `hidden` inputs API callers never send (a session's `gr.State`),
    then the caller's `gr.Request` and a `gr.Progress`, which Gradio fills in by their place in this signature.
    """
    params = list(params)
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [
        inspect.Parameter(
            param.name, positional, default=None if KINDS[param.kind].component == "image" else param.default,
            annotation=KINDS[param.kind].api_type,
        )
        for param in params
    ]
    parameters += [inspect.Parameter(extra, positional, default=None) for extra in hidden]
    parameters += [
        inspect.Parameter("request", positional, default=None, annotation=gr.Request),
        inspect.Parameter("progress", positional, default=gr.Progress()),
    ]
    handler.__signature__ = inspect.Signature(parameters)
    # Gradio finds the gr.Request parameter by its type hint, read from __annotations__ rather than the signature.
    handler.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters
                               if parameter.annotation is not inspect.Parameter.empty}
    handler.__name__ = name
    handler.__doc__ = tool_docstring(params)
    return handler


def tool_docstring(params: Iterable[Param]) -> str:
    """An "Args:" section with one line per parameter, its label and help: Gradio's MCP server reads each
    parameter's description from it (`gradio.utils.get_function_description`, one line each).

    It has no summary line: the tool's description is the event's `api_description`, and where an event has none
    Gradio would show a summary here in `client.view_api()` too, changing the API's description."""
    return "\n".join(["Args:", *(f"    {param.name}: {param.label}: {describe(param)}" for param in params)])
