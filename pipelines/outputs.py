"""The output folder: every image, control map and grid the page makes, kept on disk with its parameters.

A person running the studio on their own machine would otherwise lose each image when Gradio's cache drops it
(`STUDIO_CACHE_AGE_S`). The layout follows AUTOMATIC1111's (`outputs/txt2img-images/<date>/00012-1234567.png`), one
folder for every mode, the mode in the name:

    <folder>/2026-12-07/00012-text-1234567.png          an image: running number, mode, seed
    <folder>/2026-12-07/00012-pose-1234567-control.png  the control map of that run, with its first image's number
    <folder>/2026-12-07/00013-pose-grid.png             a LoRA lab grid, in the mode of its base request

Each PNG carries its A1111 `parameters` text chunk (a grid: each cell's too), so the PNG info tab, A1111 and
other tools read them back. The number runs on within a date folder across restarts (the highest number there, plus
one). A file is written under a temporary name and hard-linked into place, which fails rather than overwrite when
another process (a ZeroGPU worker) took the same name; a lock keeps this process's numbers in order.

Saving never costs the person their result: `keep` and `keep_grid` turn a failure (a full disk, a folder that went
away) into a note beside the images, which are still shown and still downloadable.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

from PIL import Image

from pipelines.metadata import save_png
from pipelines.request import GenerationResult

logger = logging.getLogger(__name__)

NUMBER_DIGITS = 5
# The History tab lists at most this many of the folder's newest files: the listing reads only their names.
RECENT_FILES = 24
_DATE_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")
_NUMBERED = re.compile(r"(\d+)-[^/\\]*\.png")


class OutputFolder:
    """Saves results under `root` (None: nothing is saved); safe to share between request threads."""

    def __init__(self, root: str | os.PathLike | None, today: Callable[[], date] = date.today) -> None:
        self.root = Path(root).expanduser().resolve() if root else None
        self._today = today
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def save(self, result: GenerationResult) -> list[Path]:
        """Write each image and the control map (if any); returns their paths. Raises OSError when it cannot."""
        mode = result.request.mode
        named = [(image, f"{mode}-{seed}", False) for image, seed in zip(result.images, result.seeds, strict=True)]
        if result.control_map is not None:
            # The map carries the run's parameters too, so PNG info on it names the run it was made for.
            control = result.control_map.copy()
            control.info["parameters"] = result.parameters[0]
            named.append((control, f"{mode}-{result.seeds[0]}-control", True))
        return self._write(named)

    def save_grid(self, image: Image.Image, mode: str) -> Path:
        """Write a LoRA lab grid (its text entries, every cell's parameters, included). Raises OSError."""
        return self._write([(image, f"{mode}-grid", False)])[0]

    def keep(self, result: GenerationResult) -> None:
        """`save`, then a note in `result.notes`: where the files went, or why they did not."""
        if self.enabled:
            result.notes.append(self._saved_note(lambda: self.save(result)))

    def keep_grid(self, image: Image.Image, mode: str, notes: list[str]) -> None:
        if self.enabled:
            notes.append(self._saved_note(lambda: [self.save_grid(image, mode)]))

    def recent(self, limit: int = RECENT_FILES) -> list[Path]:
        """The folder's newest files, newest first: the latest date folders, highest number first."""
        found: list[Path] = []
        for folder in self._date_folders():
            numbered = sorted(_numbered_files(folder), key=lambda item: (item[0], item[1].name), reverse=True)
            found += [path for _, path in numbered]
            if len(found) >= limit:
                break
        return found[:limit]

    def shown_name(self, path: Path) -> str:
        """`2026-12-07/00012-text-42.png`: the name within the folder, which says nothing of the server's paths."""
        return f"{path.parent.name}/{path.name}"

    # Writing

    def _write(self, named: list[tuple[Image.Image, str, bool]]) -> list[Path]:
        """Each (image, name, takes the first file's number) as `<number>-<name>.png` in today's folder."""
        assert self.root is not None
        folder = self.root / self._today().isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        staged: list[tuple[Path, str, bool]] = []
        placed: list[Path] = []
        try:
            # Encoding is the slow part: done before the lock, into hidden files the listing skips.
            for image, name, shares in named:
                staged.append((self._stage(folder, image), _safe(name), shares))
            with self._lock:
                number = _highest_number(folder) + 1
                for temporary, name, shares in staged:
                    start = _number_of(placed[0]) if shares and placed else number
                    path, used = _place(temporary, folder, start, name)
                    placed.append(path)
                    number = number if shares else used + 1
        finally:
            for temporary, _, _ in staged:
                temporary.unlink(missing_ok=True)
        return placed

    def _stage(self, folder: Path, image: Image.Image) -> Path:
        temporary = folder / f".{uuid.uuid4().hex}.png.part"
        try:
            save_png(image, temporary)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return temporary

    def _saved_note(self, save: Callable[[], list[Path]]) -> str:
        try:
            paths = save()
        except Exception as error:  # a full disk or a missing folder must not cost the person the result shown
            logger.warning("Could not save to the output folder %s: %r", self.root, error)
            reason = getattr(error, "strerror", None) or type(error).__name__
            return f"Not saved to the output folder ({reason}): download what you want to keep."
        return f"Saved to the output folder: {', '.join(self.shown_name(path) for path in paths)}."

    # Reading

    def _date_folders(self) -> Iterator[Path]:
        if self.root is None or not self.root.is_dir():
            return iter(())
        folders = [entry for entry in self.root.iterdir() if _DATE_FOLDER.fullmatch(entry.name) and entry.is_dir()]
        return iter(sorted(folders, key=lambda folder: folder.name, reverse=True))


def _place(temporary: Path, folder: Path, number: int, name: str) -> tuple[Path, int]:
    """Link `temporary` into `folder` as `<number>-<name>.png`, or the next free number; returns the path and number.

    A hard link is atomic and never replaces a file; where the file system has none, a rename does (under this
    process's lock, which then is the only guard)."""
    while True:
        path = folder / f"{number:0{NUMBER_DIGITS}d}-{name}.png"
        try:
            os.link(temporary, path)
            return path, number
        except FileExistsError:
            number += 1
        except OSError:  # no hard links here (some network or FAT file systems)
            if not path.exists():
                os.replace(temporary, path)
                return path, number
            number += 1


def _numbered_files(folder: Path) -> Iterator[tuple[int, Path]]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _NUMBERED.fullmatch(entry.name)
        if match and entry.is_file():
            yield int(match.group(1)), Path(entry.path)


def _highest_number(folder: Path) -> int:
    return max((number for number, _ in _numbered_files(folder)), default=-1)


def _safe(name: str) -> str:
    return re.sub(r"[^\w-]", "_", name)  # a mode name is one of the studio's, but a path separator never passes


def _number_of(path: Path) -> int:
    return int(path.name.split("-", 1)[0])
