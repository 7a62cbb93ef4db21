"""Start the studio the way a person does, `python app.py`, and wait until it answers.

Shared by the browser suite (one process for all its tests), the launch test and the scripts that measure the
served app (`benchmark_served.py`, `measure_disk.py`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Loading the embedded model and building the page took about 25 s here; CI machines may be slower.
START_TIMEOUT_S = 180
LOG_TAIL_CHARS = 3000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_environment(port: int, **extra: str | None) -> dict[str, str]:
    """The caller's environment without the studio's settings or a listening address, so the app serves its
    defaults on loopback unless `extra` says otherwise (a None there removes the variable)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("STUDIO_") and name != "GRADIO_SERVER_NAME"
    }
    environment.update(
        GRADIO_SERVER_PORT=str(port),
        HF_HUB_OFFLINE="1",
        # One generation on the embedded model took 0.40 s on one thread and 0.96 s on two contended cores.
        OMP_NUM_THREADS="1",
        # A test run should not report itself to Gradio's analytics, nor fill the project's outputs/ folder.
        GRADIO_ANALYTICS_ENABLED="False",
        STUDIO_OUTPUT_DIR="none",
        PYTHONUNBUFFERED="1",
    )
    environment.update(extra)
    return {name: value for name, value in environment.items() if value is not None}


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""


def wait_until_answers(process: subprocess.Popen, url: str, log: Path, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200; fail with the app's log if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"python app.py exited with {process.returncode}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)  # the poll interval of this wait-for loop
    raise TimeoutError(f"python app.py did not answer {url} within {timeout_s} s:\n{log_tail(log)}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_app(log: Path, **environment: str | None) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python app.py` on a free port, with `environment` added; yields the process and its loopback URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=PROJECT_ROOT,
            env=app_environment(port, **environment),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_answers(process, url, log)
        yield process, url
    finally:
        stop(process)
