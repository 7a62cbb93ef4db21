"""Session fixtures: tiny models saved to a temporary folder and loaded back through the studio's own
loader, so every path runs for real without the Hub."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from embedded.tiny_models import build_tiny_controlnets, build_tiny_pipeline  # noqa: E402
from pipelines.settings import Settings  # noqa: E402
from pipelines.studio import Studio  # noqa: E402


def pytest_addoption(parser) -> None:
    parser.addoption("--update-api-dump", action="store_true",
                     help="write tests/fixtures/view_api.json from the served app (tests/test_api_surface.py)")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run 10-30x faster on one thread when other work shares the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_pipeline(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_controlnet_dirs(tiny_sd_dir, tmp_path_factory) -> dict[str, str]:
    return build_tiny_controlnets(tiny_sd_dir, tmp_path_factory.mktemp("tiny-controlnets"))


@pytest.fixture(scope="session")
def empty_lora_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("no-loras")


@pytest.fixture(scope="session")
def tiny_studio(tiny_sd_dir, tiny_controlnet_dirs, empty_lora_dir):
    settings = Settings(
        model=str(tiny_sd_dir), lora_dir=str(empty_lora_dir), device="cpu", controlnets=tiny_controlnet_dirs
    )
    return Studio(settings)


@contextmanager
def served_blocks(demo):
    """`demo` served on a free local port, and a `gradio_client` talking to it."""
    from gradio_client import Client

    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        yield Client(url, verbose=False)
    finally:
        demo.close()


@contextmanager
def running_app(studio):
    """The whole page served on a free local port, and a `gradio_client` talking to it."""
    from ui.app import build_app

    demo = build_app(studio)
    demo.queue(default_concurrency_limit=1, max_size=64)
    with served_blocks(demo) as client:
        yield client


@pytest.fixture(scope="session")
def app_url(tmp_path_factory) -> Iterator[str]:
    """The studio as people start it, `python app.py` with the embedded model, shared by the tests that need the
    real thing from outside (the browser suite, the noisy neighbour): starting it takes 10-25 s."""
    from embedded.app_process import running_app as app_process

    with app_process(tmp_path_factory.mktemp("app") / "app.log") as (_, url):
        yield url


@pytest.fixture(scope="session")
def launch_app():
    return running_app


@pytest.fixture(scope="session")
def serve_blocks():
    return served_blocks


@pytest.fixture(scope="module")
def client(tiny_studio):
    with running_app(tiny_studio) as served:
        yield served


@pytest.fixture(scope="module")
def edge_map(tmp_path_factory) -> str:
    """A ready edge map: a white circle on black, 32x32."""
    from PIL import Image, ImageDraw

    path = tmp_path_factory.mktemp("maps") / "edges.png"
    image = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(image).ellipse((6, 6, 26, 26), outline="white", width=2)
    image.save(path)
    return str(path)
