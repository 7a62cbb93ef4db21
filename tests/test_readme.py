"""The README's client snippet, run as written against the app serving the embedded model."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from pipelines.settings import EMBEDDED_MODEL, PROJECT_ROOT, Settings
from pipelines.studio import Studio
from ui.app import build_app

README = PROJECT_ROOT / "README.md"


def readme_client_snippet() -> str:
    api_section = README.read_text().split("## The API", 1)[1]
    return re.search(r"```python\n(.*?)```", api_section, re.S).group(1)


@pytest.fixture(scope="module")
def embedded_app_url(empty_lora_dir):
    studio = Studio(Settings(model=str(EMBEDDED_MODEL), lora_dir=str(empty_lora_dir), device="cpu"))
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield url
    demo.close()


def test_readme_client_snippet_returns_an_image_and_the_control_map(embedded_app_url, monkeypatch, capsys):
    snippet = readme_client_snippet().replace("http://127.0.0.1:7860/", embedded_app_url)
    monkeypatch.chdir(PROJECT_ROOT)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    image = Image.open(namespace["gallery"][0]["image"])
    assert image.size == (64, 64) and "parameters" in image.info
    assert Path(namespace["control_map"]).is_file() and namespace["seed"] == 42
    assert os.fspath(namespace["gallery"][0]["image"]) in capsys.readouterr().out
