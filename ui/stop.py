"""The Stop button: a queued run is cancelled by Gradio; a running one stops at its next denoising step.

Each browser session has its own stop flag, so one person's Stop never stops another's run. The flag is
a plain event in this process: on ZeroGPU, where each run is a forked worker, only Gradio's cancel applies.
"""

from __future__ import annotations

import threading

import gradio as gr

_flags: dict[str, threading.Event] = {}
_lock = threading.Lock()


def session_flag(request: gr.Request | None) -> threading.Event:
    """The session's stop flag, cleared: a run calls this as it starts and polls the flag at every step."""
    flag = _flag(request)
    flag.clear()
    return flag


def request_stop(request: gr.Request) -> None:
    _flag(request).set()
    gr.Info("Stopped: a waiting run was cancelled; a running one ends at its next step and makes no image.")


def forget_session(request: gr.Request) -> None:
    """When a page closes, its flag goes too."""
    with _lock:
        _flags.pop(_session(request), None)


def _flag(request: gr.Request | None) -> threading.Event:
    with _lock:
        return _flags.setdefault(_session(request), threading.Event())


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or ""
