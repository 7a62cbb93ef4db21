"""Every GPU path of the studio on one CUDA device, with real-size random-weight models.

    HF_HUB_OFFLINE=1 python scripts/gpu_check.py            # SD1.5, then SDXL, while the time budget lasts
    HF_HUB_OFFLINE=1 python scripts/gpu_check.py --tiny     # the same sections and modes on tiny models, on the CPU

For each family, SD1.5 then SDXL, it prints:

- every mode (text, pose, edge, depth, img2img, inpaint): the studio's it/s against the matching bare diffusers
  pipeline (text-to-image, ControlNet, image-to-image, inpainting) on the same modules and the same inputs: the
  denoising loop, timed from step callbacks with the device synchronised, and the whole call; and the mode's peak
  GPU memory;
- the GPU memory every mode built holds, and whether they share one copy of the base weights;
- the served path with live previews (`ui.modes.run_request`, as the web app runs it) against `Studio.generate`
  without previews: it/s, seconds a call and their ratio;
- LoRAs: first load, switch, two active against none, fused against unfused, and whether the base image comes back
  pixel for pixel;
- VAE tiling on an image just above the tiling threshold: the decode's peak memory whole and in tiles, and the
  studio's whole call;
- the compiled UNet, in a fresh studio (the eager one freed first): first call, gain, peak memory, and whether a
  LoRA switch recompiles it (dynamo's graph counter, reset before it counts);
- model CPU offload, in a fresh studio: it/s and peak memory;
- Ray Serve (with `--ray`, which a GPU run implies when Ray is installed): the studio as a Serve application on a
  local cluster of this machine, one Generator replica on the GPU: one request through the ingress against the
  same request in this process (same pixels?), and four text requests sharing one pipeline call against one by one.

Every image a figure rests on is checked: random fp16 weights can overflow, and NaN or inf latents decode to one
flat colour, so two broken images would compare "pixel-identical". A flat image prints "NaN check failed", a
comparison with it reads "void", and the script exits with status 1.

The models are built from `embedded/real_size_configs/` (nothing is downloaded); with no Hub the fp16-fix VAE is
reported as unreachable and SDXL decodes in fp32, which is the fallback people get. On a GPU, sections run in order
of importance and are skipped, with a line saying so, once `--budget-s` is spent.

`--tiny` (run by the test suite) skips nothing: tiny SD1.5 and SDXL models in fp32 on the CPU, with the GPU paths
planned as on CUDA (the UNet compiled with dynamo's eager backend, VAE tiling above the same threshold, diffusers'
own offload hooks with the CPU as their execution device, a preview at every step). Its figures show that the code
runs, nothing about speed, and its memory figures are the process's resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.util
import math
import os
import shutil
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
)
from PIL import Image, ImageDraw  # noqa: E402

from embedded.real_size import build_real_size_controlnet, build_real_size_pipeline  # noqa: E402
from embedded.synthetic_loras import kohya_metadata, lora_tensors, write_lora  # noqa: E402
from embedded.tiny_models import build_tiny_controlnets, build_tiny_pipeline, build_tiny_sdxl_pipeline  # noqa: E402
from pipelines import acceleration, previews  # noqa: E402
from pipelines.acceleration import SpeedSettings  # noqa: E402
from pipelines.editing import edit_inputs, strength_of  # noqa: E402
from pipelines.endpoints import validate_request  # noqa: E402
from pipelines.modes import CONTROL_MODES, MODES  # noqa: E402
from pipelines.request import GenerationRequest, LoraChoice  # noqa: E402
from pipelines.schedulers import make_scheduler  # noqa: E402
from pipelines.settings import Settings  # noqa: E402
from pipelines.vae import decode_latents  # noqa: E402

SCHEDULER = "Euler"
PROMPT = "a photo of an astronaut riding a horse on the moon"
# img2img and inpaint redo this much of the picture: diffusers runs int(steps x strength) of the requested steps, so
# they ask for steps / strength, and every mode's loop runs the same number of steps.
STRENGTH = 0.75
TINY_BUILDERS = {"sd15": build_tiny_pipeline, "sdxl": build_tiny_sdxl_pipeline}


class Check:
    """The run's device, sizes, clock and memory gauges; `section` skips what the time budget no longer allows, and
    `sound` counts the images checked for NaN."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.tiny = args.tiny
        self.ray = args.ray or (not args.tiny and importlib.util.find_spec("ray") is not None)
        self.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
        self.cuda = self.device == "cuda"
        self.steps = args.steps or (2 if args.tiny else 20)
        self.repeats = args.repeats or (1 if args.tiny else 3)
        self.deadline = time.perf_counter() + args.budget_s
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.images_checked = 0
        self.nan_failures: list[str] = []

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def section(self, name: str, needs_s: float) -> bool:
        """Whether to run section `name`; the tiny run never skips one, it is there to walk every section."""
        if not self.tiny and self.left() < needs_s:
            print(f"-- {name}: skipped, {self.left():.0f} s of the budget left and it needs about {needs_s:.0f} s")
            return False
        print(f"-- {name}", flush=True)
        return True

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @property
    def memory(self) -> str:
        return "GPU memory" if self.cuda else "resident memory"

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:  # Linux resets the process's peak resident size (VmHWM) to its current size; where it may not, the
            with contextlib.suppress(OSError):  # peak stays the process's own since it started
                Path("/proc/self/clear_refs").write_text("5")

    def peak_gib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**30
        return _proc_status_kib("VmHWM") / 2**20

    def held_gib(self) -> float:
        gc.collect()
        if self.cuda:
            return torch.cuda.memory_allocated() / 2**30
        return _proc_status_kib("VmRSS") / 2**20

    def sound(self, image: Image.Image, what: str, where: np.ndarray | None = None) -> bool:
        """Whether `image` (at the pixels `where` is true) is a picture rather than one flat colour, which is what
        NaN or inf latents decode to (NaN casts to 0: black)."""
        pixels = np.asarray(image.convert("RGB"))
        pixels = pixels[where] if where is not None else pixels.reshape(-1, 3)
        self.images_checked += 1
        if len(pixels) > 1 and (pixels != pixels[0]).any():
            return True
        self.nan_failures.append(what)
        print(f"NaN check failed: {what} is one flat colour {pixels[0].tolist()} (NaN or inf latents?)", flush=True)
        return False

    def identical(self, first: Image.Image, second: Image.Image, what: str) -> str:
        """'yes' or 'NO' for two sound images, 'void' if either is not sound (two black images are equal)."""
        sound = [self.sound(image, what) for image in (first, second)]
        if not all(sound):
            return "void (NaN check failed)"
        return "yes" if first.tobytes() == second.tobytes() else "NO"


def _proc_status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1])


@contextlib.contextmanager
def gpu_paths_on_cpu() -> Iterator[None]:
    """For --tiny: the studio plans its GPU paths as for CUDA, so the CPU runs the same code. The UNet compiles with
    dynamo's eager backend (dynamo's guards decide recompilation either way); the VAE tiles above 1.5x the native side
    without the 768 px floor (a tiny model would decode 776 px images, minutes on the CPU); offload installs diffusers'
    hooks with the CPU as execution device (their moves are no-ops); and the web app's previewer sends a preview at
    every step, since a tiny run ends long before the app's first one would be due."""
    real_plan, real_savers = acceleration.plan_acceleration, acceleration.vae_savers

    def plan_as_on_cuda(device: str, speed: SpeedSettings, zero_gpu: bool = False) -> acceleration.Acceleration:
        return replace(real_plan("cuda", speed), sdxl_vae=None)

    def savers_as_on_cuda(device: str, *args: int) -> tuple[bool, bool]:
        return real_savers("cuda", *args)

    import ui.modes  # the web app's modules, imported only where the served path is timed

    with mock.patch("pipelines.studio.plan_acceleration", plan_as_on_cuda), \
            mock.patch.object(acceleration, "vae_savers", savers_as_on_cuda), \
            mock.patch.object(acceleration, "TILE_FLOOR_SIDE", 0), \
            mock.patch.object(acceleration, "compile_unet", lambda unet: unet.compile(backend="eager")), \
            mock.patch.object(ui.modes, "Previewer", functools.partial(previews.Previewer, share=1.0, interval=0.0)):
        yield


# ---------------------------------------------------------------- models


def build_models(check: Check, family: str) -> tuple[str, dict[str, str]]:
    folder = check.scratch / family
    if check.tiny:
        TINY_BUILDERS[family](folder / "model")
        return str(folder / "model"), build_tiny_controlnets(folder / "model", folder)
    started = time.perf_counter()
    build_real_size_pipeline(family, folder / "model", dtype=torch.float16)
    # One ControlNet serves every control mode (the cache loads a source once): the check times modes, and SDXL's
    # ControlNet is another 2.5 GB to build.
    build_real_size_controlnet(family, folder / "controlnet", dtype=torch.float16)
    print(f"built real-size {family} with random weights in {time.perf_counter() - started:.0f} s", flush=True)
    return str(folder / "model"), {mode: str(folder / "controlnet") for mode in CONTROL_MODES}


@dataclass(frozen=True)
class Family:
    name: str
    model: str  # the pipeline folder
    controlnets: dict[str, str]  # control mode -> ControlNet folder
    loras: Path  # the LoRA folder of this family's studios


def open_studio(check: Check, family: Family, speed: SpeedSettings):
    from pipelines.studio import Studio

    settings = Settings(model=family.model, lora_dir=str(family.loras), device=check.device,
                        controlnets=family.controlnets, speed=speed)
    return Studio(settings)


def free_memory() -> None:
    """Give back what a studio held. The caller must hold no reference to it any more (a `del` here would only
    drop this function's own name)."""
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- inputs


def control_map(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline="white", width=3)
    return image


def start_picture(size: int) -> Image.Image:
    """A picture to edit: a sky-to-ground gradient with a disc, so every region has something to keep or redo."""
    rows = np.linspace(0, 1, size)[:, None, None]
    sky, ground = np.array([90, 140, 220]), np.array([120, 90, 60])
    pixels = np.broadcast_to(sky * (1 - rows) + ground * rows, (size, size, 3)).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    ImageDraw.Draw(image).ellipse((size // 3, size // 4, 2 * size // 3, size // 2), fill=(240, 200, 40))
    return image


def repaint_mask(size: int) -> Image.Image:
    """White (repaint) over the right three quarters: wide enough that, after the mask blur, a band far from the
    seam is repainted whole, where the NaN check can look at the generated pixels alone."""
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((size // 4, 0, size, size), fill=255)
    return mask


def request_for(check: Check, studio, mode: str, size: int | None = None,
                loras: tuple[LoraChoice, ...] = ()) -> GenerationRequest:
    """A request in `mode` with the inputs it needs: a control map, a start picture (and a mask to repaint)."""
    size = size or studio.model.resolution
    declared = MODES[mode]
    inputs: dict[str, object] = {}
    if declared.is_controlled:
        inputs.update(image=control_map(size), preprocessor="none")
    if declared.starts_from_image:
        inputs.update(image=start_picture(size), strength=STRENGTH)
    if declared.edits == "inpaint":
        inputs.update(mask=repaint_mask(size))
    steps = math.ceil(check.steps / STRENGTH) if declared.starts_from_image else check.steps
    return GenerationRequest(mode=mode, prompt=PROMPT, steps=steps, width=size, height=size, seed=1,
                             guidance_scale=7.5, scheduler=SCHEDULER, loras=loras, **inputs)


def repainted_pixels(studio, request: GenerationRequest) -> np.ndarray | None:
    """For inpainting, the pixels the studio repaints whole (the blurred mask at full white); it pastes the start
    picture back elsewhere, which would hide a NaN result from the check. None for the other modes."""
    if MODES[request.mode].edits != "inpaint":
        return None
    validated, _ = validate_request(request, studio.served)
    return np.asarray(edit_inputs(validated, studio.limits.max_input_pixels).mask) == 255


# ---------------------------------------------------------------- timing


@dataclass(frozen=True)
class Run:
    rate: float  # it/s of the denoising loop
    seconds: float  # the whole call
    image: Image.Image  # the first image it made
    previews: int = 0  # previews sent during the run (the served path)


class StepClock:
    """Timestamps at the end of each denoising step, the device synchronised: the loop's it/s without the text
    encoder and the VAE."""

    def __init__(self, check: Check) -> None:
        self.check = check
        self.times: list[float] = []

    def tick(self, *_: object, **__: object) -> None:
        self.check.sync()
        self.times.append(time.perf_counter())

    def rate(self) -> float:
        return (len(self.times) - 1) / (self.times[-1] - self.times[0]) if len(self.times) > 1 else float("nan")


def studio_run(check: Check, studio, request: GenerationRequest) -> Run:
    """One `Studio.generate`, without previews."""
    clock = StepClock(check)
    started = time.perf_counter()
    result = studio.generate(request, progress=clock.tick)
    check.sync()
    return Run(clock.rate(), time.perf_counter() - started, result.images[0])


def served_run(check: Check, studio, request: GenerationRequest) -> Run:
    """One run as the web app serves it: `ui.modes.run_request` runs `Studio.generate` in a worker thread with the
    previewer as its step hook and yields each preview, then the outputs. Steps are timed where Gradio's progress
    bar hears of them, in the handler's thread."""
    from ui.modes import run_request

    clock = StepClock(check)
    started = time.perf_counter()
    outputs = list(run_request(studio, request, progress=clock.tick))
    check.sync()
    seconds = time.perf_counter() - started
    gallery = outputs[-1][0]  # the last yield is the result: (gallery, control map, seed, info)
    return Run(clock.rate(), seconds, gallery[0][0], previews=sum(map(is_preview, outputs)))


def is_preview(outputs: tuple) -> bool:
    """Whether a yield of `run_request` shows a preview: an update of the gallery under its 'Preview, step' label."""
    gallery = outputs[0]
    return isinstance(gallery, dict) and str(gallery.get("label", "")).startswith("Preview")


def bare_pipe(studio, mode: str) -> DiffusionPipeline:
    """The bare diffusers pipeline for `mode` on the studio's own modules."""
    edits = MODES[mode].edits
    auto = {"img2img": AutoPipelineForImage2Image, "inpaint": AutoPipelineForInpainting}.get(
        edits, AutoPipelineForText2Image)
    controlnet = studio.controlnets.get(mode) if MODES[mode].is_controlled else None
    extra = {"controlnet": controlnet} if controlnet is not None else {}
    pipe = auto.from_pipe(studio.base, dtype=studio.dtype, **extra)
    pipe.scheduler = make_scheduler(SCHEDULER, dict(studio.base.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_inputs(studio, request: GenerationRequest, control: Image.Image | None) -> dict[str, object]:
    """The arguments the studio hands its pipeline for `request`, prepared once, outside the timed call: the same
    validated values, control map, start picture and blurred mask."""
    request, _ = validate_request(request, studio.served)
    inputs: dict[str, object] = dict(
        prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
        width=request.width, height=request.height)
    if control is not None:
        inputs["image"] = control
    if MODES[request.mode].starts_from_image:
        edit = edit_inputs(request, studio.limits.max_input_pixels)
        inputs.update(image=edit.start, strength=strength_of(request))
        if edit.mask is not None:
            inputs["mask_image"] = edit.mask
        else:  # image-to-image takes the start picture's size
            del inputs["width"], inputs["height"]
    return inputs


def bare_run(check: Check, pipe: DiffusionPipeline, inputs: dict[str, object], seed: int) -> Run:
    clock = StepClock(check)

    def on_step_end(pipe, step, timestep, callback_kwargs):
        clock.tick()
        return callback_kwargs

    started = time.perf_counter()
    images = pipe(**inputs, callback_on_step_end=on_step_end, generator=[torch.Generator("cpu").manual_seed(seed)],
                  ).images
    check.sync()
    return Run(clock.rate(), time.perf_counter() - started, images[0])


def median_run(runs: list[Run]) -> Run:
    return Run(statistics.median(run.rate for run in runs), statistics.median(run.seconds for run in runs),
               runs[-1].image, round(statistics.median(run.previews for run in runs)))


def alternate(check: Check, first: Callable[[], Run], second: Callable[[], Run]) -> tuple[Run, Run]:
    """Medians of `first` and `second` after a warm-up of each, run alternately so both see the same machine."""
    first(), second()
    runs: tuple[list[Run], list[Run]] = ([], [])
    for index in range(check.repeats):
        for which in ((0, 1) if index % 2 == 0 else (1, 0)):
            runs[which].append((first, second)[which]())
    return median_run(runs[0]), median_run(runs[1])


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# ---------------------------------------------------------------- sections


def modes_against_bare(check: Check, studio) -> float:
    """it/s per mode, studio against bare diffusers; returns the studio's text-mode it/s."""
    text_rate = float("nan")
    for mode in MODES:
        request = request_for(check, studio, mode)
        control = studio.generate(request).control_map if MODES[mode].is_controlled else None
        pipe, inputs = bare_pipe(studio, mode), bare_inputs(studio, request, control)
        check.reset_peak()
        served, plain = alternate(check, functools.partial(studio_run, check, studio, request),
                                  functools.partial(bare_run, check, pipe, inputs, request.seed))
        peak = check.peak_gib()
        check.sound(served.image, f"{mode}: the studio's image", repainted_pixels(studio, request))
        check.sound(plain.image, f"{mode}: bare diffusers' image")
        print(f"{mode:>7}: studio {served.rate:6.2f} it/s ({served.seconds:.2f} s a call), bare diffusers "
              f"{plain.rate:6.2f} it/s ({plain.seconds:.2f} s): {served.rate / plain.rate:.3f}x the bare rate; peak "
              f"{check.memory} {peak:.2f} GiB", flush=True)
        if mode == "text":
            text_rate = served.rate
        del pipe
    return text_rate


def served_with_previews(check: Check, studio) -> None:
    """The served path with live previews against the plain call, both on the studio, alternated."""
    request = request_for(check, studio, "text")
    served, plain = alternate(check, lambda: served_run(check, studio, request),
                              lambda: studio_run(check, studio, request))
    check.sound(served.image, "served with previews: the image")
    how = ("a preview at every step (tiny: a stand-in for the app's pacing)" if check.tiny else
           f"the app's pacing: {previews.PREVIEW_INTERVAL_S} s apart, at most {previews.PREVIEW_SHARE:.0%} of a run")
    print(f"served with previews: {served.rate:.2f} it/s ({served.seconds:.2f} s a call, {served.previews} previews, "
          f"{how}) against {plain.rate:.2f} it/s ({plain.seconds:.2f} s) for Studio.generate without previews: "
          f"{served.seconds / plain.seconds:.3f}x the time", flush=True)


def write_loras(check: Check, studio, family: Family) -> list[str]:
    base = "sdxl_base_v1-0" if family.name == "sdxl" else "sd_v1"
    names = []
    for index in range(2):
        # SDXL's kohya text-encoder keys name two encoders; the helper writes SD1.5's, so SDXL's are UNet-only.
        tensors = lora_tensors(studio.base, layout="kohya", rank=4 if check.tiny else 32, seed=index, strength=0.05,
                               text_encoder=family.name == "sd15", dtype=torch.float16)
        write_lora(family.loras / f"style{index}.safetensors", tensors,
                   kohya_metadata(base=base, title=f"style{index}"))
        names.append(f"style{index}.safetensors")
    return names


def loras_eager(check: Check, studio, names: list[str]) -> None:
    first = [timed(lambda name=name: studio.loras.activate([LoraChoice(name, 1.0)])) for name in names]
    sets = [[LoraChoice(names[0], 0.8)], [LoraChoice(names[1], 0.7)], [LoraChoice(n, 0.6) for n in names], []]
    switch = statistics.median(timed(lambda i=i: studio.loras.activate(sets[i % 4])) for i in range(4, 24))
    both = tuple(LoraChoice(name, weight) for name, weight in zip(names, (0.8, 0.6), strict=True))
    plain_request = request_for(check, studio, "text")
    base = studio.generate(plain_request).images[0]
    with_loras, without = alternate(
        check, lambda: studio_run(check, studio, request_for(check, studio, "text", loras=both)),
        lambda: studio_run(check, studio, plain_request))
    check.sound(with_loras.image, "two LoRAs active: the image")
    back = check.identical(base, studio.generate(plain_request).images[0], "LoRAs off: the base image")
    print(f"LoRA: first load {statistics.median(first) * 1000:.0f} ms, switch {switch * 1000:.1f} ms; two active "
          f"{with_loras.rate:.2f} it/s against {without.rate:.2f} without: {without.rate / with_loras.rate:.3f}x the "
          f"time; base back pixel-identical: {back}", flush=True)
    request = request_for(check, studio, "text", loras=both)
    configured = studio.loras.fuse
    def fused_or_not(fuse: bool):
        studio.loras.activate_fused_or_not(list(both), fuse)  # before the timed run, which then finds it so
        return studio_run(check, studio, request)

    unfused, fused = alternate(check, lambda: fused_or_not(False), lambda: fused_or_not(True))
    check.sound(fused.image, "fused LoRA set: the image")
    studio.loras.activate_fused_or_not([], configured)
    back = check.identical(base, studio.generate(plain_request).images[0], "LoRAs unfused: the base image")
    print(f"fused LoRA set: {fused.rate:.2f} it/s against {unfused.rate:.2f} unfused: {fused.rate / unfused.rate:.3f}x "
          f"the rate; base back pixel-identical after unfusing: {back}", flush=True)


def decode_peak(check: Check, pipe: DiffusionPipeline, latents: torch.Tensor, tiled: bool) -> float:
    """Peak memory of decoding `latents` as the pipeline does (SDXL's VAE upcast included), whole or in tiles."""
    pipe.vae.enable_tiling() if tiled else pipe.vae.disable_tiling()
    check.reset_peak()
    image = decode_latents(pipe, latents)[0]
    check.sync()
    peak = check.peak_gib()
    check.sound(image, f"VAE decode {'in tiles' if tiled else 'whole'}")
    return peak


def smallest_tiled_side(check: Check, studio) -> int | None:
    """The smallest square side the studio decodes in tiles, as its own rule (`vae_savers`) decides; None if no
    side it serves is tiled."""
    resolution, multiple = studio.model.resolution, studio.size_multiple
    sides = range(resolution, studio.served.max_side + 1, multiple)
    return next((side for side in sides if acceleration.vae_savers(check.device, side, side, 1, resolution)[0]), None)


def vae_tiling(check: Check, studio) -> None:
    """Peak memory of decoding an image just above the tiling threshold whole and in tiles, and of the studio's
    whole call at that size (which switches tiling on itself)."""
    size = smallest_tiled_side(check, studio)
    if size is None:
        print(f"VAE tiling: no side up to the served {studio.served.max_side} px is decoded in tiles", flush=True)
        return
    request = replace(request_for(check, studio, "text", size=size), steps=2)
    pipe = bare_pipe(studio, "text")
    latents = pipe(**bare_inputs(studio, request, None), output_type="latent",
                   generator=torch.Generator("cpu").manual_seed(request.seed)).images
    whole, tiled = decode_peak(check, pipe, latents, tiled=False), decode_peak(check, pipe, latents, tiled=True)
    check.reset_peak()
    check.sound(studio.generate(request).images[0], "VAE tiling: the studio's image")
    served = check.peak_gib()
    tiled_by_studio = "yes" if studio.base.vae.use_tiling else "NO"  # as the studio left its VAE after that call
    print(f"VAE at {size}x{size}: decoding alone peaks at {whole:.2f} GiB whole, {tiled:.2f} GiB in tiles; the "
          f"studio's whole call {served:.2f} GiB, decoded in tiles: {tiled_by_studio} ({check.memory})", flush=True)


def graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def compiled_studio(check: Check, family: Family, eager_rate: float) -> None:
    from torch._dynamo.utils import counters

    held = check.held_gib()
    studio = open_studio(check, family, SpeedSettings(compile=True))
    names = write_loras(check, studio, family)
    counters.clear()  # dynamo's counters are global: the last family's graphs are not this one's
    request = request_for(check, studio, "text")
    compile_s = timed(lambda: studio.generate(request))
    compiled_graphs = graphs()
    check.reset_peak()
    run = median_run([studio_run(check, studio, request) for _ in range(check.repeats)])
    check.sound(run.image, "compiled UNet: the image")
    print(f"compiled UNet: first call {compile_s:.1f} s (compiling {compiled_graphs} graphs); then {run.rate:.2f} it/s "
          f"({run.seconds:.2f} s a call) against {eager_rate:.2f} eager: compile gain {run.rate / eager_rate:.2f}x; "
          f"peak {check.memory} {check.peak_gib():.2f} GiB ({held:.2f} GiB held before this studio opened)",
          flush=True)
    # From no LoRA through three sets and back to none: every switch the compiled UNet could recompile on.
    sets = [(LoraChoice(names[0], 0.8),), (LoraChoice(names[1], 1.0),),
            (LoraChoice(names[0], 0.5), LoraChoice(names[1], 0.5)), ()]
    before = graphs()
    switch = []
    for choices in sets:
        switch.append(timed(lambda choices=choices: studio.loras.activate(list(choices))))
        check.sound(studio.generate(request_for(check, studio, "text", loras=choices)).images[0],
                    f"compiled UNet with {len(choices)} LoRAs: the image")
    new = graphs() - before
    print(f"LoRA switch in the compiled UNet: {statistics.median(switch) * 1000:.1f} ms; recompiled: "
          f"{'YES' if new else 'no'} ({new} new graphs over {len(sets)} switches)", flush=True)


def offloaded_studio(check: Check, family: Family, eager_rate: float) -> None:
    held = check.held_gib()
    studio = open_studio(check, family, SpeedSettings(offload=True))
    request = request_for(check, studio, "text")
    studio.generate(request)
    check.reset_peak()
    run = median_run([studio_run(check, studio, request) for _ in range(check.repeats)])
    check.sound(run.image, "offload: the image")
    hooked = hasattr(studio.base.unet, "_hf_hook")
    where = "the CPU, so the hooks' moves are no-ops" if check.tiny else check.device
    print(f"offload: {run.rate:.2f} it/s ({run.seconds:.2f} s a call) against {eager_rate:.2f} without; peak "
          f"{check.memory} {check.peak_gib():.2f} GiB ({held:.2f} GiB held before this studio opened); offload hooks "
          f"on the UNet: {'yes' if hooked else 'NO'}, executing on {where}; UNet between runs on: "
          f"{studio.base.unet.device}", flush=True)


def eager_studio(check: Check, family: Family) -> tuple[float, weakref.ref]:
    """Every mode against bare diffusers, the served path, LoRAs and VAE tiling, on one studio as served by
    default; returns its text-mode it/s and a weak reference to its UNet, which is freed once this has returned
    (nothing else may hold the studio)."""
    studio = open_studio(check, family, SpeedSettings())
    print(f"{studio.model.resolution}x{studio.model.resolution} in {str(studio.dtype).removeprefix('torch.')}; "
          f"attention: {type(next(iter(studio.base.unet.attn_processors.values()))).__name__}"
          f"{'; notes: ' + ' '.join(studio.notes) if studio.notes else ''}", flush=True)
    eager_rate = modes_against_bare(check, studio)
    shared = all(studio.pipeline_for(mode).unet is studio.base.unet for mode in MODES)
    print(f"every mode built: {check.held_gib():.2f} GiB of {check.memory} held; one copy of the base weights: "
          f"{shared}", flush=True)
    if check.section("served with previews", 20):
        served_with_previews(check, studio)
    if check.section("LoRAs", 30):
        loras_eager(check, studio, write_loras(check, studio, family))
    if check.section("VAE tiling", 20):
        vae_tiling(check, studio)
    return eager_rate, weakref.ref(studio.base.unet)


def ray_serve(check: Check, family: Family) -> None:
    """One Generator replica of the family's model on a local cluster (the GPU, when there is one) against a studio
    in this process; then four concurrent text requests with batching on, against the same four one by one."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.client import RemoteStudio
    from serving.local import local_cluster

    token = "gpu-check"
    environment = {"STUDIO_BACKEND_TOKEN": token, "STUDIO_MODEL": family.model, "STUDIO_DEVICE": check.device,
                   "STUDIO_LORA_DIR": str(family.loras)}
    studio = open_studio(check, family, SpeedSettings())
    requests = [request_for(check, studio, "text") for _ in range(4)]
    requests = [replace(request, seed=request.seed + index) for index, request in enumerate(requests)]
    with (local_cluster(environment, replicas=1, cpus=2, gpus=1 if check.cuda else 0, batch_size=4) as url,
          RemoteStudio(url, token, timeout_s=600) as remote):
        remote.generate(requests[0])  # warm: the replica's first call
        here, there = alternate(check, lambda: studio_run(check, studio, requests[0]),
                                lambda: timed_remote(check, remote, requests[0]))
        print(f"one request: in-process {here.seconds:.2f} s, through Serve {there.seconds:.2f} s "
              f"({there.seconds / here.seconds:.2f}x); same pixels: {check.identical(here.image, there.image, 'ray')}")
        started = time.perf_counter()
        for request in requests:
            remote.generate(request)
        one_by_one = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(len(requests)) as pool:
            list(pool.map(remote.generate, requests))
        together = time.perf_counter() - started
        print(f"4 text requests: one by one {one_by_one:.2f} s, at once (sharing calls) {together:.2f} s: "
              f"{one_by_one / together:.2f}x", flush=True)


def timed_remote(check: Check, remote, request: GenerationRequest) -> Run:
    started = time.perf_counter()
    result = remote.generate(request)
    seconds = time.perf_counter() - started
    return Run(request.steps / seconds, seconds, result.images[0])


def check_family(check: Check, name: str) -> None:
    print(f"== {name} on {torch.cuda.get_device_name() if check.cuda else 'the CPU'}, {check.steps} steps "
          f"(img2img and inpaint: {math.ceil(check.steps / STRENGTH)} at strength {STRENGTH}), guidance 7.5, "
          f"{SCHEDULER}", flush=True)
    model, controlnets = build_models(check, name)
    family = Family(name, model, controlnets, check.scratch / name / "loras")
    eager_rate, eager_unet = eager_studio(check, family)
    free_memory()
    # The compiled and offloaded studios' peaks are their own only if the eager studio is gone, not merely unused.
    print(f"eager studio freed before the next opens: {'yes' if eager_unet() is None else 'NO'}; "
          f"{check.held_gib():.2f} GiB of {check.memory} held", flush=True)
    if check.section("compile", 150 if name == "sd15" else 240):
        compiled_studio(check, family, eager_rate)
        free_memory()
    if check.section("offload", 40):
        offloaded_studio(check, family, eager_rate)
        free_memory()
    if check.ray and check.section("Ray Serve", 90):
        ray_serve(check, family)
        free_memory()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: a smoke test of this script")
    parser.add_argument("--families", default="sd15,sdxl")
    parser.add_argument("--ray", action="store_true",
                        help="also the Ray Serve section (on a GPU it runs whenever Ray is installed)")
    parser.add_argument("--steps", type=int, default=None, help="default 20 (tiny: 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls of each kind; default 3 (tiny: 1)")
    parser.add_argument("--budget-s", type=float, default=450,
                        help="seconds; on a GPU later sections are skipped after it (--tiny skips nothing)")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    if not torch.cuda.is_available() and not args.tiny:
        raise SystemExit("No CUDA device: run it on a GPU, or with --tiny for a smoke test on the CPU.")
    check = Check(args)
    families = [family.strip() for family in args.families.split(",") if family.strip()]
    try:
        with gpu_paths_on_cpu() if check.tiny else contextlib.nullcontext():
            for index, family in enumerate(families):
                if index and not check.section(family, 200):
                    continue
                check_family(check, family)
    finally:
        shutil.rmtree(check.scratch, ignore_errors=True)  # the models: gigabytes of disk
    failed = len(check.nan_failures)
    print(f"NaN checks: {check.images_checked} images, {failed} failed"
          f"{': ' + '; '.join(check.nan_failures) if failed else ' (every image a figure rests on is a picture)'}")
    print(f"done in {args.budget_s - check.left():.0f} s")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
