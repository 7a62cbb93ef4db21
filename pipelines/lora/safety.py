"""Checks that run before any LoRA byte is turned into a tensor.

Only `.safetensors` files are read: pickle-based files (`.ckpt`, `.pt`, `.bin`) can run code when they
are opened, so they are refused by name and never opened. A safetensors header is plain JSON; it is
checked (size, dtypes, shapes, offsets) before the tensors are loaded, so a crafted file cannot make
the loader allocate huge tensors or read past the end of the file.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import StudioError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
MAX_TENSORS = 20_000
MAX_TENSOR_DIMS = 4  # LoRA factors are matrices or conv kernels
DEFAULT_MAX_FILE_BYTES = 2048 * 2**20
DEFAULT_MAX_UPLOAD_BYTES = 512 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    file_bytes: int = 0


def check_lora_file_name(name: str) -> None:
    """Refuse anything but `.safetensors` by its name, before the file is opened."""
    suffix = Path(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise StudioError(
            f"{Path(name).name!r} is a pickle-based PyTorch file ({suffix}). Such files can run code when they "
            "are opened, so the studio never loads them. Use the .safetensors version of this LoRA (most "
            "pages offer one) or convert it on your own machine."
        )
    if suffix != ".safetensors":
        raise StudioError(
            f"{Path(name).name!r} is not a .safetensors file; LoRAs are only read from .safetensors files."
        )


def contained_path(folder: str | Path, name: str) -> Path:
    """`folder/name`, refusing names that climb out of `folder` (`..`, absolute paths, symlinks out)."""
    root = Path(folder).resolve()
    candidate = (root / name).resolve()
    if Path(name).is_absolute() or not candidate.is_relative_to(root) or candidate == root:
        raise StudioError(f"The LoRA name {name!r} points outside the LoRA folder; use a file name from the list.")
    return candidate


def read_header(path: str | Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> SafetensorsHeader:
    """Read and check the JSON header of a safetensors file without reading any tensor data."""
    path = Path(path)
    name = path.name
    check_lora_file_name(name)
    if not path.is_file():
        raise StudioError(f"The LoRA file {name!r} does not exist.")
    file_bytes = path.stat().st_size
    if file_bytes > max_file_bytes:
        raise StudioError(
            f"The LoRA file {name!r} is {file_bytes / 2**20:,.0f} MiB; the limit is {max_file_bytes / 2**20:,.0f} MiB."
        )
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise StudioError(f"{name!r} is too short to be a safetensors file.")
        (header_bytes,) = struct.unpack("<Q", prefix)
        if header_bytes > MAX_HEADER_BYTES or 8 + header_bytes > file_bytes:
            raise StudioError(f"{name!r} is not a valid safetensors file: its header size is impossible.")
        raw = handle.read(header_bytes)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StudioError(f"{name!r} is not a valid safetensors file: its header is not JSON.") from None
    if not isinstance(header, dict):
        raise StudioError(f"{name!r} is not a valid safetensors file: its header is not a JSON object.")
    metadata = _check_metadata(name, header.pop("__metadata__", None) or {})
    tensors = _check_tensors(name, header, data_bytes=file_bytes - 8 - header_bytes)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, file_bytes=file_bytes)


def _check_metadata(name: str, metadata: object) -> dict[str, str]:
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise StudioError(f"{name!r} is not a valid safetensors file: its metadata must map text to text.")
    return metadata


def _check_tensors(name: str, header: dict, data_bytes: int) -> dict[str, TensorInfo]:
    if not header:
        raise StudioError(f"{name!r} holds no tensors, so it is not a LoRA.")
    if len(header) > MAX_TENSORS:
        raise StudioError(f"{name!r} declares {len(header):,} tensors; a LoRA has at most {MAX_TENSORS:,}.")
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for key, entry in header.items():
        info, span = _check_entry(name, key, entry)
        tensors[key] = info
        spans.append(span)
    spans.sort()
    position = 0
    for start, end in spans:
        if start != position:
            raise StudioError(f"{name!r} is not a valid safetensors file: its tensors overlap or leave gaps.")
        position = end
    if position != data_bytes:
        raise StudioError(
            f"{name!r} is damaged: its header declares {position:,} bytes of tensors but the file holds {data_bytes:,} "
            "(a truncated download?)."
        )
    return tensors


def _check_entry(name: str, key: str, entry: object) -> tuple[TensorInfo, tuple[int, int]]:
    if not isinstance(entry, dict):
        raise StudioError(f"{name!r} is not a valid safetensors file: the entry for {key!r} is malformed.")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise StudioError(
            f"{name!r}: tensor {key!r} has dtype {dtype!r}; LoRA weights must be one of {', '.join(DTYPE_BYTES)}."
        )
    if not (isinstance(shape, list) and len(shape) <= MAX_TENSOR_DIMS and all(_is_size(n) for n in shape)):
        raise StudioError(f"{name!r}: tensor {key!r} has an impossible shape {shape!r} for a LoRA.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(n) for n in offsets)):
        raise StudioError(f"{name!r} is not a valid safetensors file: the offsets of {key!r} are malformed.")
    info = TensorInfo(dtype=dtype, shape=tuple(shape))
    start, end = offsets
    if end - start != info.nbytes:
        raise StudioError(f"{name!r}: tensor {key!r} declares shape {shape} but {end - start:,} bytes of data.")
    return info, (start, end)


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
