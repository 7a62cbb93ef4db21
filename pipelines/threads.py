"""How many threads torch uses on the CPU, chosen from the machine and the model unless a setting says.

Why: on a 2-core machine (`python scripts/benchmark_served.py`), one `/text2img` round trip on the embedded model
(1.7 M UNet parameters, 16x16 latents) took 2.3x the bare diffusers call (one thread, same machine load) with one
torch thread per core, and 1.34-1.39x with one thread: each tiny operation split across cores costs more in hand-offs
than it gains, and Gradio's own threads want the cores too. A real-size UNet (860 M parameters) has enough work in
each operation to gain from every core (`scripts/benchmark_real_size.py`).
"""

from __future__ import annotations

import os

import torch

# Below this many UNet parameters an operation is too small to share between cores with profit.
SMALL_MODEL_PARAMETERS = 50_000_000


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU limit included), not the machine's total."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def is_small(unet: torch.nn.Module) -> bool:
    """Too little work in each operation for the per-operation costs (thread hand-offs, Python) to hide."""
    return sum(parameter.numel() for parameter in unet.parameters()) < SMALL_MODEL_PARAMETERS


def threads_for(small: bool, cores: int) -> int:
    return 1 if small else cores


def set_cpu_threads(unet: torch.nn.Module, requested: int | None) -> int:
    """Set torch's intra-op threads for serving `unet` on the CPU; returns the number chosen."""
    threads = requested or threads_for(is_small(unet), usable_cores())
    torch.set_num_threads(threads)
    return threads
