"""Every GPU path of the studio on one CUDA device, with real-size random-weight models, in under 8 minutes.

    HF_HUB_OFFLINE=1 python scripts/gpu_check.py                 # SD1.5, then SDXL while the time budget lasts
    HF_HUB_OFFLINE=1 python scripts/gpu_check.py --tiny          # the same code on tiny models, on the CPU (seconds)

Prints, for each family: it/s per mode for the studio against bare diffusers on the same modules (the denoising
loop, timed from step callbacks with the device synchronised, and the whole call), peak GPU memory, LoRA first load,
switch and on/off cost, fused against unfused, the compile gain and whether a LoRA switch recompiles the compiled
UNet (dynamo's graph counter), offload's it/s and peak memory, and VAE tiling's peak memory on a large image. The
models are built from `embedded/real_size_configs/` (nothing is downloaded); with no Hub the fp16-fix VAE is
reported as unreachable and SDXL decodes in fp32, which is the fallback people get.

Sections run in order of importance and are skipped, with a line saying so, once `--budget-s` is spent.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoPipelineForText2Image  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from embedded.real_size import build_real_size_controlnet, build_real_size_pipeline  # noqa: E402
from embedded.synthetic_loras import kohya_metadata, lora_tensors, write_lora  # noqa: E402
from embedded.tiny_models import build_tiny_controlnets, build_tiny_pipeline  # noqa: E402
from pipelines import acceleration  # noqa: E402
from pipelines.acceleration import SpeedSettings  # noqa: E402
from pipelines.modes import CONTROL_MODES, MODES  # noqa: E402
from pipelines.request import GenerationRequest, LoraChoice  # noqa: E402
from pipelines.schedulers import make_scheduler  # noqa: E402
from pipelines.settings import Settings  # noqa: E402

SCHEDULER = "Euler"
PROMPT = "a photo of an astronaut riding a horse on the moon"


class Check:
    """The run's device, sizes and clock; `section` skips what the time budget no longer allows."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.tiny = args.tiny
        self.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
        self.cuda = self.device == "cuda"
        self.steps = args.steps or (2 if args.tiny else 20)
        self.repeats = args.repeats or (1 if args.tiny else 3)
        self.deadline = time.perf_counter() + args.budget_s
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def section(self, name: str, needs_s: float) -> bool:
        if self.left() < needs_s:
            print(f"-- {name}: skipped, {self.left():.0f} s of the budget left and it needs about {needs_s:.0f} s")
            return False
        print(f"-- {name}", flush=True)
        return True

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**30
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 2**20


# ---------------------------------------------------------------- models


def build_models(check: Check, family: str) -> tuple[str, dict[str, str]]:
    folder = check.scratch / family
    if check.tiny:
        build_tiny_pipeline(folder / "model")
        return str(folder / "model"), build_tiny_controlnets(folder / "model", folder)
    started = time.perf_counter()
    build_real_size_pipeline(family, folder / "model", dtype=torch.float16)
    # One ControlNet serves every control mode (the cache loads a source once): the check times modes, and SDXL's
    # ControlNet is another 2.5 GB to build.
    build_real_size_controlnet(family, folder / "controlnet", dtype=torch.float16)
    print(f"built real-size {family} with random weights in {time.perf_counter() - started:.0f} s", flush=True)
    return str(folder / "model"), {mode: str(folder / "controlnet") for mode in CONTROL_MODES}


def open_studio(check: Check, model: str, controlnets: dict[str, str], speed: SpeedSettings):
    """The studio as served. On the CPU (--tiny) the GPU paths are planned as for CUDA and the UNet compiles with
    dynamo's eager backend, so the smoke test runs the same code; dynamo's guards decide recompilation either way."""
    from pipelines.studio import Studio

    settings = Settings(model=model, lora_dir=str(check.scratch / "loras"), device=check.device,
                        controlnets=controlnets, speed=speed)
    if check.cuda:
        return Studio(settings)
    real_plan = acceleration.plan_acceleration

    def as_on_cuda(device: str, speed: SpeedSettings, zero_gpu: bool = False) -> acceleration.Acceleration:
        return replace(real_plan("cuda", replace(speed, offload=False)), sdxl_vae=None)

    with mock.patch("pipelines.studio.plan_acceleration", as_on_cuda), \
            mock.patch.object(acceleration, "compile_unet", lambda unet: unet.compile(backend="eager")):
        return Studio(settings)


def close(studio) -> None:
    del studio
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- timing


class StepClock:
    """Timestamps at the end of each denoising step, the device synchronised: the loop's it/s without the text
    encoder and the VAE."""

    def __init__(self, check: Check) -> None:
        self.check = check
        self.times: list[float] = []

    def tick(self) -> None:
        self.check.sync()
        self.times.append(time.perf_counter())

    def rate(self) -> float:
        return (len(self.times) - 1) / (self.times[-1] - self.times[0]) if len(self.times) > 1 else float("nan")


def control_map(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline="white", width=3)
    return image


def request_for(check: Check, studio, mode: str, size: int | None = None,
                loras: tuple[LoraChoice, ...] = ()) -> GenerationRequest:
    size = size or studio.model.resolution
    controlled = MODES[mode].is_controlled
    return GenerationRequest(
        mode=mode, prompt=PROMPT, steps=check.steps, width=size, height=size, seed=1, guidance_scale=7.5,
        scheduler=SCHEDULER, image=control_map(size) if controlled else None,
        preprocessor="none" if controlled else None, loras=loras,
    )


def studio_run(check: Check, studio, request: GenerationRequest) -> tuple[float, float]:
    """(it/s of the denoising loop, seconds of the whole call) for one studio generation."""
    clock = StepClock(check)
    started = time.perf_counter()
    studio.generate(request, progress=lambda step, total: clock.tick())
    check.sync()
    return clock.rate(), time.perf_counter() - started


def bare_pipe(studio, mode: str):
    controlnet = studio.controlnets.get(mode) if MODES[mode].is_controlled else None
    extra = {"controlnet": controlnet} if controlnet is not None else {}
    pipe = AutoPipelineForText2Image.from_pipe(studio.base, dtype=studio.dtype, **extra)
    pipe.scheduler = make_scheduler(SCHEDULER, dict(studio.base.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_run(check: Check, pipe, request: GenerationRequest, control: Image.Image | None) -> tuple[float, float]:
    clock = StepClock(check)

    def on_step_end(pipe, step, timestep, callback_kwargs):
        clock.tick()
        return callback_kwargs

    kwargs = dict(prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                  width=request.width, height=request.height, callback_on_step_end=on_step_end,
                  generator=[torch.Generator("cpu").manual_seed(request.seed)])
    if control is not None:
        kwargs["image"] = control
    started = time.perf_counter()
    pipe(**kwargs)
    check.sync()
    return clock.rate(), time.perf_counter() - started


def medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(rate for rate, _ in runs), statistics.median(seconds for _, seconds in runs)


def alternate(check: Check, first: Callable, second: Callable) -> tuple[tuple[float, float], tuple[float, float]]:
    """Medians of `first` and `second` after a warm-up of each, run alternately."""
    first(), second()
    runs: tuple[list, list] = ([], [])
    for index in range(check.repeats):
        for which in ((0, 1) if index % 2 == 0 else (1, 0)):
            runs[which].append((first, second)[which]())
    return medians(runs[0]), medians(runs[1])


# ---------------------------------------------------------------- sections


def modes_against_bare(check: Check, studio, modes: list[str]) -> float:
    """it/s per mode, studio against bare diffusers; returns the studio's text-mode it/s."""
    text_rate = float("nan")
    for mode in modes:
        request = request_for(check, studio, mode)
        control = studio.generate(request).control_map if MODES[mode].is_controlled else None
        pipe = bare_pipe(studio, mode)
        check.reset_peak()
        (served, served_s), (plain, plain_s) = alternate(
            check, lambda request=request: studio_run(check, studio, request),
            lambda pipe=pipe, request=request, control=control: bare_run(check, pipe, request, control))
        print(f"{mode:>5}: studio {served:6.2f} it/s ({served_s:.2f} s a call), bare diffusers {plain:6.2f} it/s "
              f"({plain_s:.2f} s): {served / plain:.3f}x the bare rate; peak memory {check.peak_gib():.2f} GiB",
              flush=True)
        if mode == "text":
            text_rate = served
        del pipe
    return text_rate


def write_loras(check: Check, studio, family: str) -> list[str]:
    folder = check.scratch / "loras"
    base = "sdxl_base_v1-0" if family == "sdxl" else "sd_v1"
    names = []
    for index in range(2):
        # SDXL's kohya text-encoder keys name two encoders; the helper writes SD1.5's, so SDXL's are UNet-only.
        tensors = lora_tensors(studio.base, layout="kohya", rank=4 if check.tiny else 32, seed=index, strength=0.05,
                               text_encoder=family == "sd15", dtype=torch.float16)
        write_lora(folder / f"style{index}.safetensors", tensors, kohya_metadata(base=base, title=f"style{index}"))
        names.append(f"style{index}.safetensors")
    return names


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def loras_eager(check: Check, studio, names: list[str]) -> None:
    first = [timed(lambda name=name: studio.loras.activate([LoraChoice(name, 1.0)])) for name in names]
    sets = [[LoraChoice(names[0], 0.8)], [LoraChoice(names[1], 0.7)], [LoraChoice(n, 0.6) for n in names], []]
    switch = statistics.median(timed(lambda i=i: studio.loras.activate(sets[i % 4])) for i in range(4, 24))
    both = tuple(LoraChoice(name, weight) for name, weight in zip(names, (0.8, 0.6)))
    base = studio.generate(request_for(check, studio, "text")).images[0]
    (with_loras, _), (without, _) = alternate(
        check, lambda: studio_run(check, studio, request_for(check, studio, "text", loras=both)),
        lambda: studio_run(check, studio, request_for(check, studio, "text")))
    same = studio.generate(request_for(check, studio, "text")).images[0].tobytes() == base.tobytes()
    print(f"LoRA: first load {statistics.median(first) * 1000:.0f} ms, switch {switch * 1000:.1f} ms; two active "
          f"{with_loras:.2f} it/s against {without:.2f} without: {without / with_loras:.3f}x the time; base back "
          f"pixel-identical: {'yes' if same else 'NO'}", flush=True)
    studio.loras.activate(list(both))
    request = request_for(check, studio, "text", loras=both)
    (unfused, _), (fused, _) = alternate(check, lambda: (studio.loras.unfuse(), studio_run(check, studio, request))[1],
                                         lambda: (studio.loras.fuse_active(), studio_run(check, studio, request))[1])
    studio.loras.unfuse()
    same = studio.generate(request_for(check, studio, "text")).images[0].tobytes() == base.tobytes()
    print(f"fused LoRA set: {fused:.2f} it/s against {unfused:.2f} unfused: {fused / unfused:.3f}x the rate; base back "
          f"pixel-identical after unfusing: {'yes' if same else 'NO'}", flush=True)


def graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def compiled_studio(check: Check, model: str, controlnets: dict[str, str], eager_rate: float, family: str) -> None:
    studio = open_studio(check, model, controlnets, SpeedSettings(compile=True))
    try:
        names = write_loras(check, studio, family)
        compile_s = timed(lambda: studio.generate(request_for(check, studio, "text")))
        compiled_graphs = graphs()
        check.reset_peak()
        rates = [studio_run(check, studio, request_for(check, studio, "text")) for _ in range(check.repeats)]
        rate, seconds = medians(rates)
        print(f"compiled UNet: first call {compile_s:.1f} s (compiling {compiled_graphs} graphs); then {rate:.2f} "
              f"it/s ({seconds:.2f} s a call) against {eager_rate:.2f} eager: compile gain {rate / eager_rate:.2f}x; "
              f"peak memory "
              f"{check.peak_gib():.2f} GiB", flush=True)
        sets = [(LoraChoice(names[0], 0.8),), (LoraChoice(names[1], 1.0),),
                (LoraChoice(names[0], 0.5), LoraChoice(names[1], 0.5)), ()]
        studio.generate(request_for(check, studio, "text", loras=sets[0]))
        before = graphs()
        switch = []
        for choices in sets[1:]:
            switch.append(timed(lambda choices=choices: studio.loras.activate(list(choices))))
            studio.generate(request_for(check, studio, "text", loras=choices))
        new = graphs() - before
        print(f"LoRA switch in the compiled UNet: {statistics.median(switch) * 1000:.1f} ms; recompiled: "
              f"{'YES' if new else 'no'} ({new} new graphs over {len(sets) - 1} switches)", flush=True)
    finally:
        close(studio)


def offloaded_studio(check: Check, model: str, controlnets: dict[str, str], eager_rate: float) -> None:
    studio = open_studio(check, model, controlnets, SpeedSettings(offload=True))
    try:
        studio.generate(request_for(check, studio, "text"))
        check.reset_peak()
        rate, seconds = medians([studio_run(check, studio, request_for(check, studio, "text"))
                                 for _ in range(check.repeats)])
        print(f"offload: {rate:.2f} it/s ({seconds:.2f} s a call) against {eager_rate:.2f} on the GPU; peak memory "
              f"{check.peak_gib():.2f} GiB", flush=True)
    finally:
        close(studio)


def vae_tiling(check: Check, studio) -> None:
    """Peak memory of a large image decoded whole (bare diffusers) and in tiles (the studio, above its threshold)."""
    multiple = studio.size_multiple
    size = (int(studio.model.resolution * acceleration.TILE_ABOVE_SIDE) // multiple + 1) * multiple
    request = replace(request_for(check, studio, "text", size=size), steps=2)
    pipe = bare_pipe(studio, "text")
    check.reset_peak()
    bare_run(check, pipe, request, None)
    whole = check.peak_gib()
    check.reset_peak()
    studio.generate(request)
    tiled = check.peak_gib()
    print(f"VAE at {size}x{size}: peak memory {whole:.2f} GiB decoded whole, {tiled:.2f} GiB as the studio decodes it "
          f"(tiling on: {acceleration.vae_savers(check.device, size, size, 1, studio.model.resolution)[0]})",
          flush=True)


def check_family(check: Check, family: str, full: bool) -> None:
    print(f"== {family} on {torch.cuda.get_device_name() if check.cuda else 'the CPU'}, {check.steps} steps, guidance "
          f"7.5, {SCHEDULER}", flush=True)
    model, controlnets = build_models(check, family)
    studio = open_studio(check, model, controlnets, SpeedSettings())
    print(f"{studio.model.resolution}x{studio.model.resolution} in {str(studio.dtype).removeprefix('torch.')}; "
          f"attention: {type(studio.base.unet.attn_processors[next(iter(studio.base.unet.attn_processors))]).__name__}"
          f"{'; notes: ' + ' '.join(studio.notes) if studio.notes else ''}", flush=True)
    eager_rate = modes_against_bare(check, studio, list(MODES) if full and not check.tiny else ["text", "edge"])
    print(f"every mode built: peak memory {check.peak_gib():.2f} GiB, one copy of the base weights: "
          f"{all(studio.pipeline_for(mode).unet is studio.base.unet for mode in MODES)}", flush=True)
    if check.section("LoRAs", 30):
        loras_eager(check, studio, write_loras(check, studio, family))
    if check.section("VAE tiling", 20):
        vae_tiling(check, studio)
    close(studio)
    if check.section("compile", 150 if family == "sd15" else 240):
        compiled_studio(check, model, controlnets, eager_rate, family)
    if check.cuda and check.section("offload", 40):
        offloaded_studio(check, model, controlnets, eager_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: a smoke test of this script")
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--steps", type=int, default=None, help="default 20 (tiny: 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls of each kind; default 3 (tiny: 1)")
    parser.add_argument("--budget-s", type=float, default=450, help="seconds; later sections are skipped after it")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    if not torch.cuda.is_available() and not args.tiny:
        raise SystemExit("No CUDA device: run it on a GPU, or with --tiny for a smoke test on the CPU.")
    check = Check(args)
    families = [family.strip() for family in args.families.split(",") if family.strip()]
    if check.tiny:
        families = families[:1]  # the tiny model is one family; the code paths are the same
    try:
        for index, family in enumerate(families):
            if index and not check.section(f"{family}", 200):
                continue
            check_family(check, family, full=index == 0)
    finally:
        shutil.rmtree(check.scratch, ignore_errors=True)  # the models: gigabytes of disk
    print(f"done in {args.budget_s - check.left():.0f} s")


if __name__ == "__main__":
    main()
