"""An image input that hands the uploaded file to the studio undecoded.

`gr.Image` opens uploads itself, so a corrupt or oversized file fails inside Gradio with a decoder's
message; the studio's own checks (`pipelines.images`) give the person a clear one instead.
"""

from __future__ import annotations

import gradio as gr

from gradio.events import Dependency

class ControlImage(gr.Image):
    def preprocess(self, payload):
        if payload is None or (payload.url or "").startswith("data:"):
            return super().preprocess(payload)
        return payload.path

    def get_block_name(self) -> str:
        return "image"
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component  # the front end is gr.Image's