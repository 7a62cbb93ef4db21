"""The Explore tab's figures on the embedded model, as its panels compute them.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python scripts/measure_explore.py

Forward noising at t = 0 and at the last timestep for each schedule; how clean each kept frame of a timeline is;
the guidance sweep's colour error and saturation averaged over several prompts (its sweet spot); and how far DDPM
and DDIM at 10 and 20 steps are from their own 50-step images. Every figure is measured in this one run.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from embedded import evaluation, world
from pipelines.explore import figures
from pipelines.explore.forward import SCHEDULES, TRAIN_TIMESTEPS, forward_noise
from pipelines.explore.sweeps import COLOUR_ERROR, DISTANCE, SATURATION, run_sweep
from pipelines.explore.timeline import run_timeline
from pipelines.request import GenerationRequest, NoiseRequest, SweepRequest, TimelineRequest

PROMPTS = [
    "a red circle on a blue background",
    "a yellow square on a purple background",
    "a green triangle on a white background",
    "a blue square on an orange background",
    "a white circle on a black background",
    "an orange triangle on a green background",
    "a purple circle on a yellow background",
    "a black square on a red background",
]
GUIDANCE = "1, 2, 3, 4, 6, 8, 12, 16"  # a grid takes at most 8 values
SEEDS = (3, 4)


def forward_figures(studio) -> None:
    scenes = [Image.fromarray(world.make_scene(seed, "object").image) for seed in (5, 8)]
    apart = figures.pixel_distance(*(np.asarray(scene) for scene in scenes))
    print("forward noising (two scenes, noise seed 0)")
    for schedule in SCHEDULES:
        first = forward_noise(studio, NoiseRequest(scenes[0], schedule, 0, 0))
        last = [forward_noise(studio, NoiseRequest(scene, schedule, TRAIN_TIMESTEPS - 1, 0)) for scene in scenes]
        round_trip = figures.pixel_distance(np.asarray(first.latent_view), np.asarray(scenes[0]))
        trace = figures.pixel_distance(*(np.asarray(noised.latent_view) for noised in last)) / apart
        print(f"  {schedule:13}: t=0 alpha-bar {first.alpha_bar:.5f}, latent view off the image by {round_trip:.1f}"
              f"/255; t={TRAIN_TIMESTEPS - 1} alpha-bar {last[0].alpha_bar:.2e}, latents mean "
              f"{last[0].latent_mean:+.3f} std {last[0].latent_std:.3f}, two images' pictures differ by "
              f"{trace:.1%} of what the images do")


def timeline_figures(studio) -> None:
    timeline = run_timeline(studio, TimelineRequest(GenerationRequest(prompt=PROMPTS[0], seed=11, steps=20), 2))
    energy = []
    for frame in timeline.frames:
        luma = cv2.cvtColor(np.asarray(frame.latent), cv2.COLOR_RGB2GRAY).astype(np.float32)
        energy.append(f"{frame.step}: {np.abs(cv2.Laplacian(luma, cv2.CV_32F)).mean():.1f}")
    print(f"timeline (20 DDIM steps, every 2nd kept): high-frequency energy (mean |Laplacian|) {', '.join(energy)}")


def guidance_figures(studio) -> None:
    cells = [run_sweep(studio, SweepRequest(GenerationRequest(prompt=prompt, seed=seed), "guidance scale", GUIDANCE))
             for prompt in PROMPTS for seed in SEEDS]
    error = np.mean([[cell[COLOUR_ERROR] for cell in sweep.figures] for sweep in cells], axis=0)
    saturated = np.mean([[cell[SATURATION] for cell in sweep.figures] for sweep in cells], axis=0)
    # Colourfulness, for comparison: HSV saturation and chroma of the same cells.
    pictures = [[np.asarray(cell.image.convert("RGB")) for cell in sweep.cells] for sweep in cells]
    hsv = np.mean([[cv2.cvtColor(p, cv2.COLOR_RGB2HSV)[..., 1].mean() / 255 for p in row] for row in pictures], axis=0)
    chroma = np.mean([[figures.chroma(p) for p in row] for row in pictures], axis=0)
    scales = [float(value) for value in GUIDANCE.split(",")]
    best = int(np.argmin(error))
    print(f"guidance sweep, {len(PROMPTS)} prompts x {len(SEEDS)} seeds, 20 DDIM steps:")
    for index, scale in enumerate(scales):
        print(f"  guidance {scale:4g}: colour error {error[index]:5.1f} RGB, saturated {saturated[index]:.2%} of pixel "
              f"values; HSV saturation {hsv[index]:.3f}, chroma {chroma[index]:.3f}")
    print(f"  sweet spot: guidance {scales[best]:g} (colour error {error[best]:.1f}); saturated share there "
          f"{saturated[best]:.2%}, at {scales[-1]:g} {saturated[-1]:.2%}")


def sampler_figures(studio) -> None:
    distances: dict[tuple[str, str], list[float]] = {}
    for prompt in PROMPTS[:4]:
        request = SweepRequest(GenerationRequest(prompt=prompt, seed=4), "samplers", step_counts="10, 20")
        sweep = run_sweep(studio, request)
        for cell in sweep.figures:
            distances.setdefault((cell["row"], cell["column"]), []).append(cell[DISTANCE])
    print("mean pixel distance (0..255) to the same sampler's 50-step image, 4 prompts:")
    for (sampler, column), values in distances.items():
        print(f"  {sampler} {column}: {np.mean(values):.1f} (each: {', '.join(f'{value:.1f}' for value in values)})")


def main() -> None:
    studio = evaluation.load()
    forward_figures(studio)
    timeline_figures(studio)
    guidance_figures(studio)
    sampler_figures(studio)


if __name__ == "__main__":
    main()
