"""Real-size SD1.5 and SDXL served by the studio against bare diffusers, each figure a ratio measured in one run.

The models have random weights, built from the published architectures in `embedded/real_size_configs/` and
saved to a temporary folder, then loaded through the studio's own loader; nothing is downloaded. Each family
runs in its own process, one after the other, so only one real-size model is in memory at a time.

    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python scripts/benchmark_real_size.py            # sd15, then sdxl
    HF_HUB_OFFLINE=1 python scripts/benchmark_real_size.py --family sd15 --size 256 --steps 3

Printed per family: studio vs bare diffusers per mode (same modules, same arguments, same pixels), LoRA first
load against plain `load_lora_weights`, a LoRA switch against a first load, two active LoRAs against none (and
fused against unfused), a mode switch against a fresh load of the base, and resident memory with every mode built
against the bytes of one copy of the weights. Timings on a shared machine drift: studio and bare calls alternate
so that drift falls on both, and by default every time is the process's CPU time (`--clock cpu`): with other
work on the same cores, wall-clock times of identical calls varied by 2x here, while the CPU time a call needs
barely changes. Run with `--threads 1` so that CPU seconds are seconds of one core.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoPipelineForText2Image, DiffusionPipeline  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from embedded.real_size import FAMILIES, build_real_size_controlnet, build_real_size_pipeline  # noqa: E402
from embedded.synthetic_loras import kohya_metadata, lora_tensors, write_lora  # noqa: E402
from embedded.tiny_models import build_tiny_controlnets, build_tiny_pipeline  # noqa: E402
from pipelines.loader import load_base_pipeline  # noqa: E402
from pipelines.modes import CONTROL_MODES, MODES  # noqa: E402
from pipelines.request import GenerationRequest, LoraChoice  # noqa: E402
from pipelines.schedulers import make_scheduler  # noqa: E402
from pipelines.settings import Settings  # noqa: E402

# SDXL's weights are 12.9 GiB in fp32, over what one process may hold on this shared 24 GiB machine; in bf16
# they are 6.5 GiB. The studio serves fp32 on the CPU, so SDXL's figures here are for bf16 (said in the output).
DTYPES = {"sd15": torch.float32, "sdxl": torch.bfloat16}
# One real-size SDXL ControlNet is 1.25 B parameters: all three control modes share one here (the cache loads a
# source once), so memory holds one and pose and depth would time the same as edge; SD1.5 gets three, as a real
# deployment has.
CONTROLNETS = {"sd15": 3, "sdxl": 1}
# The modes timed: text and the control modes (img2img and inpainting run the same UNet on fewer steps).
TIMED_MODES = {"sd15": ("text", *CONTROL_MODES), "sdxl": ("text", "edge")}
SCHEDULER = "Euler"
PROMPT = "a photo of an astronaut riding a horse on the moon"
LORA_RANK = 32


def resident_gib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 2**20


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def timed(action: Callable[[], object]) -> float:
    started = clock()
    action()
    return clock() - started


def build(family: str, folder: Path, tiny: bool = False) -> dict[str, str]:
    """The base model and its ControlNets, written in a child process so the builder's memory is gone after."""
    if tiny:  # the test suite's tiny model: a smoke run of this script
        build_tiny_pipeline(folder / "model")
        return build_tiny_controlnets(folder / "model", folder)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_build, family, folder).result()


def _build(family: str, folder: Path) -> dict[str, str]:
    dtype = DTYPES[family]
    build_real_size_pipeline(family, folder / "model", dtype=dtype)
    sources = [folder / f"controlnet-{index}" for index in range(CONTROLNETS[family])]
    for index, source in enumerate(sources):
        build_real_size_controlnet(family, source, dtype=dtype, seed=100 + index)
    return {mode: str(sources[index % len(sources)]) for index, mode in enumerate(CONTROL_MODES)}


def control_map(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline="white", width=3)
    return image


def request_for(mode: str, args: argparse.Namespace, loras: tuple[LoraChoice, ...] = ()) -> GenerationRequest:
    controlled = MODES[mode].is_controlled
    return GenerationRequest(
        mode=mode, prompt=PROMPT, steps=args.steps, width=args.size, height=args.size, seed=1, guidance_scale=7.5,
        scheduler=SCHEDULER, image=control_map(args.size) if controlled else None,
        preprocessor="none" if controlled else None, loras=loras,
    )


def bare_call(pipe: DiffusionPipeline, request: GenerationRequest, control: Image.Image | None) -> Image.Image:
    """What a diffusers user writes for the same request: the studio's arguments, no studio."""
    kwargs = dict(
        prompt=request.prompt, num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
        width=request.width, height=request.height, generator=[torch.Generator("cpu").manual_seed(request.seed)],
    )
    if control is not None:
        kwargs["image"] = control
    return pipe(**kwargs).images[0]


def alternate(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Medians of `first` and `second`, run alternately (and in swapped order every other round)."""
    times: tuple[list[float], list[float]] = ([], [])
    for round_index in range(repeats):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for which in order:
            times[which].append(timed((first, second)[which]))
    return statistics.median(times[0]), statistics.median(times[1])


def weight_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the distinct tensors of `modules` (a tensor shared by two modules counts once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def run_family(family: str, args: argparse.Namespace) -> None:
    # The models take 8-9 GB of disk per family: the folder goes when the run ends, however it ends.
    with tempfile.TemporaryDirectory(prefix=f"real-size-{family}-") as scratch:
        measure_family(family, args, Path(scratch))


def measure_family(family: str, args: argparse.Namespace, scratch: Path) -> None:
    from pipelines.studio import Studio

    transformers.utils.logging.set_verbosity_error()
    dtype = DTYPES[family]
    started = time.perf_counter()
    controlnets = build(family, scratch, args.tiny)
    model = str(scratch / "model")
    size = "TINY (a smoke run)" if args.tiny else "real-size"
    print(f"== {family}: {size} architecture, random weights, {str(dtype).removeprefix('torch.')}, "
          f"{args.size}x{args.size}, {args.steps} steps, guidance 7.5, {SCHEDULER}; built in "
          f"{time.perf_counter() - started:.0f} s", flush=True)

    fresh = timed(lambda: load_base_pipeline(model, "cpu", dtype))  # the pipeline is dropped at once
    gc.collect()
    lora_dir = scratch / "loras"
    with mock.patch("pipelines.studio.pick_device", lambda requested: ("cpu", dtype)):
        studio = Studio(Settings(model=model, lora_dir=str(lora_dir), device="cpu", controlnets=controlnets))
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    unet_parameters = sum(parameter.numel() for parameter in studio.base.unet.parameters())
    chosen = "--threads" if args.threads else "the studio's choice"
    print(f"UNet {unet_parameters / 1e9:.2f} B parameters; torch threads {threads} ({chosen}); times are "
          f"{'CPU' if clock is time.process_time else 'wall-clock'} seconds", flush=True)

    base_image = compare_modes(studio, args, TIMED_MODES[family])
    compare_mode_switch(studio, fresh)
    report_memory(studio)
    compare_loras(studio, family, args, base_image, lora_dir)


def compare_modes(studio, args: argparse.Namespace, modes: tuple[str, ...]) -> np.ndarray:
    """Studio vs bare diffusers per mode; returns the text mode's image, the base model's pixels."""
    images = {mode: compare_mode(studio, args, mode) for mode in modes}
    return images["text"]


def compare_mode(studio, args: argparse.Namespace, mode: str) -> np.ndarray:
    """One mode, studio vs bare diffusers on the same modules; returns the studio's image."""
    request = request_for(mode, args)
    results = {}
    first = timed(lambda: results.update(studio=studio.generate(request)))  # the first call builds the mode
    control = results["studio"].control_map
    controlnet = studio.controlnets.get(mode) if MODES[mode].is_controlled else None
    extra = {"controlnet": controlnet} if controlnet is not None else {}
    bare = AutoPipelineForText2Image.from_pipe(studio.base, dtype=studio.dtype, **extra)
    bare.scheduler = make_scheduler(SCHEDULER, dict(studio.base.scheduler.config))
    bare.set_progress_bar_config(disable=True)
    served, plain = alternate(lambda: results.update(studio=studio.generate(request)),
                              lambda: results.update(bare=bare_call(bare, request, control)), args.repeats)
    studio_image = np.asarray(results["studio"].images[0])
    same = np.array_equal(studio_image, np.asarray(results["bare"]))
    print(f"{mode:>5}: studio {served:6.2f} s, bare diffusers {plain:6.2f} s: {served / plain:.3f}x "
          f"(same pixels: {'yes' if same else 'NO'}; first call {first:.2f} s, building the mode)", flush=True)
    return studio_image


def compare_mode_switch(studio, fresh: float) -> None:
    rebuild = statistics.median(
        timed(lambda: AutoPipelineForText2Image.from_pipe(studio.base, controlnet=studio.controlnets.get("edge"),
                                                         dtype=studio.dtype)) for _ in range(3)
    )
    switch = statistics.median(timed(lambda mode=mode: studio.pipeline_for(mode)) for mode in [*MODES] * 50)
    print(f"mode switch (built modes): {switch * 1e6:.1f} us; fresh base load {fresh:.2f} s: "
          f"{fresh / switch:,.0f}x; a mode's first build (from_pipe) {rebuild * 1000:.1f} ms: {fresh / rebuild:.0f}x "
          f"faster than a fresh load", flush=True)


def report_memory(studio) -> None:
    pipes = [studio.pipeline_for(mode) for mode in MODES]
    modules = [module for pipe in pipes for module in pipe.components.values() if isinstance(module, torch.nn.Module)]
    one_copy = all(pipe.unet is studio.base.unet and pipe.vae is studio.base.vae for pipe in pipes)
    weights = weight_bytes(modules) / 2**30
    resident = resident_gib()
    controlnets = weight_bytes([studio.controlnets.get(mode) for mode in CONTROL_MODES]) / 2**30
    print(f"resident memory with every mode built: {resident:.2f} GiB; weights {weights:.2f} GiB (base "
          f"{weights - controlnets:.2f} + ControlNets {controlnets:.2f}): {resident / weights:.2f}x the weights; "
          f"every mode shares the base UNet and VAE: {'yes' if one_copy else 'NO'}", flush=True)


def write_loras(studio, family: str, folder: Path) -> list[str]:
    # SDXL's kohya text-encoder keys name two encoders; the helper writes SD1.5's, so SDXL's LoRAs are UNet-only.
    text_encoder = family == "sd15"
    base = "sdxl_base_v1-0" if family == "sdxl" else "sd_v1"
    names = []
    for index in range(2):
        tensors = lora_tensors(studio.base, layout="kohya", rank=LORA_RANK, seed=index, strength=0.05,
                               text_encoder=text_encoder)
        write_lora(folder / f"style{index}.safetensors", tensors, kohya_metadata(base=base, title=f"style{index}"))
        names.append(f"style{index}.safetensors")
    return names


def compare_loras(studio, family: str, args: argparse.Namespace, base_image: np.ndarray, folder: Path) -> None:
    names = write_loras(studio, family, folder)
    configured, studio.loras.fuse = studio.loras.fuse, False  # loads and switches as adapters; fusing is timed below
    first = [timed(lambda name=name: studio.loras.activate([LoraChoice(name, 1.0)])) for name in names]
    plain = timed(lambda: studio.base.load_lora_weights(str(folder / names[0]), adapter_name="plain"))
    studio.base.delete_adapters("plain")
    studio.loras.activate([])
    sets = [[LoraChoice(names[0], 0.8)], [LoraChoice(names[1], 0.7)], [LoraChoice(n, 0.6) for n in names], []]
    switches = [timed(lambda index=index: studio.loras.activate(sets[index % len(sets)])) for index in range(40)]
    first_load, switch = statistics.median(first), statistics.median(switches)
    print(f"LoRA (rank {LORA_RANK}, kohya{', UNet only' if family == 'sdxl' else ''}): first load "
          f"{first_load * 1000:.0f} ms, plain load_lora_weights {plain * 1000:.0f} ms: {first_load / plain:.2f}x; "
          f"switch {switch * 1000:.1f} ms: {first_load / switch:.0f}x faster than a first load", flush=True)
    both = tuple(LoraChoice(name, weight) for name, weight in zip(names, (0.8, 0.6)))
    studio.loras.fuse = configured
    with_loras, without = alternate(lambda: studio.generate(request_for("text", args, both)),
                                    lambda: studio.generate(request_for("text", args)), args.lora_repeats)
    after = np.asarray(studio.generate(request_for("text", args)).images[0])
    identical = np.array_equal(after, base_image)
    print(f"two active LoRAs ({'fused as a request makes them active' if configured else 'unfused'}): "
          f"{with_loras:.2f} s against {without:.2f} s without: {with_loras / without:.3f}x; base image after "
          f"LoRAs off pixel-identical: {'yes' if identical else 'NO'}", flush=True)
    compare_fused(studio, args, both, base_image)


def compare_fused(studio, args: argparse.Namespace, both: tuple[LoraChoice, ...], base_image: np.ndarray) -> None:
    """Fused against unfused for the same active set, where the studio can fuse (see pipelines/acceleration.py)."""
    request = request_for("text", args, both)
    images, times = {}, {"fused": [], "unfused": []}
    configured = studio.loras.fuse
    studio.loras.activate_fused_or_not(list(both), False)
    fuse = timed(lambda: studio.loras.activate_fused_or_not(list(both), True))
    for round_index in range(args.lora_repeats):  # alternately, and only the generation timed
        for kind in ("fused", "unfused") if round_index % 2 == 0 else ("unfused", "fused"):
            studio.loras.activate_fused_or_not(list(both), kind == "fused")
            times[kind].append(timed(lambda kind=kind: images.update({kind: studio.generate(request).images[0]})))
    studio.loras.activate_fused_or_not([], configured)
    fused, unfused = statistics.median(times["fused"]), statistics.median(times["unfused"])
    difference = np.abs(np.asarray(images["fused"], dtype=int) - np.asarray(images["unfused"], dtype=int)).max()
    after = np.asarray(studio.generate(request_for("text", args)).images[0])
    print(f"fused LoRA set: {fused:.2f} s against {unfused:.2f} s unfused: {fused / unfused:.3f}x (fusing took "
          f"{fuse * 1000:.0f} ms; largest pixel difference from unfused {difference}); base image after "
          f"unfusing pixel-identical: {'yes' if np.array_equal(after, base_image) else 'NO'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=[*FAMILIES, "all"], default="all")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each kind (after a warm-up)")
    parser.add_argument("--lora-repeats", type=int, default=5,
                        help="timed calls for LoRAs on/off and fused/unfused, a few percent apart")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the studio's choice)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny SD1.5 model: a smoke run in seconds")
    parser.add_argument("--clock", choices=CLOCKS, default="cpu", help="the process's CPU time, or wall-clock time")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.tiny:
        args.size, args.steps, args.repeats, args.lora_repeats = 32, 2, 1, 1
        run_family("sd15", args)
        return
    if args.family != "all":
        run_family(args.family, args)
        return
    for family in FAMILIES:  # one process each: only one real-size model in memory at a time
        command = [sys.executable, __file__, "--family", family, "--size", str(args.size), "--steps",
                   str(args.steps), "--repeats", str(args.repeats), "--lora-repeats", str(args.lora_repeats),
                   "--clock", args.clock]
        if args.threads:
            command += ["--threads", str(args.threads)]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
