"""Where detector weights come from and where they run, the once-per-process detector cache, and plain messages for
missing weights.

Annotator weights (OpenPose, MiDaS) are the files of the hub repo `lllyasviel/Annotators`, or of a local
folder holding the same file names (the setting STUDIO_ANNOTATORS). Nothing here ever unpickles a
file with `weights_only=False`: controlnet-aux calls torch's loader with no `weights_only` argument,
which torch >= 2.6 treats as `weights_only=True`, and the settings refuse to start the studio if that
default has been switched off (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).
"""

from __future__ import annotations

import importlib
import os
import pickle
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TypeVar

from ..errors import StudioError

ANNOTATORS_REPO = "lllyasviel/Annotators"
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"

T = TypeVar("T")

_detectors: dict[tuple[str, str, str], object] = {}
_detectors_lock = threading.Lock()


@dataclass(frozen=True)
class DetectorSources:
    """Where detector weights come from (settings STUDIO_ANNOTATORS and STUDIO_DEPTH_MODEL) and where they run."""

    annotators: str | None = None  # a local folder of lllyasviel/Annotators' files; None: the hub repo
    depth_model: str = DEFAULT_DEPTH_MODEL  # hub id or local folder of a transformers depth model
    # The torch device the detectors run on, in fp32. Chosen on purpose, never left to the libraries: a transformers
    # pipeline given no device takes the first accelerator it sees. The studio passes its own device, so on a GPU
    # (ZeroGPU included) a detector costs milliseconds of GPU time instead of seconds of CPU time.
    device: str = "cpu"

    @property
    def annotators_label(self) -> str:
        return self.annotators or ANNOTATORS_REPO


def cached_detector(kind: str, source: str, device: str, load: Callable[[], T]) -> T:
    """Load a detector once per process, source and device; concurrent requests wait for the first load.

    `load` must put the detector on `device`: the device is part of the key, so a detector loaded for the CPU is
    never handed to a caller that runs on the GPU, or the other way round.
    """
    with _detectors_lock:
        key = (kind, source, device)
        if key not in _detectors:
            _detectors[key] = load()
        return _detectors[key]


def clear_detector_cache() -> None:
    """Forget every loaded detector (tests, or an operator who replaced weight files)."""
    with _detectors_lock:
        _detectors.clear()


def missing_weights_error(what: str, files: str, setting: str, hub_repo: str, mode: str, reason: str) -> StudioError:
    return StudioError(
        f"The {what} weights are not available on this machine: {reason}. Set {setting} to a folder holding "
        f"{files} (the files of the hub repo {hub_repo}), or upload a ready {mode} map and choose the "
        'preprocessor "none".'
    )


def annotators_present(sources: DetectorSources, *filenames: str) -> bool:
    """Whether the annotator files are on this machine (the STUDIO_ANNOTATORS folder or the hub cache)."""
    if sources.annotators:
        return all(os.path.isfile(os.path.join(sources.annotators, name)) for name in filenames)
    return all(_in_hub_cache(ANNOTATORS_REPO, name) for name in filenames)


def model_present(source: str) -> bool:
    """Whether a transformers model (a local folder or a hub id) can load without the network."""
    return os.path.isdir(source) or _in_hub_cache(source, "config.json")


def _in_hub_cache(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, filename), str)
    except ValueError:  # not a valid repo id
        return False


def annotator_file(filename: str, *, what: str, mode: str, sources: DetectorSources) -> str:
    """Local path of one annotator weight file, from the STUDIO_ANNOTATORS folder or the hub cache."""
    folder = sources.annotators
    if folder:
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            reason = f"{filename} is not in the STUDIO_ANNOTATORS folder"
            raise missing_weights_error(what, filename, "STUDIO_ANNOTATORS", ANNOTATORS_REPO, mode, reason)
        return path
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(ANNOTATORS_REPO, filename)
    except (OSError, ValueError) as error:
        # Offline/uncached (LocalEntryNotFoundError, OfflineModeIsEnabled), HTTP and connection errors are all
        # OSError subclasses in huggingface_hub; a bad repo id or file name is a ValueError.
        reason = "they are not in the Hugging Face cache and the Hub cannot be reached"
        raise missing_weights_error(what, filename, "STUDIO_ANNOTATORS", ANNOTATORS_REPO, mode, reason) from error


def load_annotator(path: str, load: Callable[[str], T], *, what: str) -> T:
    """Build a detector part from a weight file, turning a damaged or wrong file into a plain message."""
    try:
        return load(path)
    except (RuntimeError, pickle.UnpicklingError, OSError, KeyError, EOFError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StudioError(
            f"The {what} weights file {os.path.basename(path)} could not be loaded ({first_line[:200]}). "
            "It may be damaged or of another model; replace it."
        ) from None


def import_controlnet_aux(submodule: str) -> ModuleType:
    """Import a controlnet-aux detector module on first use (the package imports every detector, ~10 s)."""
    with warnings.catch_warnings():
        # Its deprecation and registry warnings are about its own code, nothing a person can act on.
        warnings.simplefilter("ignore")
        return importlib.import_module(f"controlnet_aux.{submodule}")
