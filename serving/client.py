"""The page's side of a Ray Serve backend: `RemoteStudio` stands where a `Studio` would, and runs every generation
on the backend over HTTP.

The page asks the backend once for what it serves (`serving.wire.BackendFacts`: limits, model, device, ControlNets);
its LoRA library is the backend's folder. A run streams back its progress and its step hook's pictures (previews,
the timeline's frames), then its result; Stop closes the stream, and the backend ends the run at its next step.

A run whose connection fails, or whose replica dies under it, is sent once more: Serve routes it to another replica,
and with the same seed it makes the same pixels. Anything else (a refused token, a busy studio, a request the studio
refuses) comes back as a `StudioError` whose message a person can read. Every call has a time limit.

What needs the model on the page's own machine says so instead: LoRA uploads and the inspector (the backend reads
LoRAs from its own folder and the Hub), and the Explore tab's forward noising (the model's VAE).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx

from pipelines.errors import StudioError
from pipelines.loader import ModelInfo
from pipelines.lora.sources import LoraEntry
from pipelines.parameters import Served
from pipelines.request import GenerationRequest, GenerationResult
from pipelines.settings import Settings
from serving.wire import (
    REPLICA_LOST_STATUS,
    BackendFacts,
    call_to_wire,
    event_from_wire,
    facts_from_wire,
    lora_entry_from_wire,
    result_from_wire,
)

logger = logging.getLogger(__name__)
# Failures after which nothing ran, or the work was lost with its process: sending again is safe (same seed).
RETRIED_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
STOPPED = "Stopped before the last step; no image was made."
ON_THE_BACKEND = "This page runs generation on a Ray Serve backend (STUDIO_BACKEND), which reads LoRAs from its own " \
    "folder and the Hub: "


class RemoteStudio:
    """A studio served at `url` (the application's route, e.g. http://host:8000/embedded) that expects `token`.

    `settings` are the page's own (its output folder, cache, queue); the model's come from the backend."""

    def __init__(self, url: str, token: str, settings: Settings | None = None, *, timeout_s: float = 600.0,
                 connect_timeout_s: float = 10.0) -> None:
        """`timeout_s` bounds the wait for each answer or event (a queued request waits its turn first);
        `connect_timeout_s` the wait for a connection."""
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.settings = settings or Settings.from_env()
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        )
        self.loras = RemoteLoras(self)
        self.lock = threading.Lock()  # nothing on the page is shared between runs; kept for the Studio's shape
        self._facts: BackendFacts | None = None

    # ------------------------------------------------------------------ what the backend serves

    @property
    def facts(self) -> BackendFacts:
        if self._facts is None:
            self._facts = facts_from_wire(self.answer("GET", "/facts"))
        return self._facts

    @property
    def served(self) -> Served:
        """The limits and defaults the backend checks requests against."""
        return self.facts.served

    @property
    def model(self) -> ModelInfo:
        return self.facts.model

    @property
    def device(self) -> str:
        return f"{self.facts.device} (Ray Serve)"

    @property
    def notes(self) -> list[str]:
        return list(self.facts.notes)

    @property
    def controlnets(self) -> SimpleNamespace:
        return SimpleNamespace(registry=self.facts.controlnets)

    @property
    def base(self) -> None:
        raise StudioError("The forward noising encodes with the model's VAE, and this page runs the model on a Ray "
                          "Serve backend (STUDIO_BACKEND): it is not served remotely.")

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        request: GenerationRequest,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_step: object = None,
        *,
        seeds: Sequence[int] | None = None,
    ) -> GenerationResult:
        """`Studio.generate` on the backend; `on_step` must be a hook the backend can run (`serving.wire.STEP_HOOKS`),
        and gets the pictures it makes there. The result's request is the request as run there."""
        call = call_to_wire(request, list(seeds) if seeds is not None else None, on_step,
                            progress=progress is not None or should_stop is not None)
        for attempt in (1, 2):
            try:
                with self._events(call) as events:
                    for event in events:
                        if should_stop is not None and should_stop():
                            raise StudioError(STOPPED)  # leaving the stream closes it: the backend stops the run
                        if "progress" in event and progress is not None:
                            progress(*event["progress"])
                        elif "preview" in event or "frame" in event:
                            on_step.send(event_from_wire(event))
                        elif "result" in event:
                            return result_from_wire(event["result"], request)
                        elif "detail" in event:
                            raise _Refused(event.get("status", 500), event["detail"])
                raise _Refused(REPLICA_LOST_STATUS, "The backend's answer ended before the result.")
            except _Refused as refused:
                if refused.status != REPLICA_LOST_STATUS or attempt == 2:
                    raise StudioError(refused.detail) from None
                logger.warning("%s/generate: %s Sending it once more.", self.url, refused.detail)
            except RETRIED_ERRORS as error:
                if attempt == 2:
                    raise StudioError(f"The studio backend at {self.url} cannot be reached ({error}); the request "
                                      "was not completed. Try again when it is back.") from None
                logger.warning("%s/generate failed (%s); sending it once more.", self.url, error)
        raise AssertionError("unreachable")

    @contextmanager
    def _events(self, call: dict) -> Iterator[Iterator[dict]]:
        try:
            with self._http.stream("POST", "/generate", json=call) as response:
                if response.status_code != 200:
                    response.read()
                    raise _Refused(response.status_code, self._message(response))
                yield (json.loads(line) for line in response.iter_lines() if line)
        except httpx.TimeoutException:
            raise StudioError(f"The studio backend at {self.url} did not answer within {self.timeout_s:g} s; the "
                              "request was given up.") from None

    # ------------------------------------------------------------------ plain calls

    def answer(self, method: str, path: str, **kwargs: object) -> dict | list:
        """The backend's JSON answer, sent once more where the connection failed; a refusal as a `StudioError`."""
        for attempt in (1, 2):
            try:
                response = self._http.request(method, path, **kwargs)
                break
            except RETRIED_ERRORS as error:
                if attempt == 2:
                    raise StudioError(f"The studio backend at {self.url} cannot be reached ({error}). Try again when "
                                      "it is back.") from None
            except httpx.TimeoutException:
                raise StudioError(f"The studio backend at {self.url} did not answer within {self.timeout_s:g} s."
                                  ) from None
        if response.status_code != 200:
            raise StudioError(self._message(response))
        return response.json()

    def _message(self, response: httpx.Response) -> str:
        detail = _detail(response)
        if response.status_code == 401:
            return f"The studio backend at {self.url} refused this page: {detail}"
        return detail or f"The studio backend at {self.url} answered HTTP {response.status_code}; the request was " \
                         "not completed."

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteStudio:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RemoteLoras:
    """The backend's LoRA library, as the page's LoRA picker, lab and grid use it."""

    def __init__(self, studio: RemoteStudio) -> None:
        self._studio = studio
        self.library = RemoteLibrary(self)

    @property
    def max_file_bytes(self) -> int:
        return self._studio.facts.lora_file_bytes

    def available(self) -> list[LoraEntry]:
        return [lora_entry_from_wire(entry) for entry in self._studio.answer("GET", "/loras")]

    def check(self, name: str) -> LoraEntry:
        return lora_entry_from_wire(self._studio.answer("GET", "/lora", params={"name": name}))

    def add_upload(self, uploaded: str | Path) -> LoraEntry:
        raise StudioError(ON_THE_BACKEND + "a LoRA uploaded here cannot reach it. Put the file in the backend's "
                          "LoRA folder (its STUDIO_LORA_DIR), or give it as hub:owner/repo.")

    def resolve(self, name: str) -> Path:
        raise StudioError(ON_THE_BACKEND + "inspecting a LoRA reads its file, which is not on this page's machine.")


class RemoteLibrary:
    """The backend's LoRA folder by name; its files are not on the page's machine."""

    def __init__(self, loras: RemoteLoras) -> None:
        self._loras = loras

    def names(self) -> list[str]:
        return [entry.name for entry in self._loras.available()]

    def path(self, name: str) -> Path:
        raise StudioError(ON_THE_BACKEND + f"{name!r} is not on this page's machine.")


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _detail(response: httpx.Response) -> str:
    """The backend's message for people, "" where the answer has none (a proxy's page, say)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else ""
