"""The page's side of a Ray Serve backend: `RemoteStudio` sends a request over HTTP and returns its result.

A request whose connection fails, or whose replica dies under it, is sent once more: Serve routes it to another
replica, and with the same seed it makes the same pixels. Anything else (a refused token, a busy studio, a request the
studio refuses) comes back as a `StudioError` whose message a person can read. Every call has a time limit.
"""

from __future__ import annotations

import logging

import httpx

from pipelines.errors import StudioError
from pipelines.parameters import Served
from pipelines.request import GenerationRequest, GenerationResult
from serving.wire import REPLICA_LOST_STATUS, request_to_wire, result_from_wire, served_from_wire

logger = logging.getLogger(__name__)
# Failures after which nothing ran, or the work was lost with its process: sending again is safe (same seed).
RETRIED_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


class RemoteStudio:
    """A studio served at `url` (the application's route, e.g. http://host:8000/embedded) that expects `token`."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 600.0, connect_timeout_s: float = 10.0) -> None:
        """`timeout_s` bounds the wait for an answer (a queued request waits its turn first); `connect_timeout_s`
        the wait for a connection."""
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        )

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run `request` on the backend; the result's request is the request as run there."""
        return result_from_wire(self._answer("POST", "/generate", json=request_to_wire(request)), request)

    def served(self) -> Served:
        """The limits and defaults the backend checks requests against."""
        return served_from_wire(self._answer("GET", "/served"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteStudio:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _answer(self, method: str, path: str, **kwargs: object) -> dict:
        response = self._send_retrying_once(method, path, **kwargs)
        if response.status_code == 200:
            return response.json()
        detail = _detail(response)
        if response.status_code == 401:
            raise StudioError(f"The studio backend at {self.url} refused this page: {detail}")
        raise StudioError(detail or f"The studio backend at {self.url} answered HTTP {response.status_code}; the "
                                    "request was not completed.")

    def _send_retrying_once(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = self._send(method, path, **kwargs)
            if response.status_code != REPLICA_LOST_STATUS:
                return response
            logger.warning("%s%s: %s Sending it once more.", self.url, path, _detail(response))
        except RETRIED_ERRORS as error:
            logger.warning("%s%s failed (%s); sending it once more.", self.url, path, error)
        try:
            return self._send(method, path, **kwargs)
        except RETRIED_ERRORS as error:
            raise StudioError(f"The studio backend at {self.url} cannot be reached ({error}); the request was not "
                              "completed. Try again when it is back.") from None

    def _send(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except RETRIED_ERRORS:
            raise
        except httpx.TimeoutException:
            raise StudioError(f"The studio backend at {self.url} did not answer within {self.timeout_s:g} s; the "
                              "request was given up.") from None


def _detail(response: httpx.Response) -> str:
    """The backend's message for people, "" where the answer has none (a proxy's page, say)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else ""
