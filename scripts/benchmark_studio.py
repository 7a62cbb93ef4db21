"""Time one generation per mode, and a mode switch against a fresh pipeline load, in one run.

    python scripts/benchmark_studio.py                    # the tiny random test model
    python scripts/benchmark_studio.py --model models/embedded --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoPipelineForText2Image
from PIL import Image, ImageDraw

from embedded.tiny_models import build_tiny_controlnets, build_tiny_pipeline
from pipelines.loader import load_base_pipeline
from pipelines.request import MODES, GenerationRequest
from pipelines.settings import Settings
from pipelines.studio import Studio


def timed(function, repeats: int = 1) -> tuple[float, object]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: a tiny random model built in a temporary folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads; 1 is faster on a busy machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        model, controlnets = (args.model, None) if args.model else tiny_model(Path(scratch))
        studio = Studio(Settings(model=model, lora_dir=scratch, device="cpu", controlnets=controlnets or {}))
        size = studio.model.resolution
        print(f"model {studio.model.name} ({studio.model.family}), {size}x{size}, {args.steps} steps, "
              f"CPU, {args.threads} torch threads")
        for mode in MODES:
            request = GenerationRequest(
                mode=mode, prompt="a red circle on a blue background", steps=args.steps, seed=1,
                image=None if mode == "text" else control_map(size), preprocessor="none",
            )
            first, _ = timed(lambda request=request: studio.generate(request))
            steady, _ = timed(lambda request=request: studio.generate(request), args.repeats)
            print(f"{mode:>5}: first call {first:6.3f} s (builds the mode), then {steady:6.3f} s a generation")
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
