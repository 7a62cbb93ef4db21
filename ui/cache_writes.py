"""Images reach Gradio's cache whole or not at all, so a crowd never downloads half an image.

Gradio names a cached image by the hash of its bytes and writes it with `Path.write_bytes`, which empties the file
first (`save_pil_to_cache`, gradio/processing_utils.py; the Gallery and Image components call it). Two requests that
make the same image (an example with its fixed seed, the same control map) write the same path, and whoever downloads
it meanwhile gets a short file: under 40 clients one download in about 120 failed with "peer closed connection without
sending complete message body (received 0 bytes, expected 4210)", and reading such a file while it is written again
in a loop came back short in half the reads. Gradio's own `save_file_to_cache` already writes under another name and
renames; `install` gives images the same: a cached image that exists is kept (same name, same bytes) and touched, as
Gradio touches a file it hands out again; a new one appears whole, through `os.replace`.

This replaces a function of Gradio's (6.31) that its components look up on the module at each call.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from gradio import processing_utils
from PIL import Image


def save_pil_to_cache(img: Image.Image, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    """Gradio's `save_pil_to_cache`, same path, written atomically."""
    return save_bytes_to_cache(processing_utils.encode_pil_to_bytes(img, format), f"{name}.{format}", cache_dir)


def save_bytes_to_cache(data: bytes, file_name: str, cache_dir: str) -> str:
    """Gradio's `save_bytes_to_cache` for a file name with its extension (the Explore tab's GIF), same path, written
    atomically: two timelines with the same settings make the same GIF, and under 40 clients one download of it
    came back short."""
    folder = Path(cache_dir) / processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    path = (folder / Path(file_name).name).resolve()
    if path.exists():
        try:
            os.utime(path)  # the cache is swept by age (ctime): a file handed out again starts a new life
        except OSError:
            pass
        return str(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return str(path)


def install() -> None:
    processing_utils.save_pil_to_cache = save_pil_to_cache
