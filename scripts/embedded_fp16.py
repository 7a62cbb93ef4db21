"""The embedded model in fp16 against fp32 on the CPU: NaN, and how far the pixels move (a GPU serves it in fp16).

    OMP_NUM_THREADS=1 python scripts/embedded_fp16.py

Same prompts, seeds, 20 DDIM steps and guidance 2.0 in both precisions; prints the time of each and, per prompt,
whether fp16 made NaN and the mean and largest pixel difference in levels of 255.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from diffusers import AutoPipelineForText2Image, DDIMScheduler

from pipelines.settings import EMBEDDED_MODEL

PROMPTS = (
    "a red circle on a blue background",
    "a yellow square on a black background",
    "a person in a green shirt with the left arm raised on a white background",
    "a white triangle on a purple background",
)


def render(dtype: torch.dtype) -> list[np.ndarray]:
    pipe = AutoPipelineForText2Image.from_pretrained(str(EMBEDDED_MODEL), dtype=dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    started = time.perf_counter()
    images = [
        pipe(prompt, num_inference_steps=20, guidance_scale=2.0, output_type="np",
             generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        for seed, prompt in enumerate(PROMPTS)
    ]
    print(f"{str(dtype).removeprefix('torch.')}: {time.perf_counter() - started:.2f} s for {len(PROMPTS)} images")
    return images


def main() -> None:
    torch.set_num_threads(1)
    full, half = render(torch.float32), render(torch.float16)
    for prompt, exact, reduced in zip(PROMPTS, full, half, strict=True):
        difference = np.abs(exact - reduced) * 255
        print(f"{prompt[:44]:<44} fp16 NaN: {bool(np.isnan(reduced).any())}; difference mean "
              f"{difference.mean():.2f}, largest {difference.max():.1f} levels")


if __name__ == "__main__":
    main()
