"""LoRA switching benchmark: switch time (`set_adapters`) against a fresh load, resident memory over
50 switches, and the render time of a comparison grid.

    python scripts/benchmark_lora.py --tiny              # a tiny SD1.5-architecture model built on the fly
    python scripts/benchmark_lora.py --model models/embedded [--lora-dir models/loras]

Without LoRA files of the model's own (or with --synthetic), random LoRAs that fit the model are written
to a temporary folder: switching cost depends on the number and size of adapter layers, not on what
they learned.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from embedded.synthetic_loras import kohya_metadata, lora_tensors, write_lora  # noqa: E402
from pipelines.grid import render_grid  # noqa: E402
from pipelines.request import GenerationRequest, GridRequest, LoraChoice  # noqa: E402
from pipelines.settings import EMBEDDED_LORAS, EMBEDDED_MODEL, Settings  # noqa: E402


def resident_mib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024


def tiny_model(folder: Path) -> Path:
    # The test suite's own tiny model, so the benchmark and the tests measure the same thing.
    from embedded.tiny_models import build_tiny_pipeline

    build_tiny_pipeline(folder)
    return folder


def lora_folder(studio, requested: str | None, synthetic: bool, count: int, scratch: Path) -> Path:
    if requested and not synthetic and any(Path(requested).glob("*.safetensors")):
        return Path(requested)
    folder = scratch / "loras"
    for index in range(count):
        layout = "kohya" if index % 2 == 0 else "peft"
        tensors = lora_tensors(studio.base, layout=layout, seed=index, rank=8)
        write_lora(folder / f"style{index}.safetensors", tensors, kohya_metadata(title=f"style{index}"))
    return folder


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="diffusers folder (default: models/embedded)")
    parser.add_argument("--lora-dir", default=None)
    parser.add_argument("--tiny", action="store_true", help="benchmark a tiny model built on the fly")
    parser.add_argument("--synthetic", action="store_true", help="use random LoRAs even if the folder has some")
    parser.add_argument("--loras", type=int, default=3)
    parser.add_argument("--switches", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # transformers 5 reports other adapters' weights as "MISSING" on every text-encoder load (cosmetic).
    transformers.utils.logging.set_verbosity_error()
    from pipelines.studio import Studio

    scratch = Path(tempfile.mkdtemp(prefix="lora-bench-"))
    model = str(tiny_model(scratch / "tiny")) if args.tiny else args.model or str(EMBEDDED_MODEL)
    if not Path(model).is_dir():
        raise SystemExit(f"No model folder at {model}; use --tiny or --model.")
    lora_dir = args.lora_dir or (None if args.tiny else str(EMBEDDED_LORAS))
    studio = Studio(Settings(model=model, lora_dir=str(scratch / "none"), device="cpu"))
    folder = lora_folder(studio, lora_dir, args.synthetic, args.loras, scratch)
    studio.loras.library.folder = folder
    names = studio.loras.library.names()[: args.loras]
    print(f"model: {model} (family {studio.model.family}); LoRAs from {folder}: {', '.join(names)}")
    print(f"torch threads: {torch.get_num_threads()}")

    fresh = [timed(lambda name=name: studio.loras.activate([LoraChoice(name, 1.0)])) for name in names]
    raw_path = folder / names[0]
    raw = timed(lambda: studio.base.load_lora_weights(str(raw_path), adapter_name="bench_raw"))
    studio.base.delete_adapters("bench_raw")
    sets = [[LoraChoice(name, 0.5 + 0.25 * (i % 3))] for i, name in enumerate(names)]
    sets.append([LoraChoice(name, 0.6) for name in names])
    sets.append([])
    for choices in sets:  # warm every path once
        studio.loras.activate(choices)
    rss_before = resident_mib()
    switches = [timed(lambda i=i: studio.loras.activate(sets[i % len(sets)])) for i in range(args.switches)]
    rss_after = resident_mib()
    growth = 100 * (rss_after - rss_before) / rss_before
    print(
        f"fresh load (first activate, read + check + map + inject), median of {len(fresh)}: "
        f"{statistics.median(fresh) * 1000:.1f} ms"
    )
    print(f"fresh load with plain diffusers load_lora_weights: {raw * 1000:.1f} ms")
    print(
        f"switch (activate -> set_adapters / disable_lora), median of {len(switches)}: "
        f"{statistics.median(switches) * 1000:.2f} ms (max {max(switches) * 1000:.2f} ms)"
    )
    print(f"speed-up of a switch over a fresh load: {statistics.median(fresh) / statistics.median(switches):.0f}x")
    print(
        f"resident memory across {len(switches)} switches: {rss_before:.1f} MiB -> {rss_after:.1f} MiB ({growth:+.2f}%)"
    )
    print(f"adapters kept loaded: {len(studio.loras.loaded)} ({studio.loras.loaded_bytes / 2**20:.2f} MiB)")

    grid = GridRequest(GenerationRequest(prompt="a red circle on a blue background"), tuple(names[:2]), "0, 0.5, 1",
                       "1, 2")
    result = render_grid(studio, grid)
    rows = len(result.cells) // 2
    print(
        f"grid: {rows} rows x 2 seeds = {len(result.cells)} images at {result.cells[0].image.size[0]} px, "
        f"{studio.model.default_steps} steps: {result.seconds:.1f} s ({result.seconds / len(result.cells):.2f} s "
        f"an image)"
    )


if __name__ == "__main__":
    main()
