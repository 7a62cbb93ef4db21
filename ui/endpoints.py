"""One handler factory for every endpoint (`pipelines/endpoints.py`): the arguments by name become the endpoint's
typed request, the ZeroGPU duration comes from the endpoint, and the signature from its bound parameters.

A tab gives what only it knows: how a request runs and what its outputs look like (`run`), and the session inputs
API callers never send (`hidden`, such as the LoRA lab's uploads). `run(request, *hidden, call)` returns the
outputs, or yields them as they come; the handler streams when `run` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.endpoints import Endpoint
from pipelines.gpu import gpu_task
from pipelines.parameters import Served
from ui.fields import with_signature
from ui.stop import session_flag


@dataclass(frozen=True)
class Call:
    """What Gradio gives a running event besides its arguments."""

    progress: Any  # gr.Progress
    should_stop: Callable[[], bool]  # the session's Stop button was pressed


def endpoint_handler(
    endpoint: Endpoint, served: Served, run: Callable[..., Any], hidden: tuple[str, ...] = ()
) -> Callable:
    """The event handler of `endpoint` as served by `served`: keyword parameters in the declared order, then the
    `hidden` inputs, then Gradio's request and progress."""
    params = endpoint.params(served)
    names = [param.name for param in params]

    def arguments(args: tuple) -> tuple[dict[str, object], tuple, Call]:
        *values, request, progress = args
        declared, extra = values[: len(names)], values[len(names):]
        return dict(zip(names, declared, strict=True)), tuple(extra), Call(progress, session_flag(request).is_set)

    def duration(*args) -> int:
        return endpoint.gpu_seconds(dict(zip(names, args[: len(names)], strict=False)), served)

    if inspect.isgeneratorfunction(run):
        def handler(*args):
            given, extra, call = arguments(args)
            yield from run(endpoint.request(given), *extra, call)
    else:
        def handler(*args):
            given, extra, call = arguments(args)
            return run(endpoint.request(given), *extra, call)

    return with_signature(gpu_task(duration=duration)(handler), params, endpoint.name, hidden=hidden)
