"""The studio against bare diffusers per mode, its own per-call work, and a mode switch against a fresh load.

    python scripts/benchmark_studio.py --model models/embedded        # the embedded model and its ControlNets
    python scripts/benchmark_studio.py                                # a tiny random model

Every figure is measured in this one run. Studio and bare calls alternate, so both see the same machine load, and
each studio image must equal the bare one pixel for pixel, or the comparison is void.
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
from diffusers import AutoPipelineForText2Image, ControlNetModel, DiffusionPipeline
from PIL import Image, ImageDraw

from embedded.tiny_models import build_tiny_controlnets, build_tiny_pipeline
from pipelines.endpoints import validate_request
from pipelines.loader import load_base_pipeline
from pipelines.modes import CONTROL_MODES, MODES
from pipelines.request import GenerationRequest
from pipelines.schedulers import make_scheduler
from pipelines.settings import Settings
from pipelines.studio import Studio

PROMPT = "a red circle on a blue background"
SEED = 1


def timed(function: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    durations, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), result


def tiny_model(folder: Path) -> tuple[str, dict[str, str]]:
    build_tiny_pipeline(folder / "sd")
    return str(folder / "sd"), build_tiny_controlnets(folder / "sd", folder)


def control_map(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline="white", width=2)
    return image


def bare_pipeline(studio: Studio, mode: str) -> DiffusionPipeline:
    """The mode's pipeline as a diffusers user builds it: from the folders, with the studio's sampler."""
    pipe = DiffusionPipeline.from_pretrained(studio.model.source, dtype=torch.float32)
    if MODES[mode].is_controlled:
        controlnet = ControlNetModel.from_pretrained(studio.controlnets.registry[mode], dtype=torch.float32)
        pipe = AutoPipelineForText2Image.from_pipe(pipe, controlnet=controlnet)
    pipe.scheduler = make_scheduler(studio.model.default_scheduler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_call(pipe: DiffusionPipeline, request: GenerationRequest) -> Image.Image:
    control = {} if request.image is None else dict(image=request.image)
    return pipe(
        PROMPT, num_inference_steps=request.steps, guidance_scale=request.guidance_scale, width=request.width,
        height=request.height, generator=torch.Generator("cpu").manual_seed(SEED), **control,
    ).images[0]


def studio_against_bare(studio: Studio, mode: str, request: GenerationRequest, repeats: int) -> tuple[float, float]:
    pipe = bare_pipeline(studio, mode)
    if not np.array_equal(np.asarray(bare_call(pipe, request)), np.asarray(studio.generate(request).images[0])):
        raise SystemExit(f"{mode}: the studio's image differs from bare diffusers'; the timings compare nothing.")
    bare, served = [], []
    for _ in range(repeats):
        bare.append(timed(lambda: bare_call(pipe, request))[0])
        served.append(timed(lambda: studio.generate(request))[0])
    return statistics.median(served), statistics.median(bare)


def own_work(studio: Studio, request: GenerationRequest) -> dict[str, float]:
    """Milliseconds a call spends on the studio's own steps (the rest is the pipeline's)."""
    checked, _ = validate_request(request, studio.served)
    image = studio.generate(request).images[0]
    steps = {
        "validation": lambda: validate_request(request, studio.served),
        "prompt length check": lambda: studio._prompt_notes(checked),
        "fresh scheduler": lambda: make_scheduler(checked.scheduler, studio._scheduler_config),
        "PNG parameters": lambda: studio._parameters(checked, [checked.seed], [], ()),
        "PNG encoding": lambda: image.save(tempfile.SpooledTemporaryFile(), format="png"),
    }
    return {name: timed(step, 200)[0] * 1000 for name, step in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: a tiny random model built in a temporary folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, help="torch threads (default: the studio's own choice)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model, controlnets = (args.model, None) if args.model else tiny_model(Path(scratch))
        settings = Settings(model=model, lora_dir=scratch, device="cpu", threads=args.threads)
        studio = Studio(settings.with_flags(controlnets=controlnets))
        size = studio.model.resolution
        print(f"model {studio.model.name} ({studio.model.family}), {size}x{size}, {args.steps} steps, "
              f"{studio.model.default_scheduler}, CPU, {torch.get_num_threads()} torch threads, "
              f"{args.repeats} alternating calls")
        for mode in ("text", *CONTROL_MODES):  # the modes that start from noise (img2img and inpainting do not)
            request = GenerationRequest(
                mode=mode, prompt=PROMPT, steps=args.steps, seed=SEED, guidance_scale=studio.model.default_guidance,
                image=None if mode == "text" else control_map(size), preprocessor="none",
            )
            first, _ = timed(lambda request=request: studio.generate(request))
            served, bare = studio_against_bare(studio, mode, request, args.repeats)
            print(f"{mode:>5}: studio {served:6.3f} s, bare diffusers {bare:6.3f} s, ratio {served / bare:.3f}x "
                  f"(first call {first:.3f} s, builds the mode)")
        work = own_work(studio, GenerationRequest(prompt=PROMPT, steps=args.steps))
        print("the studio's own work per call: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in work.items()))
        fresh, _ = timed(lambda: load_base_pipeline(model, "cpu", torch.float32), 3)
        rebuild, _ = timed(
            lambda: AutoPipelineForText2Image.from_pipe(studio.base, controlnet=studio.controlnets.get("edge")), 3
        )
        switch, _ = timed(lambda: [studio.pipeline_for(mode) for mode in ("edge", "text")], 100)
        print(f"fresh base pipeline load: {fresh * 1000:8.1f} ms")
        print(f"mode pipeline built from the base (from_pipe): {rebuild * 1000:8.2f} ms "
              f"({fresh / rebuild:.0f}x faster than a fresh load)")
        print(f"switch between two built modes: {switch / 2 * 1e6:8.1f} us ({fresh / (switch / 2):.0f}x faster)")


if __name__ == "__main__":
    main()
