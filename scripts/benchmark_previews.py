"""What live previews cost: a Text-tab run with previews against the same generation without them.

    OMP_NUM_THREADS=1 python scripts/benchmark_previews.py                 # the embedded model, 20 steps
    python scripts/benchmark_previews.py --model <folder> --steps 30

The previewed run goes the way the Text tab's handler runs it (`ui.modes.run_request`: a worker thread, a preview
of x0 every few steps within the budget, each preview encoded to PNG as Gradio does before it sends it); the plain
run is `Studio.generate` alone. Runs alternate, so both see the same machine load, and each previewed image must
equal the plain one pixel for pixel. Both the CPU time this process spends (all its threads; other processes on a
shared machine do not move it) and the wall time are measured. Every figure is measured in this one run.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np

from pipelines.previews import PREVIEW_SHARE
from pipelines.request import GenerationRequest
from pipelines.settings import EMBEDDED_LORAS, EMBEDDED_MODEL, Settings
from pipelines.studio import Studio
from ui.modes import run_request

PROMPT = "a red circle on a blue background"


class Clock:
    """Wall and CPU seconds (this process, all threads) since it was made."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def plain(studio: Studio, request: GenerationRequest) -> tuple[tuple[float, float], np.ndarray]:
    clock = Clock()
    image = studio.generate(request).images[0]
    return clock.read(), np.asarray(image)


def previewed(studio: Studio, request: GenerationRequest) -> tuple[tuple[float, float], np.ndarray, int]:
    clock = Clock()
    previews = 0
    for gallery, *_ in run_request(studio, request):
        if isinstance(gallery, dict):  # a preview: an update of the gallery's value and label
            previews += 1
            for image in gallery["value"]:
                image.save(io.BytesIO(), format="PNG")
        else:
            final = gallery[0][0]
    return clock.read(), np.asarray(final), previews


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    studio = Studio(Settings(model=args.model, lora_dir=str(EMBEDDED_LORAS), device="cpu"))
    plain(studio, GenerationRequest(prompt=PROMPT, steps=2))  # warm up
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "previewed": []}
    counts = []
    for run in range(args.runs):
        request = GenerationRequest(prompt=PROMPT, seed=run, steps=args.steps)
        seconds, image = plain(studio, request)
        times["plain"].append(seconds)
        seconds, shown, previews = previewed(studio, request)
        times["previewed"].append(seconds)
        counts.append(previews)
        assert np.array_equal(image, shown), "previews changed the image"
    print(f"model {studio.model.name}, {args.steps} steps, {args.runs} runs each, alternating; "
          f"{statistics.mean(counts):.1f} previews a run within a budget of {PREVIEW_SHARE:.0%} of its time")
    # The median, and the best run of each (what the machine gives with the least interference from other work).
    for index, what in enumerate(("wall time", "CPU time")):
        for summary in (statistics.median, min):
            base, with_previews = (summary(run[index] for run in times[name]) for name in times)
            print(f"{what:9} {summary.__name__:6}: plain {base * 1000:.0f} ms, with previews "
                  f"{with_previews * 1000:.0f} ms; preview cost {with_previews / base - 1:+.1%} of the generation time")
    print("pixels identical with and without previews in every run")


if __name__ == "__main__":
    main()
