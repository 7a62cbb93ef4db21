"""On ZeroGPU each `spaces.GPU` call runs in a forked worker: a call must carry all the state it needs.

A stand-in for `spaces.GPU` runs every call in a forked child, as ZeroGPU does, after computing the declared
duration from the call's own arguments; the generating handlers must give exactly the in-process results.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import multiprocessing
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from embedded.synthetic_loras import lora_tensors, write_lora
from pipelines import gpu
from pipelines.endpoints import LORA_GRID, MODE_ENDPOINTS
from pipelines.modes import MODES
from pipelines.studio import Studio
from ui.lora_lab import grid_handler, grid_served
from ui.modes import mode_handler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

declared: list[int] = []
workers: set[int] = set()


def forked_gpu(duration):
    """A generator task (the mode tabs stream previews) streams its items back from the child, as ZeroGPU does."""

    def decorate(task):
        def in_a_forked_child(*args, **kwargs):
            declared.append(duration(*args, **kwargs))
            receive, send = multiprocessing.Pipe(duplex=False)
            child = multiprocessing.get_context("fork").Process(target=_run, args=(task, args, kwargs, send))
            child.start()
            outcomes = []
            while not isinstance(outcome := receive.recv(), _Finished):
                outcomes.append(outcome)
            child.join()
            workers.add(child.pid)
            if outcomes and isinstance(outcomes[-1], BaseException):
                raise outcomes[-1]
            return (item for item in outcomes) if inspect.isgeneratorfunction(task) else outcomes[0]

        return in_a_forked_child

    return decorate


class _Finished:
    pass


def _run(task, args, kwargs, send) -> None:
    try:
        if inspect.isgeneratorfunction(task):
            for item in task(*args, **kwargs):
                send.send(item)
        else:
            send.send(task(*args, **kwargs))
    except BaseException as error:  # noqa: BLE001 - handed to the parent, as ZeroGPU does
        send.send(error)
    send.send(_Finished())


def in_process_gpu(duration):
    return lambda task: task


def png_pixels(value) -> np.ndarray:
    image = value if isinstance(value, Image.Image) else Image.open(value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return np.asarray(Image.open(buffer).convert("RGB"))


@pytest.fixture(scope="module")
def studio(tiny_studio, tmp_path_factory):
    folder = tmp_path_factory.mktemp("zerogpu-loras")
    write_lora(folder / "ink.safetensors", lora_tensors(tiny_studio.base, seed=5), {})
    return Studio(dataclasses.replace(tiny_studio.settings, lora_dir=str(folder)))


def handlers(studio, monkeypatch, stand_in):
    monkeypatch.setattr(gpu, "GPU", stand_in)
    made = {}
    for name in ("text", "edge"):
        made[name] = (mode_handler(studio, MODES[name]), MODE_ENDPOINTS[name].params(studio.served))
    made[LORA_GRID.name] = (grid_handler(studio, grid_served(studio)), LORA_GRID.params(grid_served(studio)))
    return made


def call(handler, params, uploads=None, **given):
    values = [given.get(param.name, param.default) for param in params]
    if uploads is not None:
        values.append(uploads)
    outcome = handler(*values, None, None)  # no session, no progress bar
    return list(outcome)[-1] if inspect.isgenerator(outcome) else outcome  # the last yield is the result


def test_generating_handlers_give_the_same_results_in_a_forked_worker(studio, monkeypatch, tmp_path):
    edge_map = tmp_path / "edge.png"
    image = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(image).ellipse((6, 6, 26, 26), outline="white", width=2)
    image.save(edge_map)
    requests = {
        "text": dict(prompt="a red circle", seed=3, steps=2, loras="ink:0.8"),
        "edge": dict(prompt="a red circle", seed=4, steps=2, image=str(edge_map), preprocessor="none"),
        LORA_GRID.name: dict(lora_names=["ink.safetensors"], weights="1", seeds="2", steps=2, prompt="a circle"),
    }
    results = {}
    for label, stand_in in (("forked", forked_gpu), ("in process", in_process_gpu)):
        made = handlers(studio, monkeypatch, stand_in)
        results[label] = {
            name: call(handler, params, [] if name == LORA_GRID.name else None, **requests[name])
            for name, (handler, params) in made.items()
        }
    for name in requests:
        forked, local = results["forked"][name], results["in process"][name]
        first_forked = forked[0][0][0] if name != LORA_GRID.name else forked[0]
        first_local = local[0][0][0] if name != LORA_GRID.name else local[0]
        assert np.array_equal(png_pixels(first_forked), png_pixels(first_local)), name
    assert len(declared) == 3 and all(5 <= seconds <= gpu.MAX_SECONDS for seconds in declared)
    assert len(workers) == 3 and os.getpid() not in workers  # each call really ran in its own forked process


def test_the_timelines_animation_comes_back_whole_from_a_forked_worker(studio, monkeypatch):
    """A yielded PIL image is pickled back from the worker with its first frame only: the GIF goes as a file."""
    from pipelines.endpoints import DENOISE_TIMELINE
    from ui.explore import timeline_handler

    monkeypatch.setattr(gpu, "GPU", forked_gpu)
    params = DENOISE_TIMELINE.params(studio.served)
    samples, _, animation, _ = call(timeline_handler(studio), params, prompt="a circle", steps=4, keep_every=2)
    with Image.open(animation) as gif:
        assert gif.n_frames == len(samples) == 2
