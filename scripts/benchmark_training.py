"""What the embedded family's training gains from fused AdamW and from workers side by side, measured in one run.

    HF_HUB_OFFLINE=1 python scripts/benchmark_training.py [--steps 40] [--rounds 3]

1. A UNet-and-text-encoder training step (batch 16, two threads), with PyTorch's default AdamW and with the fused
   one, in alternating rounds so both see the same machine.
2. The LoRA stage (`train.train_lora`, the code the run uses): one process with two threads, then two
   single-threaded processes side by side, as the run trains the stages after the UNet.
3. The UNet step alone on two threads and on one, then beside the VAE-decoder stage (`train.tune_vae_decoder`)
   running in a single-threaded worker, as the run trains them: the UNet on one thread, then on two.
4. The UNet step data-parallel: two single-threaded processes, batch 16 each, averaging their gradients with
   DistributedDataParallel over gloo, against one single-threaded process (why the run does not split the UNet).
Untrained weights: the cost of a step does not depend on what the weights hold.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from embedded import train, world  # noqa: E402
from embedded.models import build_scheduler, build_text_encoder, build_unet, build_vae  # noqa: E402
from embedded.tokenizer import write_tokenizer_folder  # noqa: E402

BATCH = 16


class Denoiser(torch.nn.Module):
    """The UNet and the text encoder as one module, so DistributedDataParallel averages all their gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.unet, self.text_encoder = build_unet(), build_text_encoder()

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, timesteps, self.text_encoder(ids)[0]).sample


def unet_steps_per_second(fused: bool, steps: int, threads: int = 2,
                          wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = Denoiser() if wrap is None else wrap(Denoiser())
    scheduler = build_scheduler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    generator = torch.Generator().manual_seed(0)
    latents, ids = torch.randn(BATCH, 4, 16, 16), torch.randint(0, 49000, (BATCH, 77))

    def step() -> None:
        loss = train.diffusion_loss(scheduler, lambda noisy, t: model(noisy, t, ids), latents, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - started)


def lora_seconds(steps: int, threads: int, folder: str) -> float:
    """Seconds `train.train_lora` takes for `steps` steps of batch 16 on a UNet of the family's shape."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    scenes = [world.make_scene(seed, "object", style="stripes") for seed in range(64)]
    data = {"style": np.array(["stripes"] * len(scenes)), "caption": np.array([s.caption for s in scenes])}
    latents = torch.randn(len(scenes), 4, 16, 16)
    tokenizer = write_tokenizer_folder(Path(folder) / "tokenizer")
    unet, text_encoder = build_unet().requires_grad_(False), build_text_encoder().requires_grad_(False)
    config = replace(train.TrainConfig(), lora_steps=steps)
    started = time.perf_counter()
    train.train_lora(config, "stripes", data, latents, unet, text_encoder, tokenizer, Path(folder) / "loras")
    return time.perf_counter() - started


def decoder_seconds(steps: int, folder: str) -> float:
    """Seconds `train.tune_vae_decoder` takes for `steps` steps on one thread, on 64 random images."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vae = build_vae()
    vae.save_pretrained(Path(folder) / "vae")
    images = np.random.default_rng(0).integers(0, 256, (64, world.RESOLUTION, world.RESOLUTION, 3), dtype=np.uint8)
    latents = train.encode_latents(vae, images)
    config = replace(train.TrainConfig(), vae_decoder_steps=steps)
    started = time.perf_counter()
    train.tune_vae_decoder(config, {"image": images}, latents, Path(folder) / "vae", Path(folder) / "decoder")
    return time.perf_counter() - started


def unet_beside_the_decoder(steps: int, threads: int, folder: str) -> tuple[float, float]:
    """UNet steps per second on `threads` threads while the decoder trains in a worker, and the decoder's seconds.
    The decoder runs twice the UNet's steps, so it is busy for the whole UNet measurement."""
    context = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        list(pool.map(abs, range(1)))
        decoder = pool.submit(decoder_seconds, 2 * steps, folder)
        time.sleep(2)  # the worker builds its VAE first
        rate = unet_steps_per_second(True, steps, threads)
        return rate, decoder.result()


def data_parallel_steps_per_second(rank: int, steps: int, rendezvous: str) -> float:
    """UNet steps per second of one of two single-threaded processes that average gradients after each step."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        return unet_steps_per_second(True, steps, 1, wrap=torch.nn.parallel.DistributedDataParallel)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the optimizer comparison")
    args = parser.parse_args()

    rates = {False: [], True: []}
    for _ in range(args.rounds):
        for fused in (False, True):
            rates[fused].append(unet_steps_per_second(fused, args.steps))
    default, fused = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"unet step, batch {BATCH}, 2 threads: default AdamW {default:.2f} steps/s, fused AdamW {fused:.2f} "
          f"steps/s (medians of {args.rounds}): fused is {fused / default:.2f}x", flush=True)

    unet_alone = {threads: unet_steps_per_second(True, args.steps, threads) for threads in (2, 1)}
    with tempfile.TemporaryDirectory() as folder:
        one_thread, decoder_one = unet_beside_the_decoder(args.steps, 1, folder + "/beside1")
        two_threads, decoder_two = unet_beside_the_decoder(args.steps, 2, folder + "/beside2")
    print(f"unet step, fused AdamW: alone on 2 threads {unet_alone[2]:.2f} steps/s, on 1 thread "
          f"{unet_alone[1]:.2f}; beside the decoder's 1-thread worker ({2 * args.steps} decoder steps), on 1 thread "
          f"{one_thread:.2f} steps/s (decoder {decoder_one:.1f} s), on 2 threads {two_threads:.2f} steps/s "
          f"(decoder {decoder_two:.1f} s)", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        context = torch.multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            jobs = [pool.submit(data_parallel_steps_per_second, rank, args.steps, f"{folder}/rendezvous")
                    for rank in range(2)]
            parallel = min(job.result() for job in jobs)
    print(f"unet step, fused AdamW, data-parallel over two 1-thread processes (DDP, gloo, batch {BATCH} each): "
          f"{parallel:.2f} steps/s, {2 * BATCH * parallel:.1f} samples/s, against {BATCH * unet_alone[1]:.1f} "
          f"for one 1-thread process alone: {2 * parallel / unet_alone[1]:.2f}x", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        alone = lora_seconds(args.steps, 2, folder + "/alone")
        context = torch.multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            # Both workers import torch before the clock starts, as the run's pool has by the time it trains.
            list(pool.map(abs, range(2)))
            started = time.perf_counter()
            jobs = [pool.submit(lora_seconds, args.steps, 1, f"{folder}/worker{i}") for i in range(2)]
            each = [job.result() for job in jobs]
            side_by_side = time.perf_counter() - started
    one = args.steps * BATCH / alone
    two = 2 * args.steps * BATCH / side_by_side
    print(f"lora stage, {args.steps} steps of batch {BATCH}: one 2-thread process {one:.1f} samples/s; two 1-thread "
          f"processes side by side {two:.1f} samples/s together ({each[0]:.1f} s and {each[1]:.1f} s each, "
          f"{side_by_side:.1f} s wall clock): {two / one:.2f}x", flush=True)


if __name__ == "__main__":
    main()
