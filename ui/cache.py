"""Gradio's cache folder, swept by age: every file a request put there goes once it is older than the set age.

Gradio's own `delete_cache` is not enough. It deletes only the paths listed in `blocks.temp_file_sets`
(`delete_files_created_by_app`, gradio/route_utils.py), and a path is listed in the set of the component that moved it
to the cache (`Block.async_move_resource_to_block_cache`, gradio/blocks.py). Once an event hands an output an update
(`gr.update(...)`, `gr.skip()`, a component), Gradio keeps a per-session copy of that component, made with
`render=False` (`postprocess_data`, gradio/blocks.py: `state[block._id] = block.__class__(**kwargs)`), and every later
file for that output in that session goes through the copy. Only `Block.render` adds a component's set to
`temp_file_sets`, so those files are never listed: here, every result, control map and GIF that comes after a
preview or a progress tick (`gr.skip()`) of the same output, which is most of them since the generating handlers
stream; in a browser also everything after a session's first run (the page updates the outputs' labels and visibility
after each run). Gradio also leaves each file's folder behind, empty.

So a daemon thread walks the folder itself: it ages entries by ctime, as Gradio does (a copy made with `copy2` keeps
its source's old mtime; ctime is when it reached the cache, and Gradio touches a cached file it hands out again),
keeps what Gradio keeps for the app itself (examples, default values: `keep_in_cache`), never follows a symlink and
never leaves the folder.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

log = logging.getLogger(__name__)

# Gradio's own check runs every min(age, 600) s; the sweep keeps the same pace, so a file lives at most age + 10 min.
MAX_SWEEP_INTERVAL_S = 600


def sweep_folder(root: Path, age_s: float, keep: Collection[str] = (), now: float | None = None) -> int:
    """Removes the files (and links) under `root` changed more than `age_s` ago, except `keep`, then the folders
    under it that are empty and as old; returns how many entries went.

    A folder's ctime moves when an entry is added or removed, so a folder emptied by this sweep goes one age later:
    Gradio makes a file's folder before it writes the file, and an old, empty folder is what it may be reusing.
    """
    cutoff = (time.time() if now is None else now) - age_s
    removed = 0
    # Bottom-up, so a folder is tried after its contents; `followlinks=False`: a link to a folder is not entered.
    for folder, subfolders, files in os.walk(root, topdown=False, followlinks=False):
        links = [name for name in subfolders if os.path.islink(os.path.join(folder, name))]
        for name in (*files, *links):  # removing a link removes the link, never what it points to
            removed += _remove_if_old(os.path.join(folder, name), cutoff, keep, os.unlink)
        if folder != str(root):
            removed += _remove_if_old(folder, cutoff, keep, os.rmdir)  # fails on a folder that is not empty
    return removed


def _remove_if_old(path: str, cutoff: float, keep: Collection[str], remove: Callable[[str], None]) -> int:
    if path in keep:
        return 0
    try:
        if os.lstat(path).st_ctime >= cutoff:
            return 0
        remove(path)
    except OSError:  # gone already (Gradio's own sweep), not empty, or not ours to remove
        return 0
    return 1


def kept_by_app(demo: gr.Blocks) -> set[str]:
    """The files Gradio itself never deletes while the app runs: examples and default values."""
    blocks = list(demo.blocks.values())  # a copy: a render may add blocks meanwhile
    return {os.path.realpath(path) for block in blocks for path in getattr(block, "keep_in_cache", ())}


def start_cache_sweeper(demo: gr.Blocks, age_s: int, folder: str | None = None) -> threading.Thread | None:
    """Sweeps `folder` (Gradio's cache: `GRADIO_TEMP_DIR` or its default) every min(age, 10 min) while `demo` is
    served; the thread ends once the app is gone. An age of 0 turns it off, as Gradio's own
    `delete_cache` does."""
    if age_s <= 0:
        return None
    root = Path(folder or get_upload_folder()).resolve()  # the paths Gradio writes are resolved the same way
    if root in (Path(root.anchor), Path.home()):  # a mistaken GRADIO_TEMP_DIR must not turn into a disk wipe
        log.warning("GRADIO_TEMP_DIR is %s: the cache is not swept", root)
        return None
    interval = min(age_s, MAX_SWEEP_INTERVAL_S)
    # A weak reference: the thread must not keep a closed app (and its models) alive.
    thread = threading.Thread(
        target=_sweep_while_served, args=(weakref.ref(demo), root, age_s, interval), name="cache-sweeper", daemon=True
    )
    thread.start()
    return thread


def _sweep_while_served(app: weakref.ref, root: Path, age_s: int, interval: float) -> None:
    while (demo := app()) is not None:
        if demo.is_running:  # not before launch, nor after close (a test's closed app may linger)
            try:
                removed = sweep_folder(root, age_s, kept_by_app(demo))
                log.debug("cache sweep: %d entries older than %d s removed from %s", removed, age_s, root)
            except Exception:  # a failed sweep must not end the thread: the next one may work
                log.exception("cache sweep of %s failed", root)
        del demo  # no strong reference while sleeping
        time.sleep(interval)
