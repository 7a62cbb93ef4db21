"""Where LoRA files come from: the local LoRA folder, uploads (while Gradio's cache keeps them), and the Hub.

Every source ends in a local `.safetensors` path whose header has been checked (see `safety.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.errors import StudioError
from pipelines.lora.formats import cross_attention_width, family_from_shapes, family_label
from pipelines.lora.metadata import describe_metadata, family_from_metadata
from pipelines.lora.runs import TrainingPoint, training_point
from pipelines.lora.safety import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES,
    check_lora_file_name,
    contained_path,
    read_header,
)

if TYPE_CHECKING:
    from huggingface_hub import DryRunFileInfo

HUB_PREFIX = "hub:"
PREFERRED_HUB_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class LoraEntry:
    """One LoRA as the person sees it in the list."""

    name: str  # what goes into LoraChoice.name
    size_bytes: int
    family: str | None
    trigger_words: tuple[str, ...]
    title: str | None
    source: str  # "folder", "upload" or "hub"
    fields: dict[str, str] = field(default_factory=dict)
    point: TrainingPoint = TrainingPoint("")  # its training run, and its epoch or step in it where it says

    @property
    def size_label(self) -> str:
        return f"{self.size_bytes / 2**20:.1f} MiB" if self.size_bytes >= 2**20 else f"{self.size_bytes / 1024:.0f} KiB"

    @property
    def family_label(self) -> str:
        return family_label(self.family) if self.family else "unknown"


def describe_file(path: Path, name: str, source: str, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> LoraEntry:
    """Read name, size, family and trigger words from the header alone."""
    header = read_header(path, max_file_bytes)
    metadata = describe_metadata(header)
    shapes = {key: info.shape for key, info in header.tensors.items()}
    return LoraEntry(
        name=name,
        size_bytes=header.file_bytes,
        family=_family(shapes, header.metadata),
        trigger_words=metadata.trigger_words,
        title=metadata.title,
        source=source,
        fields=metadata.fields,
        point=training_point(name, header.metadata),
    )


def _family(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str]) -> str | None:
    width = cross_attention_width(shapes)
    known = family_from_shapes(shapes) or family_from_metadata(metadata)
    if known or width is None:
        return known
    return f"other ({width}-wide cross-attention)"


class LoraLibrary:
    """The local LoRA folder (`--lora-dir`); names are paths relative to it."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        root = self.folder.resolve()
        files = (path for path in self.folder.rglob("*.safetensors") if path.resolve().is_relative_to(root))
        return sorted(str(path.relative_to(self.folder)) for path in files if path.is_file())

    def path(self, name: str) -> Path:
        if not Path(name).suffix:  # A1111 style: <lora:stripes:1> names stripes.safetensors
            name += ".safetensors"
        check_lora_file_name(name)
        path = contained_path(self.folder, name)
        if not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise StudioError(f"There is no LoRA {name!r} in the LoRA folder. Available: {known}.")
        return path


class UploadStore:
    """Uploaded LoRAs, read where Gradio put them: its cache, which removes them after `STUDIO_CACHE_AGE_S`.

    Nothing is copied, so an upload lives exactly as long as Gradio's cache keeps it; the store only remembers
    which paths arrived as uploads, so no other absolute path is ever read as a LoRA.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
        self.max_bytes = max_bytes
        self._arrived: set[Path] = set()

    def add(self, uploaded: str | Path) -> Path:
        """Check an uploaded file and remember it; returns the path to use as `LoraChoice.name`."""
        self.check(uploaded)
        self._arrived = {path for path in self._arrived if path.is_file()}  # Gradio's cache removed the rest
        path = Path(uploaded).resolve()
        self._arrived.add(path)
        return path

    def check(self, uploaded: str | Path) -> None:
        """Name, size cap and header of an upload, before anything else reads it."""
        uploaded = Path(uploaded)
        name = uploaded.name
        check_lora_file_name(name)
        if not uploaded.is_file():
            raise StudioError(f"The upload {name!r} did not arrive; try again.")
        size = uploaded.stat().st_size
        if size > self.max_bytes:
            raise StudioError(
                f"The upload {name!r} is {size / 2**20:,.0f} MiB; "
                f"uploads are limited to {self.max_bytes / 2**20:,.0f} MiB."
            )
        read_header(uploaded, max_file_bytes=self.max_bytes)

    def owns(self, path: str | Path) -> bool:
        return Path(path).resolve() in self._arrived


class HubSource:
    """`hub:owner/repo` or `hub:owner/repo/file.safetensors`; only safetensors files are ever fetched."""

    def __init__(self, cache_dir: str | Path | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.cache_dir = cache_dir
        self.max_file_bytes = max_file_bytes
        self._fetched: dict[str, Path] = {}  # so a loaded Hub LoRA costs no Hub request per generation

    def fetch(self, spec: str) -> Path:
        if spec in self._fetched and self._fetched[spec].is_file():
            return self._fetched[spec]
        self._fetched[spec] = self._download(spec)
        return self._fetched[spec]

    def _download(self, spec: str) -> Path:
        repo_id, filename = parse_hub_spec(spec)
        from huggingface_hub import hf_hub_download, snapshot_download

        try:
            if filename:
                self._check_size(hf_hub_download(repo_id, filename, cache_dir=self.cache_dir, dry_run=True), spec)
                return Path(hf_hub_download(repo_id, filename, cache_dir=self.cache_dir))
            folder = Path(snapshot_download(repo_id, allow_patterns=["*.safetensors"], cache_dir=self.cache_dir))
        except StudioError:
            raise
        except Exception as error:  # huggingface_hub raises many types (offline, 404, HTTP, validation)
            raise StudioError(
                f"Could not get {spec!r} from the Hugging Face Hub: it is not in the local cache and the Hub cannot "
                f"be reached from here (or the id or file name is wrong). Details: {type(error).__name__}: {error}"
            ) from None
        return _pick_hub_file(folder, spec)

    def _check_size(self, planned: DryRunFileInfo, spec: str) -> None:
        """A named file's size is known before it is downloaded (a whole repo's files only after, when read)."""
        if planned.file_size is not None and planned.file_size > self.max_file_bytes:
            raise StudioError(
                f"{spec!r} is {planned.file_size / 2**20:,.0f} MiB on the Hub; "
                f"the limit is {self.max_file_bytes / 2**20:,.0f} MiB."
            )


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    parts = [part for part in spec.removeprefix(HUB_PREFIX).strip().split("/") if part]
    if len(parts) < 2 or any(part in (".", "..") for part in parts):
        raise StudioError(f"{spec!r} is not a Hub LoRA id; write hub:owner/repo or hub:owner/repo/file.safetensors.")
    filename = "/".join(parts[2:]) or None
    if filename:
        check_lora_file_name(filename)
    return f"{parts[0]}/{parts[1]}", filename


def _pick_hub_file(folder: Path, spec: str) -> Path:
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.safetensors"))
    if not files:
        raise StudioError(f"{spec!r} has no .safetensors file; only safetensors LoRAs are loaded.")
    if len(files) == 1 or PREFERRED_HUB_FILE in files:
        return folder / (files[0] if len(files) == 1 else PREFERRED_HUB_FILE)
    raise StudioError(f"{spec!r} holds several LoRA files; name one: " + ", ".join(f"{spec}/{name}" for name in files))
