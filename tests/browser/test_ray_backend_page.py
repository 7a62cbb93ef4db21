"""The page as a Space launches it (GRADIO_SERVER_NAME=0.0.0.0, SPACE_ID) with STUDIO_BACKEND naming a Ray Serve
application: two Generator replicas of the embedded model on a local cluster. A person generates in the Text tab,
watches a run's progress and stops it, renders a LoRA grid, and is told plainly what stays on the page's machine; a
`gradio_client` caller gets the same pixels the in-process studio makes."""

from __future__ import annotations

import json
import os
import re
import signal

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from playwright.sync_api import expect
from studio_page import (
    block_labelled,
    error_texts,
    generate,
    open_tab,
    result_images,
    shown_examples,
    text_field,
    use_example,
    wait_for_image_or_error,
)

from embedded.app_process import running_app
from pipelines.request import GenerationRequest
from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.studio import Studio
from serving.wire import call_to_wire

TOKEN = "a-browser-test-token"
EXAMPLE = PROJECT_ROOT / "examples" / "embedded" / "edge_1_map.png"
REQUEST = {"prompt": "a red circle on a blue background", "seed": 7, "steps": 8}


@pytest.fixture(scope="module")
def backend_url():
    from serving.local import local_cluster

    environment = {"STUDIO_BACKEND_TOKEN": TOKEN, "STUDIO_DEVICE": "cpu", "STUDIO_THREADS": "1"}
    with local_cluster(environment, replicas=2, batch_size=2) as url:
        yield url


@pytest.fixture(scope="module")
def space_url(chromium, backend_url, tmp_path_factory):
    log = tmp_path_factory.mktemp("ray-page") / "app.log"
    with running_app(log, GRADIO_SERVER_NAME="0.0.0.0", SPACE_ID="studio/ray-test", STUDIO_BACKEND=backend_url,
                     STUDIO_BACKEND_TOKEN=TOKEN) as (_, url):
        yield url


def test_the_page_runs_on_the_backend_and_a_person_can_generate_stop_and_grid(page, space_url, keep_screenshot):
    panel = open_tab(page, space_url, "Text")
    expect(page.get_by_text(re.compile(r"on cpu \(Ray Serve\)"))).to_be_visible()
    use_example(panel, shown_examples(panel)[0])
    generate(panel)
    wait_for_image_or_error(page, result_images(panel))
    keep_screenshot("ray-first-image")
    assert not error_texts(page)

    panel.get_by_text("Generation settings", exact=True).click()
    panel.get_by_label("number input for Steps", exact=True).fill("100")
    panel.get_by_label("number input for Number of images", exact=True).fill("4")
    generate(panel)
    progress = panel.get_by_text(re.compile(r"Denoising step \d+/100")).first
    expect(progress).to_be_visible()  # the backend's progress reaches the page while it runs
    panel.get_by_role("button", name="Stop", exact=True).click()
    expect(progress).to_be_hidden()
    keep_screenshot("ray-stopped")
    assert not error_texts(page)

    lab = open_tab(page, space_url, "LoRA lab")
    lab.get_by_label("LoRAs in the grid", exact=True).click()
    page.get_by_role("option", name="stripes.safetensors", exact=True).click()  # the backend's LoRA folder
    page.keyboard.press("Escape")
    lab.get_by_label("Prompt", exact=True).fill("a yellow circle on a blue background")
    text_field(lab, "Weights").fill("0.5, 1")
    lab.get_by_label("Seeds (one column each)", exact=True).fill("1, 2")
    lab.get_by_role("button", name="Render the grid", exact=True).click()
    wait_for_image_or_error(page, block_labelled(lab, "Grid").locator("img"))
    expect(lab.get_by_text(re.compile(r"Rendered \d+ images"))).to_be_visible()
    keep_screenshot("ray-lora-grid")
    assert not error_texts(page)


def test_an_api_caller_gets_the_in_process_pixels_and_plain_refusals(space_url):
    client = Client(space_url, verbose=False)
    gallery, *_ = client.predict(**REQUEST, api_name="/text2img")
    with Image.open(gallery[0]["image"]) as served:
        there = np.asarray(served.convert("RGB"))
    here = Studio(Settings(device="cpu", threads=1)).generate(GenerationRequest(**REQUEST)).images[0]
    assert np.array_equal(there, np.asarray(here))
    with pytest.raises(Exception, match="Steps must be a whole number"):
        client.predict(**{**REQUEST, "steps": 0}, api_name="/text2img")
    with pytest.raises(Exception, match="forward noising .* not served remotely"):
        client.predict(clean_image=handle_file(EXAMPLE), api_name="/forward_noise")


def test_the_page_keeps_answering_when_a_replica_dies(space_url, backend_url):
    answer = httpx.post(f"{backend_url}/generate", json=call_to_wire(GenerationRequest(**REQUEST), None, None),
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    os.kill(json.loads(answer.text.splitlines()[-1])["replica"]["pid"], signal.SIGKILL)
    client = Client(space_url, verbose=False)
    for seed in range(4):  # whichever replica Serve picks, the dead one's requests are sent once more
        gallery, *_ = client.predict(**{**REQUEST, "seed": seed}, api_name="/text2img")
        assert gallery and gallery[0]["image"]
