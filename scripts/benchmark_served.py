"""The served round trip against the bare diffusers call, for each torch-thread setting, measured in one run.

    HF_HUB_OFFLINE=1 python scripts/benchmark_served.py [--repeats 10] [--steps 20] [--grid]

For each setting (the studio's own choice, then 1 thread and one per core) it starts `python app.py` (the
embedded model) and times `/text2img` through gradio_client, alternating with the same call on the bare
diffusers pipeline in this process on one thread, so both see the same machine load. The served image must equal
the bare one pixel for pixel, or the comparison is void. With `--grid` it also times a 10-cell `/lora_grid`
(baseline, two LoRAs at two weights, two seeds) per cell against one `/text2img` image.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from gradio_client import Client
from PIL import Image

from embedded.app_process import running_app
from pipelines.settings import EMBEDDED_MODEL
from pipelines.threads import usable_cores

PROMPT = "a red circle on a blue background"
SEED = 7


def timed(call: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def bare_pipeline() -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_call(pipe: StableDiffusionPipeline, steps: int, guidance: float) -> Image.Image:
    generator = torch.Generator("cpu").manual_seed(SEED)
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=generator).images[0]


def served_call(client: Client, steps: int, guidance: float) -> Image.Image:
    gallery, *_ = client.predict(
        prompt=PROMPT, seed=SEED, steps=steps, guidance_scale=guidance, scheduler="DDIM", api_name="/text2img"
    )
    return Image.open(gallery[0]["image"]).convert("RGB")


def grid_call(client: Client, steps: int, guidance: float) -> None:
    client.predict(
        lora_names=["stripes.safetensors", "mono.safetensors"], weights="0.5, 1", seeds="1, 2", prompt=PROMPT,
        steps=steps, guidance_scale=guidance, add_triggers=True, api_name="/lora_grid",
    )


def compare(url: str, pipe: StableDiffusionPipeline, args: argparse.Namespace) -> tuple[float, float, float | None]:
    """Median bare and served seconds (alternated), and the median seconds per grid cell if asked."""
    client = Client(url, verbose=False)
    served_call(client, args.steps, args.guidance)  # the first call builds what later calls reuse
    bare, served = [], []
    for _ in range(args.repeats):
        seconds, expected = timed(lambda: bare_call(pipe, args.steps, args.guidance))
        bare.append(seconds)
        seconds, got = timed(lambda: served_call(client, args.steps, args.guidance))
        served.append(seconds)
        if not np.array_equal(np.asarray(expected), np.asarray(got)):
            raise SystemExit("The served image differs from the bare diffusers image: the timings compare nothing.")
    cell = None
    if args.grid:
        grid_call(client, args.steps, args.guidance)
        cells = 10
        cell = statistics.median(timed(lambda: grid_call(client, args.steps, args.guidance))[0] for _ in range(3))
        cell /= cells
    return statistics.median(bare), statistics.median(served), cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=2.0, help="the embedded model's default")
    parser.add_argument("--grid", action="store_true", help="also time a 10-cell LoRA grid per cell")
    parser.add_argument("--settings", default=f"auto,1,{usable_cores()}", help="STUDIO_THREADS values; auto: unset")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = bare_pipeline()
    print(f"{usable_cores()} usable cores; bare diffusers in this process on 1 thread; {args.steps} DDIM steps, "
          f"{args.repeats} alternating calls each")
    for setting in args.settings.split(","):
        threads = None if setting == "auto" else setting
        with tempfile.TemporaryDirectory() as scratch:
            # OMP_NUM_THREADS unset, so only the studio's own rule (or STUDIO_THREADS) decides.
            with running_app(Path(scratch) / "app.log", STUDIO_THREADS=threads, OMP_NUM_THREADS=None) as (_, url):
                bare, served, cell = compare(url, pipe, args)
        line = f"STUDIO_THREADS={setting:>4}: served {served:.3f} s, bare {bare:.3f} s, ratio {served / bare:.2f}x"
        if cell is not None:
            line += f"; grid {cell:.3f} s a cell = {cell / served:.2f}x a served image"
        print(line, flush=True)


if __name__ == "__main__":
    main()
