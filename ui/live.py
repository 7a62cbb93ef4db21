"""Runs that show what they are doing: the work goes on in a worker thread while the handler, a generator, yields
what the work sends (previews, timeline frames, progress) as it comes, then the result.

Gradio streams each yield to the page; `gradio_client.predict` returns the last one, the result, so an endpoint's
output is the same as a plain handler's. If the caller stops listening (Gradio cancels the event, the page closes),
the work is told to stop at its next step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

Result = TypeVar("Result")
Send = Callable[[object], None]
ShouldStop = Callable[[], bool]


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


def live(work: Callable[[Send, ShouldStop], Result], should_stop: ShouldStop | None = None) -> Iterator[object]:
    """Run `work(send, stop)` in a worker thread; yield each item it sends, then `Done(its result)`.

    An exception in the work is raised here. `stop()` is true once `should_stop()` is, or once the caller stops
    iterating.
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

    threading.Thread(target=run, name="live-run", daemon=True).start()
    try:
        while True:
            item = events.get()
            if isinstance(item, _Failed):
                raise item.error
            yield item
            if isinstance(item, Done):
                return
    finally:
        abandoned.set()
