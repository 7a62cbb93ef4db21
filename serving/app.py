"""The studio as a Ray Serve application: `Generator` replicas, each holding one `Studio`, behind an HTTP `Ingress`
that checks a shared token. `serve run serving/config.yaml` starts it (README, "Generation on Ray Serve").

LoRA sets are multiplexed on the Generator, not on the ingress (Ray is moving to forbid multiplexing there): the
model id of a request is its LoRA set (`serving.wire.lora_set_id`, weights included), so Serve routes a set to a
replica that holds it; a replica holds at most `lora_sets_per_replica` sets as loaded adapters on its one base model
and deletes the least recently used set's adapters when a new set comes. A request without LoRAs has no model id
and goes to any replica.

Where each setting comes from:
- the Studio's (model, LoRA folder, device, threads, limits): the environment, read by `Settings.from_env` as for
  `python app.py`; per application, the Serve config's `runtime_env.env_vars` (one application per base model);
- replicas or autoscaling, the queue limit (`max_queued_requests`) and CPUs or GPUs per replica: the Serve config's
  `deployments` section, Serve's own options;
- the LoRA sets a replica keeps: the Serve config's `args` (`StudioAppArgs`);
- the token: STUDIO_BACKEND_TOKEN in the environment of the cluster, never in the config file.
"""

import asyncio
import hmac
import json
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from pipelines.endpoints import validate_request
from pipelines.errors import StudioError, message_for_person
from pipelines.request import GenerationRequest, GenerationResult
from pipelines.settings import Settings
from pipelines.studio import Studio, together_key
from serving.wire import (
    REPLICA_LOST_STATUS,
    facts_to_wire,
    hook_from_wire,
    lora_entry_to_wire,
    lora_set_id,
    lora_set_names,
    progress_event,
    request_from_wire,
    result_to_wire,
    wire_lora_set_id,
)

# How long a request waits on its replica for others to share its pipeline call, when batching is on.
BATCH_WAIT_S = 0.05
BUSY = ("The studio is busy: every replica is generating and its queue is full. Try again in a moment, when a "
        "request has finished.")
REPLICA_LOST = ("The replica running this request stopped before it finished; Serve is replacing it. Sending the "
                "request again runs it on another replica with the same seed.")


class StudioAppArgs(BaseModel):
    """The application's `args` in the Serve config."""

    model_config = ConfigDict(extra="forbid")

    lora_sets_per_replica: int = Field(
        default=3, ge=1, description="LoRA sets a Generator replica keeps loaded, least recently used deleted first"
    )
    batch_size: int = Field(
        default=1, ge=1, le=64,
        description="text requests that may share one pipeline call on a replica; give the Generator one more "
                    "max_ongoing_requests (serving/config.yaml says why), or requests never meet there",
    )
    # Four pictures at the pixel limit as PNG (about 64 MB each), in base64, with room to spare.
    max_body_mb: int = Field(default=512, ge=1, description="the largest request body the ingress reads, in MiB")


class HeldLoraSet:
    """What a replica's multiplexing LRU holds for one LoRA set. Serve calls `__del__` when it lets go of the set;
    the garbage collector may call it again later, which then does nothing."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def __del__(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


@dataclass
class Job:
    """A request waiting to share a pipeline call with others on this replica (`Studio.generate_together`)."""

    request: GenerationRequest  # checked
    progress: Callable[[int, int], None]
    stop: threading.Event
    hook: object
    shared: int = 1  # how many requests its pipeline calls ran


@serve.deployment(max_ongoing_requests=1, max_queued_requests=16)
class Generator:
    """One Studio; one pipeline call at a time (its LoRA weights and scheduler live on shared modules). With
    `batch_size` above 1 (and one ongoing request more), text requests that differ only in prompts and seeds share
    calls, in groups of up to `batch_size` that wait at most BATCH_WAIT_S for each other."""

    def __init__(self, lora_sets_per_replica: int, batch_size: int = 1) -> None:
        self.studio = Studio(Settings.from_env())
        self._held: dict[str, list[str]] = {}  # LoRA set id -> its adapter names, for each set this replica holds

        async def hold(set_id: str) -> HeldLoraSet:  # a function of its own: Serve keeps its LRU on it
            return await self._load_lora_set(set_id)

        async def together(jobs: list[Job]) -> list[GenerationResult | Exception]:  # Serve keeps its queue on it
            return await self._run_together(jobs)

        self._hold_lora_set = serve.multiplexed(max_num_models_per_replica=lora_sets_per_replica)(hold)
        self._together = serve.batch(max_batch_size=batch_size, batch_wait_timeout_s=BATCH_WAIT_S)(together) \
            if batch_size > 1 else None

    async def run(self, call: dict) -> AsyncIterator[dict]:
        """The events of one `Studio.generate` call (`serving.wire.call_to_wire`), as `serving.wire` writes them: its
        progress and its hook's pictures while it runs, then {"result": ..., "replica": ...}, or {"detail": message,
        "status": HTTP status} when it cannot be served. A caller that goes away (Stop) ends the run at its next
        step."""
        stop = threading.Event()
        events: asyncio.Queue[dict] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def send(event: dict) -> None:  # from the run's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        def progress(done: int, total: int) -> None:
            if call.get("progress"):  # a line per step costs two hops each; sent only to a caller that asks
                send(progress_event(done, total))

        with tempfile.TemporaryDirectory(prefix="studio-request-") as folder:
            running = job = None
            try:
                request = request_from_wire(call.get("request"), Path(folder))
                set_id = lora_set_id(request.loras)
                if set_id:  # Serve takes no empty model id; the base model needs nothing loaded
                    await self._hold_lora_set(set_id)
                hook = hook_from_wire(call.get("hook"), send)
                job = self._job(request, call, progress, stop, hook)
                running = asyncio.ensure_future(self._together(job) if job else asyncio.to_thread(
                    self.studio.generate, request, progress, stop.is_set, hook, seeds=call.get("seeds"),
                ))
                async for event in _until_done(events, running):
                    yield event
                result = running.result()
                if isinstance(result, Exception):
                    raise result
            except Exception as error:  # every failure becomes an answer; a fault is logged under an id it names
                yield {"detail": message_for_person(error), "status": 400 if isinstance(error, StudioError) else 500}
                return
            finally:
                stop.set()
                if running is not None:  # the request's files stay until its run lets go of them
                    await asyncio.wait([running])
        yield {"result": result_to_wire(result), "replica": {**self.report(), "shared": job.shared if job else 1}}

    def _job(self, request: GenerationRequest, call: dict, progress, stop: threading.Event, hook) -> Job | None:
        """The request as a job to run with others, or None where it runs alone (batching off, a grid row's seeds,
        a picture to start from or follow)."""
        if self._together is None or call.get("seeds") is not None:
            return None
        checked, _ = validate_request(request, self.studio.served)
        return Job(checked, progress, stop, hook) if together_key(checked) is not None else None

    async def _run_together(self, jobs: list[Job]) -> list[GenerationResult | Exception]:
        """Each group of jobs that can share calls, one group after another; a result or an error per job."""
        outcomes: dict[int, GenerationResult | Exception] = {}
        groups: dict[str, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(together_key(job.request), []).append(index)
        for members in groups.values():
            group = [jobs[index] for index in members]
            try:
                results = await asyncio.to_thread(self._generate_together, group)
            except Exception as error:
                results = [error] * len(group)
            outcomes.update(zip(members, results, strict=True))
        return [outcomes[index] for index in range(len(jobs))]

    def _generate_together(self, group: list[Job]) -> list[GenerationResult]:
        for job in group:
            job.shared = len(group)

        def progress(done: int, total: int) -> None:
            for job in group:
                job.progress(done, total)

        def all_stopped() -> bool:  # one caller's Stop must not end the others' images
            return all(job.stop.is_set() for job in group)

        return self.studio.generate_together([job.request for job in group], progress, all_stopped,
                                             [job.hook for job in group])

    def facts(self) -> dict:
        return facts_to_wire(self.studio)

    def loras(self) -> list[dict]:
        return [lora_entry_to_wire(entry) for entry in self.studio.loras.available()]

    def check_lora(self, name: str) -> dict:
        try:
            return lora_entry_to_wire(self.studio.loras.check(name))
        except Exception as error:
            return {"detail": message_for_person(error), "status": 400 if isinstance(error, StudioError) else 500}

    def report(self) -> dict:
        """Which process this replica is, what it holds (LoRA sets by id, adapters by LoRA file) and how many
        adapters it has loaded since it started."""
        return {"pid": os.getpid(), "lora_sets": sorted(self._held), "adapters": sorted(self.studio.loras.loaded),
                "adapter_loads": self.studio.loras.loads}

    async def _load_lora_set(self, set_id: str) -> HeldLoraSet:
        adapters = await asyncio.to_thread(self._load_adapters, lora_set_names(set_id))
        self._held[set_id] = adapters
        return HeldLoraSet(lambda: self._release(set_id))

    def _load_adapters(self, names: list[str]) -> list[str]:
        with self.studio.lock:
            return self.studio.loras.load(names)

    def _release(self, set_id: str) -> None:
        """Delete the adapters of a set Serve let go of, except those a set still held shares."""
        adapters = self._held.pop(set_id, [])
        still_held = {adapter for others in self._held.values() for adapter in others}
        with self.studio.lock:
            self.studio.loras.unload(set(adapters) - still_held)


async def _until_done(events: asyncio.Queue[dict], running: asyncio.Future) -> AsyncIterator[dict]:
    """Each event as it comes, until `running` is done and every event it sent is out."""
    while not (running.done() and events.empty()):
        getting = asyncio.ensure_future(events.get())
        await asyncio.wait([getting, running], return_when=asyncio.FIRST_COMPLETED)
        if getting.done():
            yield getting.result()
        else:
            getting.cancel()


api = FastAPI(title="Diffusion studio: generation backend")


def _status_of(error: Exception) -> tuple[int, str]:
    return (503, BUSY) if isinstance(error, BackPressureError) else (REPLICA_LOST_STATUS, REPLICA_LOST)


async def _as_lines(first: dict, events: DeploymentResponseGenerator) -> AsyncIterator[bytes]:
    """The run's events as JSON lines; a replica lost mid-run is the last line's error. When the caller goes away
    (Stop), the run is cancelled, and its replica ends it at the next step."""
    yield json.dumps(first).encode() + b"\n"
    finished = False
    try:
        async for event in events:
            yield json.dumps(event).encode() + b"\n"
        finished = True
    except (BackPressureError, RayActorError) as error:
        status, detail = _status_of(error)
        yield json.dumps({"status": status, "detail": detail}).encode() + b"\n"
    finally:
        if not finished:
            events.cancel()


# `serve.ingress` pickles the FastAPI app when it decorates the class, with the module's globals of that moment:
# whatever the routes call is defined above the class.
def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


async def _bounded_body(request: Request, max_bytes: int) -> bytes | JSONResponse:
    """The body, read no further than `max_bytes` (a declared length past it is refused before any is read)."""
    too_large = _error(413, f"The request is larger than the {max_bytes >> 20} MiB this backend reads (max_body_mb).")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return too_large
    return bytes(body)


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    """HTTP in front of the Generator: the token, the request's LoRA set as Serve's model id, and errors as status
    codes with messages for people."""

    def __init__(self, generator: DeploymentHandle, max_body_mb: int = StudioAppArgs().max_body_mb) -> None:
        token = Settings.from_env().backend_token
        if not token:
            raise StudioError("Set STUDIO_BACKEND_TOKEN to a secret shared with the page that calls this backend; "
                              "without it every request would be refused.")
        self._token = token.encode()
        self._generator = generator
        self._max_body_bytes = max_body_mb << 20
        self._facts: dict | None = None

    @api.post("/generate")
    async def generate(self, request: Request) -> Response:
        """One `Studio.generate` call (`serving.wire.call_to_wire`): its events as JSON lines, the last one its
        result or an error. A request refused before it runs is answered with an HTTP status instead."""
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        body = await _bounded_body(request, self._max_body_bytes)
        if isinstance(body, JSONResponse):
            return body
        try:
            call = json.loads(body)
            set_id = wire_lora_set_id(call.get("request") if isinstance(call, dict) else None)
        except ValueError:
            return _error(400, "The body must be a generate call as JSON (serving/wire.py writes it).")
        except StudioError as error:
            return _error(400, str(error))
        events, first = await self._start(self._generator.options(multiplexed_model_id=set_id, stream=True).run, call)
        if "detail" in first:
            return _error(first["status"], first["detail"])
        return StreamingResponse(_as_lines(first, events), media_type="application/x-ndjson")

    @api.get("/facts")
    async def facts(self, request: Request) -> JSONResponse:
        """What requests are checked against and the page shows (`serving.wire.BackendFacts`): the same on every
        replica, so asked once."""
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if self._facts is None:
            answer = await self._call(self._generator.facts)
            if isinstance(answer, JSONResponse):
                return answer
            self._facts = answer
        return JSONResponse(self._facts)

    @api.get("/loras")
    async def loras(self, request: Request) -> JSONResponse:
        """The backend's LoRA folder, each file described from its header."""
        refusal = self._refusal(request) or await self._call(self._generator.loras)
        return refusal if isinstance(refusal, JSONResponse) else JSONResponse(refusal)

    @api.get("/lora")
    async def lora(self, request: Request, name: str) -> JSONResponse:
        """One LoRA by name (the folder's or hub:owner/repo), checked against the model and described."""
        refusal = self._refusal(request) or await self._call(self._generator.check_lora, name)
        if isinstance(refusal, JSONResponse):
            return refusal
        return _error(refusal["status"], refusal["detail"]) if "detail" in refusal else JSONResponse(refusal)

    def _refusal(self, request: Request) -> JSONResponse | None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return _error(401, "This studio backend needs its token: send the header 'Authorization: Bearer "
                               "<token>' with the value of STUDIO_BACKEND_TOKEN.")
        if not hmac.compare_digest(given.encode(), self._token):
            return _error(401, "The token sent is not this backend's STUDIO_BACKEND_TOKEN; set the same value on "
                               "the page that calls it.")
        return None

    async def _call(self, method, *args: object) -> dict | list | JSONResponse:
        """The Generator's answer, or an error response when it is busy or its replica died."""
        try:
            return await method.remote(*args)
        except (BackPressureError, RayActorError) as error:
            return _error(*_status_of(error))

    @staticmethod
    async def _start(method, *args: object) -> tuple[DeploymentResponseGenerator | None, dict]:
        """A streamed call and its first event, or an error event when it is busy or its replica died before the
        run began."""
        events = None
        try:
            events = method.remote(*args)
            return events, await events.__anext__()
        except (BackPressureError, RayActorError) as error:
            status, detail = _status_of(error)
            return events, {"status": status, "detail": detail}
        except StopAsyncIteration:
            return events, {"status": 500, "detail": "The replica ended the run without an answer."}


def build_app(args: StudioAppArgs) -> Application:
    """The application `serve run serving/config.yaml` builds: the ingress in front of the Generator."""
    return Ingress.bind(Generator.bind(args.lora_sets_per_replica, args.batch_size), args.max_body_mb)
