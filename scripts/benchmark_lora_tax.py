"""The LoRA tax as people are served: `/text2img` with two active rank-32 LoRAs against the same request without
them, through gradio_client, wall clock, with the threads the studio picks; alone, and with other work on the
machine; for each way of starting the studio asked for, in one run.

    HF_HUB_OFFLINE=1 python scripts/benchmark_lora_tax.py                      # real-size SD1.5, random weights
    HF_HUB_OFFLINE=1 python scripts/benchmark_lora_tax.py --model embedded --size 64 --steps 20 --pairs 8

The ways of starting it (`--setups`):
- `default`: as `python app.py` starts (on the CPU each LoRA set is fused into the weights when it is made active,
  and torch's tensors of 2 MB and more sit on transparent huge pages);
- `unfused`: the same with STUDIO_FUSE_LORAS=0 (peft's LoRA layers run beside the base layers);
- `before`: unfused, with 4 KB pages (THP_MEM_ALLOC_ENABLE=0): the studio before both.

Every setup's studio runs at once (memory for one model per setup), and their requests take turns: the
machine's speed drifts between one start and the next by more than what is measured here. Each pair is a request
with the LoRAs and one without, swapped every other pair; each ratio is of the medians. The other work is a process
that keeps one core busy with one-thread matrix products, started after the quiet pairs. The server's
page faults per request (from /proc) are printed beside the times: they are where 4 KB pages lose. The real-size
LoRAs are random rank-32 kohya files on every attention projection and the text encoder, at weights 0.8 and 0.6;
the embedded model's are its own two (stripes, mono).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from gradio_client import Client
from PIL import Image

from embedded.app_process import running_app

SETUPS = {
    "default": {},
    "unfused": {"STUDIO_FUSE_LORAS": "0"},
    "before": {"STUDIO_FUSE_LORAS": "0", "THP_MEM_ALLOC_ENABLE": "0"},
}
PROMPT = "a photo of an astronaut riding a horse on the moon"
RANK = 32


def build_real_size(folder: Path) -> tuple[str, str, str]:
    """A real-size SD1.5 with random weights and two rank-32 LoRAs for it, written in a child process (so the
    builder's memory is gone after); returns the model folder, the LoRA folder and the request's `loras` text."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_build_real_size, folder).result()


def _build_real_size(folder: Path) -> tuple[str, str, str]:
    import torch
    from diffusers import StableDiffusionPipeline

    from embedded.real_size import build_real_size_pipeline
    from embedded.synthetic_loras import kohya_metadata, lora_tensors, write_lora

    build_real_size_pipeline("sd15", folder / "model", dtype=torch.float32)
    pipe = StableDiffusionPipeline.from_pretrained(folder / "model", safety_checker=None)
    for index in range(2):
        tensors = lora_tensors(pipe, layout="kohya", rank=RANK, seed=index, strength=0.05)
        write_lora(folder / "loras" / f"style{index}.safetensors", tensors, kohya_metadata(title=f"style{index}"))
    return str(folder / "model"), str(folder / "loras"), "style0:0.8, style1:0.6"


def page_faults(pid: int) -> int:
    """Minor page faults of process `pid` so far (/proc/<pid>/stat, field 10)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def busy_core() -> None:
    """Other work on the machine: one thread of matrix products, until it is stopped."""
    import torch

    torch.set_num_threads(1)
    matrix = torch.randn(512, 512)
    while True:
        matrix = torch.tanh(matrix @ matrix)


class Served:
    """One started studio: a request with or without the LoRAs, timed, with the server's page faults."""

    def __init__(self, setup: str, url: str, pid: int, args: argparse.Namespace, loras: str) -> None:
        self.setup, self.client, self.pid, self.args, self.loras = setup, Client(url, verbose=False), pid, args, loras
        self.runs: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
        self.images: dict[bool, np.ndarray] = {}

    def call(self, with_loras: bool) -> tuple[float, int]:
        faults, started = page_faults(self.pid), time.perf_counter()
        gallery, *_ = self.client.predict(
            prompt=PROMPT, seed=1, steps=self.args.steps, width=self.args.size, height=self.args.size,
            guidance_scale=7.5, loras=self.loras if with_loras else "", randomize_seed=False, api_name="/text2img",
        )
        seconds, faults = time.perf_counter() - started, page_faults(self.pid) - faults
        self.images[with_loras] = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
        return seconds, faults

    def pair(self, index: int) -> None:
        """With the LoRAs and without, the order swapped every other pair."""
        for with_loras in (True, False) if index % 2 == 0 else (False, True):
            self.runs[with_loras].append(self.call(with_loras))

    def summary(self, label: str) -> str:
        if np.array_equal(self.images[True], self.images[False]):
            raise SystemExit("The LoRAs did not change the image: the comparison measures nothing.")
        with_loras, without = (self.median(key) for key in (True, False))
        faults = {key: statistics.median(count for _, count in self.runs[key]) for key in (True, False)}
        self.runs = {True: [], False: []}
        return (f"[{self.setup:>7}] {label}: {with_loras:6.2f} s with two LoRAs, {without:6.2f} s without: "
                f"{with_loras / without:.3f}x (server page faults a request: {faults[True]:,.0f} with, "
                f"{faults[False]:,.0f} without)")

    def median(self, with_loras: bool) -> float:
        return statistics.median(seconds for seconds, _ in self.runs[with_loras])


def phase(studios: list[Served], pairs: int, label: str) -> None:
    """`pairs` rounds in which every studio runs a pair, in an order that turns each round, so that all of them
    meet the same moments of the machine; then each one's figures, and each one's base request against the first's."""
    for index in range(pairs):
        turned = studios[index % len(studios):] + studios[:index % len(studios)]
        for served in turned:
            served.pair(index)
    first = studios[0].median(False)
    bases = ", ".join(f"{served.setup} {served.median(False) / first:.3f}x" for served in studios[1:])
    for served in studios:
        print(served.summary(label), flush=True)
    if bases:
        print(f"{label}: the request without LoRAs against {studios[0].setup}'s: {bases}", flush=True)


def measure(setups: list[str], model: str | None, lora_dir: str | None, loras: str,
            args: argparse.Namespace) -> None:
    """Every setup's studio started at once, and their requests interleaved (the machine's speed drifts by more
    than the differences measured here between one start and the next)."""
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        studios = []
        for setup in setups:
            environment = {**SETUPS[setup], "OMP_NUM_THREADS": None}  # the studio's own thread rule decides
            if model:
                environment.update(STUDIO_MODEL=model, STUDIO_LORA_DIR=lora_dir)
            process, url = stack.enter_context(running_app(Path(scratch) / f"{setup}.log", **environment))
            studios.append(Served(setup, url, process.pid, args, loras))
        for served in studios:  # the first calls build what later calls reuse
            served.pair(0)
            served.runs = {True: [], False: []}
        phase(studios, args.pairs, "alone")
        if args.pairs_loaded:
            neighbour = multiprocessing.get_context("spawn").Process(target=busy_core, daemon=True)
            neighbour.start()
            try:
                phase(studios, args.pairs_loaded, "with one core busy")
            finally:
                neighbour.terminate()
                neighbour.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["real-size", "embedded"], default="real-size")
    parser.add_argument("--setups", default="before,unfused,default", help=f"of {', '.join(SETUPS)}")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=4, help="pairs timed alone")
    parser.add_argument("--pairs-loaded", type=int, default=2, help="pairs timed with one core busy (0: none)")
    args = parser.parse_args()
    setups = args.setups.split(",")
    if unknown := set(setups) - set(SETUPS):
        parser.error(f"unknown setups {sorted(unknown)}; choose from {', '.join(SETUPS)}")
    with tempfile.TemporaryDirectory(prefix="lora-tax-") as scratch:
        if args.model == "real-size":
            started = time.perf_counter()
            model, lora_dir, loras = build_real_size(Path(scratch))
            print(f"real-size SD1.5, random weights, two rank-{RANK} LoRAs; built in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        else:
            model, lora_dir, loras = None, None, "stripes:0.8, mono:0.6"
        print(f"{args.size}x{args.size}, {args.steps} steps, guidance 7.5, the studio's threads; wall-clock seconds, "
              f"medians of {args.pairs} pairs alone and {args.pairs_loaded} with one core busy", flush=True)
        measure(setups, model, lora_dir, loras, args)


if __name__ == "__main__":
    main()
