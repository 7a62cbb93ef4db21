"""Runs that show what they are doing: the work goes on in a worker thread while the handler, a generator, yields
what the work sends (previews, timeline frames, progress) as it comes, then the result.

Gradio streams each yield to the page; `gradio_client.predict` returns the last one, the result, so an endpoint's
output is the same as a plain handler's.

Stopping. A cancel (the Stop button's `cancels=`, a client's /cancel, a closed page) reaches a generator handler
only at its next yield:
- Gradio (gradio/routes.py `cancel_event`, gradio/utils.py `SyncToAsyncIterator.aclose`) closes the generator
  there, on its event loop's thread;
- on ZeroGPU (spaces/zero/wrappers.py `generator_function_wrapper`) closing the main process's generator sets the
  worker's stop event, which the forked worker checks after each item the handler yields: it closes the handler's
  generator there, then reports the end, and only then is the GPU released (`client.release`).
So `live` also yields the work's `Progress` every YIELD_EVERY_S, and a handler yields something for it, if only
`gr.skip()`s. When closed, `live` tells the work to stop at its next step and waits for it to end, so no pipeline
runs on after its handler has returned, and on ZeroGPU the GPU is never released under a running pipeline.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

Result = TypeVar("Result")
Send = Callable[[object], None]
ShouldStop = Callable[[], bool]

# How long a closed run waits for its work to end. Stopped, a run finishes its current denoising step and decodes
# what it has: well under a second on a GPU, a few seconds at real size on a CPU (about 3 s a step, NOTES.md).
# Longer is work no step can stop (a LoRA or ControlNet still loading from the Hub), and waiting for it would cost
# every visitor: Gradio closes a cancelled generator on its event loop's thread, and on ZeroGPU the main process's
# close waits for the worker's.
STOP_WAIT_S = 10.0
# A run with nothing new to show yields a `Progress` this often, so that a cancel reaches it within about this time
# and a step. Not every step: each yield sends the page a message, and switches Gradio's progress bar to its
# "generating" look until the next progress message, which made it blink (on 8-28 of 190 frames of a 60-step,
# 3-second run yielding every step, 3-4 yielding every 0.25 s: Chromium, Gradio 6.31).
YIELD_EVERY_S = 0.25

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Done(Generic[Result]):
    result: Result


@dataclass(frozen=True)
class Progress:
    """How far the work is, for Gradio's progress bar."""

    done: int
    total: int
    what: str = "Denoising step"

    def show(self, progress: Callable | None) -> None:
        if progress is not None:
            progress(self.done / self.total, desc=f"{self.what} {self.done}/{self.total}")


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def live(
    work: Callable[[Send, ShouldStop], Result], should_stop: ShouldStop | None = None, progress: Callable | None = None
) -> Iterator[object]:
    """Run `work(send, stop)` in a worker thread; yield each item it sends, then `Done(its result)`.

    A `Progress` the work sends is shown on `progress` (Gradio's), and yielded only when YIELD_EVERY_S has passed
    since the last yield. An exception in the work is raised here, unless `should_stop()` is true: then this just
    ends (the page's Stop also cancels the event, but its stop flag may reach the run first, and the person asked
    for no error). `stop()` is true once `should_stop()` is, or once the caller stops iterating (closes this
    generator); then this waits, up to STOP_WAIT_S, for the work to end.
    """
    events: queue.SimpleQueue = queue.SimpleQueue()
    abandoned = threading.Event()

    def stop() -> bool:
        return abandoned.is_set() or bool(should_stop and should_stop())

    def run() -> None:
        try:
            events.put(Done(work(events.put, stop)))
        except BaseException as error:  # noqa: BLE001 - handed to the handler's thread, which raises it
            events.put(_Failed(error))

    worker = threading.Thread(target=run, name="live-run", daemon=True)
    worker.start()
    last_yield = time.monotonic()
    try:
        while True:
            item = events.get()
            if isinstance(item, _Failed):
                if should_stop is not None and should_stop():
                    return  # stopped as the person asked (`ui/stop.py`): nothing more to show, and no error
                raise item.error
            if isinstance(item, Progress):
                item.show(progress)
                if time.monotonic() - last_yield < YIELD_EVERY_S:
                    continue
            yield item
            last_yield = time.monotonic()
            if isinstance(item, Done):
                return
    finally:
        abandoned.set()
        worker.join(STOP_WAIT_S)
        if worker.is_alive():
            logger.warning("A stopped run was still working after %s s; it goes on unwatched.", STOP_WAIT_S)
