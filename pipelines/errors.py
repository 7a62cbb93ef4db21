"""The error policy: what a person is told when a request cannot be served.

A `StudioError` carries a message written for the person who sent the request; it is shown as it is. Any
other exception is a fault of the server: it is logged with its traceback under a short id, and the person
sees only that id, never a class name, a library's text or a server path.
"""

from __future__ import annotations

import logging
import uuid

logger = logging.getLogger("studio")


class StudioError(Exception):
    """A request that cannot be served, with a message written for the person who sent it."""


def message_for_person(error: BaseException) -> str:
    if isinstance(error, StudioError):
        return str(error)
    error_id = uuid.uuid4().hex[:8]
    logger.error("request failed (error id %s)", error_id, exc_info=error)
    return (
        f"Something went wrong on the server (error id {error_id}); the request was not completed. "
        "Try again, or report the id."
    )
