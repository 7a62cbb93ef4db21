"""A crowd: the queue's size, each visitor's share of it, and refusals that say the studio is busy.

Gradio's `queue(max_size=...)` refuses past the limit for everyone in its own words ("This application is
currently busy" on the page, "Queue is full!" from gradio_client, neither saying how many wait), and nothing in
Gradio limits one session's share. Both checks therefore sit where Gradio first sees a job: `Queue.push`
(gradio/queueing.py), which the `/queue/join` and `/call/<api>` routes call (`queue_join_helper`, gradio/routes.py)
before the job waits for its turn. A handler would only see a job once it runs; an event's `validator=` runs at
join time but in a worker thread, so two jobs of one client joining at once both pass it, and it reports a refusal
as a field that "failed validation".

A refused job is answered at once the way Gradio answers a `gr.Error`: a failed completion on the session's
stream, shown as an error on the page and raised as `AppError` with the same words by gradio_client. It never
enters the queue.

This leans on Gradio's private queue (Gradio 6.31): `Blocks._queue`, its `push`, the waiting and running events,
the session's pending messages. `tests/test_crowd.py` checks it end to end through gradio_client.
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import Queue as AsyncQueue
from collections.abc import Callable, Mapping

import gradio as gr
from gradio.block_function import BlockFunction
from gradio.queueing import Event, Queue
from gradio.server_messages import ProcessCompletedMessage
from gradio.utils import error_payload

from pipelines.endpoints import LORA_GRID, XY_PLOT
from pipelines.settings import Settings
from ui.lora_lab import LORA_INFO
from ui.modes import GPU_QUEUE

logger = logging.getLogger(__name__)

BUSY = "The studio is busy"
# Events of one concurrency group that run at once. The pipeline call itself is one at a time under the studio's
# lock (the LoRA set and scheduler live on shared modules); the second running event decodes its uploads, runs its
# detectors and encodes its images meanwhile, so a neighbour's picture at the pixel limit (2.5 s to decode and cut
# here) no longer holds up a quick request for the whole of that time.
RUNNING_AT_ONCE = 2


def generating(fn: BlockFunction) -> bool:
    """The events a visitor's share counts: those that run the model (the GPU group, the LoRA lab's grid and X/Y plot
    in groups of their own, their runs sharing the studio's lock) and the inspector's, which reads a whole file."""
    return fn.concurrency_id == GPU_QUEUE or fn.api_name in (LORA_GRID.name, XY_PLOT.name, LORA_INFO)


def configure_queue(demo: gr.Blocks, settings: Settings) -> gr.Blocks:
    """`RUNNING_AT_ONCE` events of a group running (one of them in the pipeline; with a backend, as many as it is
    sent at once), at most `settings.queue_size` jobs waiting, and at most `settings.session_queue` generating jobs
    per session."""
    running = settings.backend_runs if settings.backend else RUNNING_AT_ONCE
    demo.queue(default_concurrency_limit=running, max_size=settings.queue_size)
    SessionLimit(demo, settings.session_queue).install()
    return demo


def waiting_words(count: int) -> str:
    return f"{count} request{'' if count == 1 else 's'} {'is' if count == 1 else 'are'} waiting"


def queue_full_message(waiting: int) -> str:
    return f"{BUSY}: {waiting_words(waiting)}, as many as the queue holds. Try again in a minute."


def session_full_message(waiting: int, yours: int) -> str:
    return (
        f"{BUSY}: {waiting_words(waiting)}; you have {yours} queued or running already, the most one visitor may "
        "have. Try again when one of yours finishes."
    )


def visitor(session_hash: str | None, headers: Mapping[str, str]) -> str | None:
    """Whose job it is: its session's. Gradio's MCP server sends every agent's calls through one client of its own
    (one session, marked `x-gradio-user: mcp`, with the agent's request headers), so there the address the nearest
    proxy saw (the last `x-forwarded-for` entry, which a Space's proxy writes) tells agents apart; without a proxy
    all agents share one visitor's share."""
    if session_hash is None or headers.get("x-gradio-user") != "mcp":
        return session_hash
    address = headers.get("x-forwarded-for", "").split(",")[-1].strip()
    return f"{session_hash} {address}" if address else session_hash


def _headers(event: Event) -> Mapping[str, str]:
    return event.request.headers if event.request is not None else {}


class SessionLimit:
    """Refuses any job when the queue is full, and a generating job when its session already has `per_session` of
    them queued or running (PNG info, the LoRA list or Stop are never counted against a session)."""

    def __init__(self, demo: gr.Blocks, per_session: int, is_generating: Callable[[BlockFunction], bool] = generating):
        self.queue: Queue = demo._queue
        self.per_session = per_session
        self.is_generating = is_generating
        self._push = self.queue.push
        self._lock = asyncio.Lock()

    def install(self) -> None:
        self.queue.push = self.push

    async def push(self, body, request, username):
        fn = self.queue.blocks.fns.get(body.fn_index) if body.fn_index is not None else None
        if fn is None:  # Gradio's own push answers that
            return await self._push(body=body, request=request, username=username)
        # Counted and queued under one lock, so that jobs of one client joining at once are counted one by one.
        async with self._lock:
            refusal = self.refusal(fn, visitor(body.session_hash, request.headers))
            if refusal is None:
                return await self._push(body=body, request=request, username=username)
        logger.debug("refused a %s job of session %s: %s", fn.api_name, body.session_hash, refusal)
        return await self._refuse(body, fn, request, username, refusal)

    def refusal(self, fn: BlockFunction, who: str | None) -> str | None:
        """The message that refuses this session's new job of `fn`, or None when it may join the queue.

        The queue is full at Gradio's own `max_size`, counted as Gradio counts it, so Gradio's refusal never comes
        first."""
        waiting = len(self.queue)
        if self.queue.max_size is not None and waiting >= self.queue.max_size:
            return queue_full_message(waiting)
        if not self.is_generating(fn):
            return None
        yours = self.jobs_of(who)
        if yours >= self.per_session:
            return session_full_message(waiting, yours)
        return None

    def jobs_of(self, who: str | None) -> int:
        """The visitor's generating jobs, waiting or running (an API call without a session is its own)."""
        if who is None:
            return 0
        waiting = (event for group in self.queue.event_queue_per_concurrency_id.values() for event in group.queue)
        running = (event for job in self.queue.active_jobs if job for event in job)
        return sum(
            1 for events in (waiting, running) for event in events
            if self.is_generating(event.fn) and visitor(event.session_hash, _headers(event)) == who
        )

    async def _refuse(self, body, fn: BlockFunction, request, username, message: str):
        """Answer the job at once with a failed completion, as Gradio answers a handler's `gr.Error`: registered on
        the session's stream like `Queue.push` registers a job, but never queued."""
        event = Event(body.session_hash, fn, request, username)
        body.session_hash = event.session_hash
        async with self.queue.pending_message_lock:
            if event.session_hash not in self.queue.pending_messages_per_session:
                self.queue.pending_messages_per_session[event.session_hash] = AsyncQueue()
            self.queue.pending_event_ids_session.setdefault(event.session_hash, set()).add(event._id)
        error = error_payload(gr.Error(message), show_error=True)
        self.queue.send_message(event, ProcessCompletedMessage(output=error, title="Error", success=False))
        return True, event._id, "success"
