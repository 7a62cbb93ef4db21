"""A crowd: each visitor's share of the queue, the queue's size, refusals that say the studio is busy, and images
that are never handed out half written.

A toy page with the studio's queue (`ui/queue.configure_queue`) and a generating event that holds its place in the
GPU group until the test lets one job go, driven through gradio_client: one Client is one session. RUNNING_AT_ONCE
jobs run, the rest wait.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio import processing_utils
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

import app
from pipelines.errors import StudioError
from pipelines.settings import Settings
from ui import cache_writes
from ui.queue import BUSY, GPU_QUEUE, RUNNING_AT_ONCE, configure_queue, queue_full_message, session_full_message


@contextmanager
def toy_studio(queue_size: int, session_queue: int):
    """A page whose /work holds its place in the GPU group until `release` lets it end (`started` lists the jobs
    that began); /echo is a quick event outside it."""
    started: list[str] = []
    release = threading.Semaphore(0)

    def work(text: str) -> str:
        started.append(text)
        release.acquire(timeout=30)
        return text.upper()

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        gr.Button("Run").click(work, box, out, api_name="work", concurrency_id=GPU_QUEUE)
        gr.Button("Echo").click(lambda text: text, box, out, api_name="echo")
    configure_queue(demo, Settings(queue_size=queue_size, session_queue=session_queue))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        yield demo, url, started, release
    finally:
        release.release(100)
        demo.close()


def wait_until(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_visitors_fourth_job_is_refused_while_another_visitor_is_served():
    with toy_studio(queue_size=32, session_queue=3) as (demo, url, started, release):
        greedy, other = Client(url, verbose=False), Client(url, verbose=False)
        jobs = []
        for job in range(3):  # one by one, so that the first jobs run and the others wait in this order
            jobs.append(greedy.submit(f"job {job}", api_name="/work"))
            wait_until(lambda job=job: len(started) + len(demo._queue) == job + 1)
        waiting = 3 - RUNNING_AT_ONCE

        with pytest.raises(AppError) as refused:
            greedy.predict("job 4", api_name="/work")
        assert str(refused.value) == session_full_message(waiting=waiting, yours=3)
        assert "waiting; you have 3 queued or running already" in str(refused.value)
        assert greedy.predict("quick", api_name="/echo") == "quick"  # what does not generate is never capped

        served = other.submit("someone else", api_name="/work")
        wait_until(lambda: len(demo._queue) == waiting + 1)
        # A finished job frees its place in the session's share.
        release.release()
        wait_until(lambda: any(job.done() for job in jobs))
        wait_until(lambda: len(demo._queue) == waiting)
        jobs.append(greedy.submit("job 4 again", api_name="/work"))
        wait_until(lambda: len(demo._queue) == waiting + 1)

        release.release(4)
        assert served.result(timeout=30) == "SOMEONE ELSE"
        assert [job.result(timeout=30) for job in jobs] == ["JOB 0", "JOB 1", "JOB 2", "JOB 4 AGAIN"]


def test_a_burst_from_one_visitor_gets_its_share_and_busy_refusals_for_the_rest():
    with toy_studio(queue_size=32, session_queue=3) as (demo, url, started, release):
        client = Client(url, verbose=False)
        burst = {f"job {n}": client.submit(f"job {n}", api_name="/work") for n in range(6)}  # joining at once
        wait_until(lambda: sum(job.done() for job in burst.values()) == 3)  # three refused at once
        refused = {text for text, job in burst.items() if job.done()}
        assert all(str(burst[text].exception()).startswith(f"{BUSY}: ") for text in refused)
        release.release(3)
        served = {text: job.result(timeout=30) for text, job in burst.items() if text not in refused}
        assert served == {text: text.upper() for text in served} and len(served) == 3


def test_a_full_queue_refuses_everyone_and_says_how_many_wait():
    with toy_studio(queue_size=1, session_queue=3) as (demo, url, started, release):
        first = Client(url, verbose=False)
        jobs = []
        for running in range(1, RUNNING_AT_ONCE + 1):  # one by one: a queue of one holds a second joining at once
            jobs.append(first.submit("running", api_name="/work"))
            wait_until(lambda running=running: len(started) == running)
        jobs.append(first.submit("waiting", api_name="/work"))
        wait_until(lambda: len(demo._queue) == 1)

        late = Client(url, verbose=False)
        for endpoint in ("/work", "/echo"):  # every job, in the studio's words rather than Gradio's "Queue is full!"
            with pytest.raises(AppError) as refused:
                late.predict("late", api_name=endpoint)
            assert str(refused.value) == queue_full_message(1)
        assert str(refused.value).startswith(f"{BUSY}: 1 request is waiting, as many as the queue holds.")
        release.release(RUNNING_AT_ONCE + 1)
        assert [job.result(timeout=30) for job in jobs] == ["RUNNING"] * RUNNING_AT_ONCE + ["WAITING"]


def test_queue_settings_come_from_the_environment_and_flags_win():
    assert (Settings().queue_size, Settings().session_queue) == (32, 3)
    environment = {"STUDIO_QUEUE_SIZE": "8", "STUDIO_SESSION_QUEUE": "2"}
    from_env = Settings.from_env(environment)
    assert (from_env.queue_size, from_env.session_queue) == (8, 2)

    args = app.parse_args(["--queue-size", "5"])
    flagged = from_env.with_flags(queue_size=args.queue_size, session_queue=args.session_queue)
    assert (flagged.queue_size, flagged.session_queue) == (5, 2)  # an absent flag leaves the environment's value
    with pytest.raises(SystemExit):
        app.parse_args(["--session-queue", "0"])
    with pytest.raises(StudioError, match="STUDIO_SESSION_QUEUE must be at least 1"):
        Settings.from_env({"STUDIO_SESSION_QUEUE": "0"})


def test_an_image_made_again_while_it_is_downloaded_is_always_read_whole(tmp_path, monkeypatch):
    """Two requests that make the same image write the same cache path; Gradio's own write empties it first."""
    monkeypatch.setattr(processing_utils, "save_pil_to_cache", processing_utils.save_pil_to_cache)  # undone after
    cache_writes.install()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    path = Path(processing_utils.save_pil_to_cache(image, str(tmp_path), format="png"))
    whole, reads, done = path.read_bytes(), Counter(), threading.Event()

    def write_again() -> None:
        while not done.is_set():
            assert processing_utils.save_pil_to_cache(image, str(tmp_path), format="png") == str(path)

    writer = threading.Thread(target=write_again)
    writer.start()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        reads[path.read_bytes() == whole] += 1
    done.set()
    writer.join()
    assert reads[False] == 0 and reads[True] > 100, reads
    assert path.parent.name == processing_utils.hash_bytes(whole) and path.name == "image.png"  # Gradio's own path


def test_agents_calling_through_mcp_each_get_a_visitors_share():
    """Gradio's MCP server sends every agent's calls through one client (one session, `x-gradio-user: mcp`) with the
    agent's request headers: each address a Space's proxy forwards gets its own share, and agents without one share
    one."""
    with toy_studio(queue_size=32, session_queue=2) as (demo, url, started, release):
        mcp = Client(url, verbose=False, headers={"x-gradio-user": "mcp"})
        first, second = ({"x-forwarded-for": f"203.0.113.9, 10.0.0.{n}"} for n in (1, 2))
        jobs = [mcp.submit("a", api_name="/work", headers=first) for _ in range(2)]
        wait_until(lambda: len(started) + len(demo._queue) == 2)
        with pytest.raises(AppError, match="you have 2 queued or running already"):
            mcp.submit("a", api_name="/work", headers=first).result(timeout=30)
        jobs.append(mcp.submit("b", api_name="/work", headers=second))  # another agent behind the same first hop
        wait_until(lambda: len(started) + len(demo._queue) == 3)
        release.release(3)
        assert sorted(job.result(timeout=30) for job in jobs) == ["A", "A", "B"]
