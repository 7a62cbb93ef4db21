"""Every tab turns a failure into a message the same way (the policy itself is `pipelines/errors.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr

from pipelines.errors import message_for_person


@contextmanager
def shown_to_person() -> Iterator[None]:
    """Raise any failure inside as a `gr.Error` the person (or API caller) reads; the server keeps serving."""
    try:
        yield
    except gr.Error:
        raise
    except Exception as error:
        raise gr.Error(message_for_person(error)) from None
