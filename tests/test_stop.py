"""Stop: a cancelled run ends at its next denoising step, and on ZeroGPU before the GPU is released.

A cancel reaches a generator handler at its next yield (Gradio closes it there; on ZeroGPU spaces' worker does,
see `ui/live.py`). The ZeroGPU tests run spaces' own wrappers (`spaces/zero/wrappers.py`) with only the scheduling
API and the CUDA hand-over stubbed: each call runs in a forked worker that stays alive for the next call, as on a
Space, and the GPU's release is recorded where spaces calls it.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import multiprocessing
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from embedded.synthetic_loras import lora_tensors, write_lora
from pipelines import gpu
from pipelines.endpoints import DENOISE_TIMELINE, MODE_ENDPOINTS, SWEEP
from pipelines.errors import StudioError
from pipelines.explore.sweeps import run_sweep
from pipelines.grid import render_grid
from pipelines.modes import MODES
from pipelines.request import GenerationRequest, GridRequest, SweepRequest
from pipelines.studio import Studio
from ui import live as live_module
from ui.live import live

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 30
STEP_S = 0.04  # each UNet call is slowed to this, so a cancel lands mid-run


@pytest.fixture(scope="module")
def studio(tiny_studio, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stop-loras")
    write_lora(folder / "ink.safetensors", lora_tensors(tiny_studio.base, seed=5), {})
    return Studio(dataclasses.replace(tiny_studio.settings, lora_dir=str(folder)))


# ------------------------------------------------------------------ live()


def stepping(steps: list[float], ended: threading.Event, obeys_stop: bool = True):
    """Work of 100 steps of 10 ms that sends each step and, like `Studio.generate`, stops when told."""

    def work(send, stop) -> str:
        try:
            for index in range(100):
                if obeys_stop and stop():
                    raise StudioError("Stopped")
                time.sleep(0.01)
                steps.append(time.monotonic())
                send(index)
            return "done"
        finally:
            ended.set()

    return work


def test_closing_a_live_run_returns_once_its_work_has_ended():
    steps: list[float] = []
    ended = threading.Event()
    run = live(stepping(steps, ended))
    assert next(run) == 0
    run.close()
    closed = time.monotonic()
    assert ended.is_set()
    time.sleep(0.1)
    assert len(steps) < 10 and max(steps) <= closed  # no step after close() returned


def test_a_run_stopped_by_its_stop_flag_ends_without_an_error():
    """The page's Stop sets the flag and cancels the event; when the flag reaches the run first, the page must not
    show the run's "Stopped" as an error."""
    flag, ended = threading.Event(), threading.Event()
    run = live(stepping([], ended), flag.is_set)
    assert next(run) == 0
    flag.set()
    rest = list(run)  # the steps sent before the flag was seen, then the end: no StudioError
    assert len(rest) < 10 and all(isinstance(item, int) for item in rest) and ended.is_set()


def test_work_that_ignores_the_stop_is_waited_for_only_so_long(monkeypatch, caplog):
    monkeypatch.setattr(live_module, "STOP_WAIT_S", 0.05)
    ended = threading.Event()
    run = live(stepping([], ended, obeys_stop=False))
    next(run)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=live_module.__name__):
        run.close()
    assert time.monotonic() - started < 0.5 and not ended.is_set()
    assert "still working" in caplog.text


@pytest.mark.parametrize("every, yielded", [(0.0, 5), (60.0, 0)])
def test_progress_is_shown_at_every_step_and_yielded_only_so_often(monkeypatch, every, yielded):
    monkeypatch.setattr(live_module, "YIELD_EVERY_S", every)
    shown: list[float] = []

    def work(send, stop) -> str:
        for step in range(1, 6):
            send(live_module.Progress(step, 5))
        return "image"

    items = list(live(work, progress=lambda fraction, desc: shown.append(fraction)))
    assert shown == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert len(items) == yielded + 1 and items[-1] == live_module.Done("image")


# ------------------------------------------------------------------ grids and sweeps, in process


def count_unet_calls(monkeypatch, studio: Studio, log: Path | None = None, seconds: float = 0.0) -> list[float]:
    """Each UNet call (one a denoising step) is counted here, and written to `log` from whichever process makes it
    (a forked worker's list is its own copy)."""
    unet = studio.base.unet
    forward = unet.forward
    calls: list[float] = []

    def counted(*args, **kwargs):
        time.sleep(seconds)
        output = forward(*args, **kwargs)
        calls.append(time.monotonic())
        if log is not None:
            with log.open("a") as file:
                file.write(f"{calls[-1]}\n")
        return output

    monkeypatch.setattr(unet, "forward", counted)
    return calls


def grid_request(steps: int, seeds: str = "1") -> GridRequest:
    return GridRequest(GenerationRequest(prompt="a circle", steps=steps), ("ink.safetensors",), "0.5, 1", seeds)


def test_a_grid_stops_at_its_next_step(studio, monkeypatch):
    calls = count_unet_calls(monkeypatch, studio)
    with pytest.raises(StudioError, match="Stopped"):
        render_grid(studio, grid_request(STEPS), should_stop=lambda: len(calls) >= 2)
    assert len(calls) == 2  # of 3 rows x 30 steps


def test_a_grid_stopped_between_rows_starts_no_other(studio, monkeypatch):
    calls = count_unet_calls(monkeypatch, studio)
    stopped, rows = threading.Event(), []
    with pytest.raises(StudioError, match="Stopped"):
        render_grid(studio, grid_request(3), should_stop=stopped.is_set,
                    on_row=lambda image: (rows.append(image), stopped.set()))
    assert len(rows) == 1 and len(calls) == 3  # the first row, whole


def test_a_sweep_stops_at_its_next_step(studio, monkeypatch):
    calls = count_unet_calls(monkeypatch, studio)
    sweep = SweepRequest(GenerationRequest(prompt="a circle", steps=STEPS), "guidance scale", "1, 2, 4")
    with pytest.raises(StudioError, match="Stopped"):
        run_sweep(studio, sweep, should_stop=lambda: len(calls) >= 2)
    assert len(calls) == 2  # of 3 images x 30 steps


def test_the_grid_tab_streams_each_finished_row_and_yields_between(studio, monkeypatch):
    from ui.lora_lab import render

    monkeypatch.setattr(live_module, "YIELD_EVERY_S", 0.0)  # a yield for every step
    shown: list = []
    outputs = list(render(studio, grid_request(2, seeds="1, 2"), [], lambda *args, **kwargs: shown.append(args)))
    images = [image for image, _ in outputs if isinstance(image, Image.Image)]
    final, notes = outputs[-1]
    assert len(images) == 3 and images[-1] is final and "Rendered 6 images" in notes
    assert {image.size for image in images} == {final.size}  # the rows to come are left blank
    assert len(outputs) == len(images) + 3 * 2  # and yields of nothing new between
    assert [fraction for (fraction,) in shown] == [step / 6 for step in range(1, 7)]  # over the whole grid


# ------------------------------------------------------------------ on ZeroGPU


@pytest.fixture
def zero_gpu(monkeypatch) -> list[dict]:
    """`pipelines.gpu.GPU` as spaces' own ZeroGPU wrappers; returns the GPU's releases, each with its time."""
    from spaces.zero import wrappers

    releases: list[dict] = []
    scheduled = SimpleNamespace(allowToken="token", nvidiaIndex=0, nvidiaUUID="gpu", idle=True)
    monkeypatch.setattr(wrappers.client, "schedule", lambda **_: scheduled)
    monkeypatch.setattr(wrappers.client, "release", lambda _, **how: releases.append({"at": time.monotonic(), **how}))
    monkeypatch.setattr(wrappers.client, "allow", lambda _token: None)
    monkeypatch.setattr(wrappers.client, "get_duration_seconds", lambda _duration, _size: 60)
    for name in ("unpatch", "init", "move", "enter_mode"):
        monkeypatch.setattr(wrappers.torch, name, lambda *_args, **_kwargs: None)
    monkeypatch.setattr(wrappers.torch, "size", lambda: 0)

    def spaces_gpu(duration):
        def decorate(task):
            generator = inspect.isgeneratorfunction(task)
            wrapper = wrappers.generator_function_wrapper if generator else wrappers.regular_function_wrapper
            return wrapper(task, duration, None)

        return decorate

    monkeypatch.setattr(gpu, "GPU", spaces_gpu)
    before = set(multiprocessing.active_children())
    yield releases
    for worker in set(multiprocessing.active_children()) - before:  # the workers spaces keeps for the next call
        worker.terminate()
        worker.join()


def text_handler(studio: Studio):
    from ui.modes import mode_handler

    params = MODE_ENDPOINTS["text"].params(studio.served)
    return mode_handler(studio, MODES["text"]), params, {"prompt": "a circle"}, []


def grid_handler(studio: Studio):
    from pipelines.endpoints import LORA_GRID
    from ui.lora_lab import grid_handler, grid_served

    params = LORA_GRID.params(grid_served(studio))
    given = {"lora_names": ["ink.safetensors"], "weights": "0.5, 1", "seeds": "1", "prompt": "a circle"}
    return grid_handler(studio, grid_served(studio)), params, given, [[]]  # the session's uploads


def sweep_handler(studio: Studio):
    from ui.explore import sweep_handler

    params = SWEEP.params(studio.served)
    given = {"sweep": "guidance scale", "guidance_scales": "1, 2, 4", "prompt": "a circle"}
    return sweep_handler(studio), params, given, []


def timeline_handler(studio: Studio):
    from ui.explore import timeline_handler

    params = DENOISE_TIMELINE.params(studio.served)
    return timeline_handler(studio), params, {"prompt": "a circle", "keep_every": 5}, []


@pytest.mark.filterwarnings("ignore:Error while reading infos from Nvidia driver FS")
@pytest.mark.parametrize("make", [text_handler, grid_handler, sweep_handler, timeline_handler],
                         ids=["text", "lora_grid", "sweep", "denoise_timeline"])
def test_on_zero_gpu_a_closed_handler_ends_its_run_before_the_gpu_is_released(studio, zero_gpu, monkeypatch,
                                                                              tmp_path, make):
    log = tmp_path / "unet-calls.txt"
    log.touch()
    count_unet_calls(monkeypatch, studio, log, STEP_S)  # before the worker is forked
    handler, params, given, hidden = make(studio)
    values = [given.get(param.name, STEPS if param.name == "steps" else param.default) for param in params]
    outcome = handler(*values, *hidden, None, None)  # no session, no progress bar
    assert inspect.isgenerator(outcome)  # or no cancel reaches it
    next(outcome)
    outcome.close()  # what Gradio does to a cancelled event's generator
    [release] = zero_gpu
    time.sleep(0.5)  # the worker lives on for the next call: a run left going would go on stepping
    steps = [float(line) for line in log.read_text().split()]
    assert 0 < len(steps) < STEPS  # stopped within its first image
    assert max(steps) < release["at"] and not release.get("fail")
