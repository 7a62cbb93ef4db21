"""The "PNG info" tab and the `/png_info` endpoint: the settings an image made here, by AUTOMATIC1111 or Forge (PNG,
JPEG, WEBP), ComfyUI or InvokeAI was made with, and one click that puts them into the tab of the mode that made it.

The endpoint answers with the raw settings text (A1111's `parameters`, ComfyUI's graph or InvokeAI's JSON) and the
settings as JSON (`pipelines/png_info.py`). The preview and the "Send" button parse that text again, with the same
length limit and checks as an upload, rather than trusting settings the page sends back; "Send" only fills
components with values the studio serves, and the studio checks every value again when the person presses Generate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import gradio as gr

from pipelines.errors import StudioError
from pipelines.modes import MODES
from pipelines.parameters import PARAMETERS
from pipelines.png_info import PngSettings, read_parameters_text, settings_from_parameters
from pipelines.studio import Studio
from ui.control_units import unit_updates
from ui.errors import shown_to_person
from ui.fields import DeclaredImage

TAB_ID = "png_info"
SUMMARY_HEADERS = ["Setting", "Value"]
NO_NOTES = "Every setting in the file has a place in the studio."
UPLOAD_DESCRIPTION = (
    "an image with its generation settings: a PNG made here, by AUTOMATIC1111/Forge, ComfyUI or InvokeAI, or an "
    "A1111/Forge JPEG or WEBP"
)
ModeFields = Mapping[str, Mapping[str, gr.components.Component]]


def build_png_info_tab(studio: Studio, tabs: gr.Tabs, mode_fields: ModeFields) -> None:
    """Create the tab inside `tabs`; `mode_fields` are the mode tabs' inputs by mode and parameter name."""
    with gr.Tab("PNG info", id=TAB_ID):
        gr.Markdown(
            "Upload an image made here, by AUTOMATIC1111 or Forge (PNG, JPEG or WEBP), ComfyUI or InvokeAI to read "
            "the settings it was made with, then send them to the tab of the mode that made it. Only the metadata "
            "is read; the image itself is not used."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = DeclaredImage(label="PNG image", type="filepath", sources=["upload", "clipboard"], height=360)
                upload.description = UPLOAD_DESCRIPTION
            with gr.Column(scale=1):
                raw = gr.Textbox(label="Parameters text", lines=5, max_lines=16, interactive=False, buttons=["copy"])
                destination = gr.Markdown()
                summary = gr.Dataframe(
                    headers=SUMMARY_HEADERS, interactive=False, label="What will be sent", wrap=True,
                    column_widths=["35%", "65%"],
                )
                notes = gr.Textbox(label="Notes: not sent, or to change before generating", interactive=False)
                send = gr.Button("Send", variant="primary", visible=False)
                with gr.Accordion("The /png_info answer (JSON)", open=False):
                    answer = gr.JSON(label="Settings for the studio")
        shown = [destination, summary, notes, send]
        # A failed read must not leave the previous file's settings on show, ready to be sent.
        upload.upload(_cleared, outputs=[raw, answer, *shown], api_visibility="private", queue=False).then(
            png_info_handler(studio),
            inputs=[upload],
            outputs=[raw, answer],
            api_name="png_info",
            api_description="The settings an image made here, by AUTOMATIC1111/Forge, ComfyUI or InvokeAI was made "
            "with: the raw settings text, and as JSON the mode, its parameters by name, notes on what was not used "
            "or was changed to fit, and the tool whose layout was read (source).",
        ).success(preview_handler(studio), inputs=[raw], outputs=shown, api_visibility="private", queue=False)
        upload.clear(_cleared, outputs=[raw, answer, *shown], api_visibility="private", queue=False)
        targets = [tabs, *(component for fields in mode_fields.values() for component in fields.values())]
        send.click(
            send_handler(studio, tabs, mode_fields), inputs=[raw], outputs=targets, api_visibility="private",
            show_progress="hidden",  # no spinner over every field of every mode tab
        )


def png_info_handler(studio: Studio) -> Callable[[str], tuple[str, dict]]:
    def png_info(image: str) -> tuple[str, dict]:
        """Read the generation settings stored in an image.

        Args:
            image: an image with its generation settings: a PNG made here, by AUTOMATIC1111/Forge, ComfyUI or
                InvokeAI, or an A1111/Forge JPEG or WEBP
        Returns:
            the raw settings text, and {"mode", "values" (parameters by name), "notes", "source"}
        """
        with shown_to_person():
            text = read_parameters_text(image)
            return text, settings_from_parameters(text, studio.served, studio.loras).as_json()

    return png_info


def preview_handler(studio: Studio) -> Callable[[str], tuple]:
    def preview(text: str) -> tuple[str, list[list[str]], str, gr.Button]:
        with shown_to_person():
            settings = _settings(text, studio)
        title = MODES[settings.mode].title
        return (
            f"These settings go to the **{title}** tab.",
            summary_rows(settings),
            "\n".join(settings.notes) or NO_NOTES,
            gr.Button(f"Send to {title} tab", visible=True),
        )

    return preview


def send_handler(studio: Studio, tabs: gr.Tabs, mode_fields: ModeFields) -> Callable[[str], dict]:
    """The "Send" click: the settings into their mode tab's components, and that tab selected."""

    def send(text: str) -> dict:
        with shown_to_person():
            settings = _settings(text, studio)
        fields = mode_fields[settings.mode]
        filled = {fields[name]: value for name, value in settings.values.items() if name != "control_units"}
        filled.update(unit_updates(fields, settings.values.get("control_units", [])))
        return {tabs: gr.Tabs(selected=settings.mode), **filled}

    return send


def summary_rows(settings: PngSettings) -> list[list[str]]:
    return [[PARAMETERS[name].label, _shown(value)] for name, value in settings.values.items()]


def _settings(text: str, studio: Studio) -> PngSettings:
    if not text or not text.strip():
        raise StudioError("Upload an image with generation parameters first.")
    return settings_from_parameters(text, studio.served, studio.loras)


def _shown(value: object) -> str:
    if isinstance(value, list):  # control units
        return "; ".join(f"{unit['mode']} ({unit['preprocessor']}), weight {unit['scale']:g}" for unit in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cleared() -> tuple:
    return "", None, "", [], "", gr.Button(visible=False)
