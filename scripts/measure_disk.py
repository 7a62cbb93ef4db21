"""Disk used by the served app's files before, during and after many requests (grids included).

    HF_HUB_OFFLINE=1 python scripts/measure_disk.py [--requests 200] [--age 20]

Starts `python app.py` (the embedded model) with its own Gradio cache folder and STUDIO_CACHE_AGE_S=--age, sends
the requests through gradio_client (text, edge with an upload, and every tenth a LoRA grid), then prints the files
and bytes in the cache and in the system temp folder's studio-lora-grid-* folders, and again once the age has passed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gradio_client import Client, handle_file

from embedded.app_process import running_app

ROOT = Path(__file__).resolve().parents[1]


def folder_usage(folder: Path) -> tuple[int, int]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return len(files), sum(path.stat().st_size for path in files)


def stray_grid_folders() -> int:
    return len(list(Path(tempfile.gettempdir()).glob("studio-lora-grid-*")))


def send(client: Client, index: int, edge_map: str) -> None:
    if index % 10 == 9:
        client.predict(lora_names=["stripes.safetensors"], weights="1", seeds="1, 2", prompt="a red circle",
                       steps=4, api_name="/lora_grid")
    elif index % 2:
        client.predict(image=handle_file(edge_map), preprocessor="none", prompt="a white circle", seed=index,
                       steps=4, api_name="/edge2img")
    else:
        client.predict(prompt="a red circle on a blue background", seed=index, steps=4, api_name="/text2img")


def report(label: str, cache: Path) -> None:
    files, size = folder_usage(cache)
    print(f"{label}: {files} files, {size / 1024:.0f} KiB in Gradio's cache; "
          f"{stray_grid_folders()} studio-lora-grid-* folders in {tempfile.gettempdir()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--age", type=int, default=20, help="STUDIO_CACHE_AGE_S for the run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "gradio-cache"
        settings = dict(GRADIO_TEMP_DIR=str(cache), STUDIO_CACHE_AGE_S=str(args.age))
        with running_app(Path(scratch) / "app.log", **settings) as (_, url):
            client = Client(url, verbose=False)
            report("after start", cache)
            started = time.monotonic()
            for index in range(args.requests):
                send(client, index, str(ROOT / "examples/embedded/edge_1_map.png"))
            print(f"{args.requests} requests in {time.monotonic() - started:.0f} s", flush=True)
            report("right after the requests", cache)
            time.sleep(2 * args.age + 5)
            report(f"{2 * args.age + 5} s later (age {args.age} s)", cache)


if __name__ == "__main__":
    main()
