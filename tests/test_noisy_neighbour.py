"""A noisy neighbour: for every endpoint the heaviest input it accepts and the heaviest it refuses, sent while a
second client loads the page and asks /text2img. The page must answer every time within 1 s, and the second
client's image arrive within twice its time on a quiet server (plus JITTER_S).

Two things make that hold (figures in docs/benchmarks.md): the page is built once per address (`ui/page_cache.py`;
Gradio built it for every visit, 0.10 s of the GIL each), and two events of the GPU group run at once
(`ui/queue.py`), so a neighbour's upload at the pixel limit is decoded and cut outside the studio's lock while the
quick request runs. Before both, the neighbour waited up to 2.4 s against 0.24 s quiet, the page up to 0.8 s.

The studio runs as people start it (`python app.py`, the embedded model) in a process of its own, so the page's
answers are measured from outside its GIL.
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image, PngImagePlugin

from pipelines.settings import Limits

PAGE_BUDGET_S = 1.0
# Two cores shared by the server, three clients and the test: quiet medians of three calls ranged 0.18-0.34 s
# across runs here.
JITTER_S = 0.25
PROBE_EVERY_S = 0.1
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "embedded"
QUICK = dict(steps=4, seed=1, randomize_seed=False)


@dataclass
class Probe:
    """GET / every PROBE_EVERY_S until stopped; the answers' times."""

    url: str
    times: list[float] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as answer:
                answer.read()
            self.times.append(time.perf_counter() - started)
            self.stopped.wait(PROBE_EVERY_S)


def neighbour_text2img(client: Client) -> float:
    started = time.perf_counter()
    client.predict(prompt="a red circle on a blue background", **QUICK, api_name="/text2img")
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """The heaviest uploads: a picture at the pixel limit and one just past it, PNG text at and far past PNG info's
    limit."""
    folder = tmp_path_factory.mktemp("heavy")
    side = int(Limits().max_input_pixels**0.5)
    made = {}
    for name, size in (("largest", (side, side)), ("too_large", (side + 1, side))):
        made[name] = str(folder / f"{name}.png")
        Image.new("RGB", size, (40, 70, 220)).save(made[name])
    for name, characters in (("long_text", 60_000), ("huge_text", 5_000_000)):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", "a" * characters)  # no colon anywhere: the shape that once took 28 s at 64 KiB
        made[name] = str(folder / f"{name}.png")
        Image.new("RGB", (64, 64)).save(made[name], pnginfo=info)
    return made


def heavy_requests(files: dict[str, str]) -> list[tuple[str, str, dict]]:
    """(label, endpoint, arguments): per endpoint, the heaviest accepted input, then the heaviest refused one."""
    long_prompt, huge_prompt = "a red circle " * 150, "a" * 1_000_000
    largest, too_large = handle_file(files["largest"]), handle_file(files["too_large"])
    edge = handle_file(str(EXAMPLES / "edge_1_map.png"))
    units = [{"mode": "depth", "image": largest, "preprocessor": "none"}] * 2
    return [
        ("longest prompt", "/text2img", dict(prompt=long_prompt[:2000], **QUICK)),
        ("megabyte prompt", "/text2img", dict(prompt=huge_prompt, **QUICK)),
        ("megabyte LoRA list", "/text2img", dict(prompt="x", loras="stripes:1," * 100_000, **QUICK)),
        ("largest control maps", "/edge2img", dict(image=largest, preprocessor="canny", control_units=units,
                                                   prompt="x", **QUICK)),
        ("too large a map", "/depth2img", dict(image=too_large, preprocessor="none", prompt="x", **QUICK)),
        ("largest start image", "/img2img", dict(image=largest, prompt="x", strength=0.5, **QUICK)),
        ("too large a mask", "/inpaint", dict(image=edge, mask=too_large, prompt="x", **QUICK)),
        ("longest PNG text", "/png_info", dict(image=handle_file(files["long_text"]))),
        ("huge PNG text", "/png_info", dict(image=handle_file(files["huge_text"]))),
        ("a grid", "/lora_grid", dict(lora_names=["stripes.safetensors", "mono.safetensors"],
                                            weights="0.5, 1", seeds="1", steps=2,
                                            prompt="x")),
        ("megabyte grid weights", "/lora_grid", dict(lora_names=["stripes.safetensors"], weights="1," * 500_000,
                                                     prompt="x")),
        ("largest picture to noise", "/forward_noise", dict(clean_image=largest, timestep=500)),
        ("too large to noise", "/forward_noise", dict(clean_image=too_large, timestep=500)),
        ("longest timeline prompt", "/denoise_timeline", dict(prompt=long_prompt[:2000], steps=2, keep_every=1)),
        ("megabyte sweep list", "/sweep", dict(prompt="x", guidance_scales="1," * 500_000)),
        ("a plot", "/xy_plot", dict(x_axis="seed", x_values="1, 2", y_axis="guidance", y_values="1, 4", prompt="x",
                                    steps=2)),
        ("megabyte plot values", "/xy_plot", dict(x_axis="sampler", x_values="DDIM," * 500_000, y_axis="seed",
                                                  y_values="1", prompt="x")),
        ("megabyte LoRA name to inspect", "/lora_info", dict(name="a" * 1_000_000)),
    ]


REFUSED = {"megabyte prompt", "megabyte LoRA list", "too large a map", "too large a mask", "huge PNG text",
           "megabyte grid weights", "too large to noise", "megabyte sweep list", "megabyte plot values",
           "megabyte LoRA name to inspect"}


def test_no_request_stalls_the_page_or_the_next_person(app_url, files):
    server = app_url
    neighbour = Client(server, verbose=False)
    quiet = statistics.median(neighbour_text2img(neighbour) for _ in range(3))
    # The noisy client keeps its files on the server: gradio_client fetches every file of every streamed yield (16
    # for a two-step timeline, 40 ms each here), in this process, on the two cores the server has; with them the
    # neighbour of a timeline waited 0.82 s against 0.27 s quiet, without them 0.49 s against 0.24 s.
    noisy = Client(server, verbose=False, download_files=False)
    failures, report = [], []
    for label, endpoint, arguments in heavy_requests(files):
        probe = Probe(server)
        prober = threading.Thread(target=probe.run)
        waited: list[float] = []
        second = threading.Thread(target=lambda waited=waited: waited.append(neighbour_text2img(neighbour)))
        prober.start()
        second.start()
        started = time.perf_counter()
        try:
            noisy.predict(**arguments, api_name=endpoint)
            outcome = "accepted"
        except Exception as error:  # noqa: BLE001 - a refusal is one of the two cases under test
            outcome = f"refused: {str(error)[:80]}"
        heavy_s = time.perf_counter() - started
        if outcome.startswith("refused") != (label in REFUSED):
            failures.append(f"{label} ({endpoint}) was {outcome}")
        second.join()
        probe.stopped.set()
        prober.join()
        budget = 2 * quiet + JITTER_S
        report.append(f"{label} ({endpoint}) {outcome}; page at worst {max(probe.times):.2f} s; "
                      f"the heavy request {heavy_s:.2f} s; text2img {waited[0]:.2f} s (quiet {quiet:.2f} s, "
                      f"budget {budget:.2f} s)")
        if max(probe.times) > PAGE_BUDGET_S or waited[0] > budget:
            failures.append(report[-1])
    print("\n".join(report))
    assert not failures, "\n".join(failures)
