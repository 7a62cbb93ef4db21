"""The hashes other tools know a LoRA file by, computed once per file and kept while the file is unchanged.

- **A1111's LoRA hash** (its built-in Lora extension, written as `Lora hashes: "name: hash, ..."`): the first 12
  hex digits of the SHA-256 of the tensor bytes, everything after the safetensors header (kohya's
  `addnet_hash_safetensors`, copied into A1111's `modules/hashes.py`); where the file's metadata records kohya's
  `sshs_model_hash`, A1111 takes that instead of hashing (`extensions-builtin/Lora/network.py`, `NetworkOnDisk`).
- **Civitai's AutoV3**: the same tensor-bytes SHA-256, stored 12 digits long, "the width A1111 writes" (civitai's
  scan-result handler), so an A1111 LoRA hash is an AutoV3 hash.
- **Civitai's AutoV2**: the first 10 hex digits of the whole file's SHA-256 (civitai/model-scanner `HashTask`).

Digits are lower case, as A1111 writes them; Civitai shows them in capitals and compares without case.

A file is read once, in blocks: hashlib releases the GIL for blocks this large, so hashing a large file does not stall
the server's other threads. The hashes are kept in memory by path, size and modification time, for a bounded number
of files.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipelines.errors import StudioError
from pipelines.lora.safety import DEFAULT_MAX_FILE_BYTES, read_header
from pipelines.lora.sources import LoraLibrary

A1111_DIGITS = 12
AUTOV2_DIGITS = 10
AUTOV3_DIGITS = 12
# The shortest hash matched to a file: AutoV2's width. Shorter prefixes (A1111's old 8-digit model hash) are another
# hash altogether.
MIN_MATCHED_DIGITS = AUTOV2_DIGITS
KOHYA_HASH_KEY = "sshs_model_hash"  # what kohya's trainer records of the tensor bytes when it saves the file
BLOCK_BYTES = 1 << 20
# Enough for a trainer's whole LoRA folder (a few hundred bytes each): PNG info looks a missing hash up in every file.
MAX_CACHED_FILES = 4096
# What one lookup reads of files not hashed yet: a PNG naming a hash no file has must not make one request read a
# whole folder of LoRAs (tens of GB on a trainer's disk). Files are also hashed as images use them.
MAX_SEARCH_BYTES = 2 << 30
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class LoraHashes:
    file_sha256: str  # of the whole file
    tensor_sha256: str  # of the bytes after the safetensors header
    recorded: str | None = None  # the file's own `sshs_model_hash`, when it records one

    @property
    def a1111(self) -> str:
        return (self.recorded or self.tensor_sha256)[:A1111_DIGITS]

    @property
    def autov2(self) -> str:
        return self.file_sha256[:AUTOV2_DIGITS]

    @property
    def autov3(self) -> str:
        return self.tensor_sha256[:AUTOV3_DIGITS]

    def prefixes(self, digits: int) -> set[str]:
        """Every hash of this file cut to `digits`: what a shared image may name it by at that width."""
        return {full[:digits] for full in (self.file_sha256, self.tensor_sha256, self.recorded) if full}


_cache: OrderedDict[Path, tuple[tuple[int, int], LoraHashes]] = OrderedDict()  # least recently used first
_lock = threading.Lock()


def short_hash(text: str) -> str | None:
    """`text` as a hash that can be matched to a file (lower case, 10 to 64 hex digits); None if it is not one."""
    digits = text.strip().lower()
    if MIN_MATCHED_DIGITS <= len(digits) <= 64 and _HEX.fullmatch(digits):
        return digits
    return None


def lora_hashes(path: str | Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> LoraHashes:
    """The hashes of the LoRA file at `path`, read once while its size and modification time stay the same.

    The header is checked first (`safety.read_header`), so a damaged file or one past `max_file_bytes` is refused
    with the reason before any hashing.
    """
    path = Path(path).resolve()
    stat = path.stat()
    stamp = (stat.st_size, stat.st_mtime_ns)
    with _lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == stamp:
            _cache.move_to_end(path)
            return cached[1]
    header = read_header(path, max_file_bytes)
    recorded = short_hash(header.metadata.get(KOHYA_HASH_KEY, ""))
    file_sha256, tensor_sha256 = _digests(path)
    hashes = LoraHashes(file_sha256, tensor_sha256, recorded)
    with _lock:
        _cache[path] = (stamp, hashes)
        _cache.move_to_end(path)
        while len(_cache) > MAX_CACHED_FILES:
            _cache.popitem(last=False)
    return hashes


def content_digest(path: str | Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> str:
    """What a LoRA file holds, to tell one LoRA under two names: its header canonicalised (writers order its JSON at
    random) and its tensor bytes, whose hash `lora_hashes` reads once per file."""
    tensors = lora_hashes(path, max_file_bytes).tensor_sha256  # the header is checked here first
    with Path(path).open("rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode() + tensors.encode()).hexdigest()


def find_local(
    library: LoraLibrary,
    wanted: Collection[str],
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    first: Iterable[str] = (),
) -> tuple[dict[str, str], int]:
    """For each short hash in `wanted` (as `short_hash` gives them) that a file of the LoRA folder has, that file's
    name; and how many files were left unsearched. The files named in `first` (the names an image gives, usually
    right) are hashed first, then the rest of the folder until every hash is found, reading at most
    MAX_SEARCH_BYTES of files not hashed yet; a file that is not a readable LoRA within `max_file_bytes` is passed
    over, as the studio could not load it either."""
    missing = set(wanted)
    found: dict[str, str] = {}
    widths = {len(digits) for digits in missing}
    left, unsearched = MAX_SEARCH_BYTES, 0
    for name, path in _folder_files(library, first):
        if not missing:
            break
        if not is_hashed(path):
            size = path.stat().st_size
            if size > left:
                unsearched += 1
                continue
            left -= size
        try:
            hashes = lora_hashes(path, max_file_bytes)
        except (StudioError, OSError):
            continue
        for digits in widths:
            for prefix in hashes.prefixes(digits) & missing:
                found[prefix] = name
                missing.discard(prefix)
    return found, unsearched


def is_hashed(path: Path) -> bool:
    """Whether the file's hashes are known for its present size and modification time."""
    stat = path.stat()
    with _lock:
        cached = _cache.get(path.resolve())
    return cached is not None and cached[0] == (stat.st_size, stat.st_mtime_ns)


def local_name(library: LoraLibrary, name: str) -> str | None:
    """The LoRA folder's name for the file `name` means there (`stripes` is `stripes.safetensors`); None if none."""
    try:
        return library.path(name).relative_to(library.folder.resolve()).as_posix()
    except StudioError:
        return None


def _folder_files(library: LoraLibrary, first: Iterable[str]) -> Iterator[tuple[str, Path]]:
    named = [local for local in (local_name(library, name) for name in first) if local]
    for name in dict.fromkeys(named + library.names()):
        try:
            yield name, library.path(name)
        except StudioError:
            continue


def _digests(path: Path) -> tuple[str, str]:
    """SHA-256 of the whole file and of its bytes after the header (8 bytes of length, then that much JSON)."""
    whole, tensors = hashlib.sha256(), hashlib.sha256()
    buffer = bytearray(BLOCK_BYTES)
    view = memoryview(buffer)
    with path.open("rb") as handle:
        length = handle.read(8)
        whole.update(length)
        _feed(handle, int.from_bytes(length, "little"), (whole,), view)
        _feed(handle, None, (whole, tensors), view)
    return whole.hexdigest(), tensors.hexdigest()


def _feed(handle: BinaryIO, count: int | None, digests: tuple, view: memoryview) -> None:
    """`count` more bytes of `handle` (None: up to its end) into every one of `digests`, a block at a time."""
    left = count
    while left is None or left > 0:
        size = handle.readinto(view if left is None or left >= len(view) else view[:left])
        if not size:
            return
        for digest in digests:
            digest.update(view[:size])
        if left is not None:
            left -= size
