"""Where detector weights come from, the once-per-process detector cache, and plain messages for missing weights.

Annotator weights (OpenPose, MiDaS) are the files of the hub repo `lllyasviel/Annotators`, or of a local
folder holding the same file names, named by the env var STUDIO_ANNOTATORS. Nothing here ever unpickles a
file with `weights_only=False`: controlnet-aux calls torch's loader with no `weights_only` argument,
which torch >= 2.6 treats as `weights_only=True`, and `load_annotator` refuses to run if that default
has been switched off.
"""

from __future__ import annotations

import importlib
import os
import pickle
import threading
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

from ..errors import StudioError

ANNOTATORS_REPO = "lllyasviel/Annotators"
ANNOTATORS_ENV = "STUDIO_ANNOTATORS"

T = TypeVar("T")

_detectors: dict[tuple[str, str], object] = {}
_detectors_lock = threading.Lock()


def annotators_source() -> str:
    """The local annotator folder named by STUDIO_ANNOTATORS, else the hub repo id."""
    return os.environ.get(ANNOTATORS_ENV) or ANNOTATORS_REPO


def cached_detector(kind: str, source: str, load: Callable[[], T]) -> T:
    """Load a detector once per process and source; concurrent requests wait for the first load."""
    with _detectors_lock:
        key = (kind, source)
        if key not in _detectors:
            _detectors[key] = load()
        return _detectors[key]


def clear_detector_cache() -> None:
    """Forget every loaded detector (tests, or an operator who replaced weight files)."""
    with _detectors_lock:
        _detectors.clear()


def missing_weights_error(what: str, files: str, source: str, mode: str, reason: str) -> StudioError:
    return StudioError(
        f"The {what} weights ({files} from {source}) are not available on this machine: {reason}. "
        f"Put them there (or in the hub cache), or upload a ready {mode} map and choose the preprocessor "
        '"none" instead.'
    )


def annotator_file(filename: str, *, what: str, mode: str) -> str:
    """Local path of one annotator weight file, from STUDIO_ANNOTATORS or the hub cache."""
    folder = os.environ.get(ANNOTATORS_ENV)
    if folder:
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            raise missing_weights_error(
                what, filename, f"the folder {folder} ({ANNOTATORS_ENV})", mode, "file not found"
            )
        return path
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(ANNOTATORS_REPO, filename)
    except (OSError, ValueError) as error:
        # Offline/uncached (LocalEntryNotFoundError, OfflineModeIsEnabled), HTTP and connection errors are all
        # OSError subclasses in huggingface_hub; a bad repo id or file name is a ValueError.
        raise missing_weights_error(what, filename, ANNOTATORS_REPO, mode, type(error).__name__) from None


def load_annotator(path: str, load: Callable[[str], T], *, what: str) -> T:
    """Build a detector part from a weight file, turning a damaged or wrong file into a plain message."""
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() not in ("", "0", "false"):
        raise StudioError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, which would let weight files run arbitrary code; "
            "unset it to use the detectors."
        )
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
