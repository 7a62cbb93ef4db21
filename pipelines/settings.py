"""The studio's settings: built once, from environment variables (how a Space is configured) and then flags.

This is the only module that reads the environment. Every variable is read in `Settings.from_env`, and the
README's settings table lists each one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipelines.acceleration import FP16_FIX_VAE, SpeedSettings
from pipelines.errors import StudioError
from pipelines.lora.manager import DEFAULT_MAX_BYTES
from pipelines.lora.safety import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_UPLOAD_BYTES
from pipelines.modes import CONTROL_MODES, UNION
from pipelines.preprocessors.weights import DEFAULT_DEPTH_MODEL, DetectorSources

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_MODEL = PROJECT_ROOT / "models" / "embedded"
EMBEDDED_LORAS = PROJECT_ROOT / "models" / "loras"
DEFAULT_OUTPUTS = PROJECT_ROOT / "outputs"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_side: int | None = None  # None: twice the model's native resolution
    max_images: int = 4
    max_steps: int = 100
    max_guidance: float = 30.0
    max_input_pixels: int = 4096 * 4096
    max_prompt_chars: int = 2000

    def side_for(self, native_resolution: int) -> int:
        return self.max_side or 2 * native_resolution


@dataclass(frozen=True)
class LoraLimits:
    cache_bytes: int = DEFAULT_MAX_BYTES  # adapters kept loaded, all together
    file_bytes: int = DEFAULT_MAX_FILE_BYTES
    upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES


@dataclass(frozen=True)
class Settings:
    model: str = str(EMBEDDED_MODEL)
    lora_dir: str = str(EMBEDDED_LORAS)
    device: str | None = None  # None: CUDA when present, else the CPU
    threads: int | None = None  # torch threads on the CPU; None: chosen from the machine and model (threads.py)
    limits: Limits = field(default_factory=Limits)
    loras: LoraLimits = field(default_factory=LoraLimits)
    controlnets: Mapping[str, str] = field(default_factory=dict)  # mode -> ControlNet source, over the defaults
    # The style reference's IP-Adapter weight file and its image encoder, over the family's (pipelines/style.py);
    # "none" switches the style reference off.
    style_adapter: str | None = None
    style_encoder: str | None = None
    detectors: DetectorSources = field(default_factory=DetectorSources)
    cache_age_s: int = 3600  # files made per request (images, grids, uploads) are removed after this age
    # Every image, control map and grid is saved here (pipelines/outputs.py); None: nothing is. `from_env` gives
    # `outputs/` when run locally, so a Settings built in code (a test) writes nowhere unless told.
    output_dir: str | None = None
    on_space: bool = False  # SPACE_ID set: a shared server, whose output folder the History tab does not list
    queue_size: int = 32  # jobs that may wait in the queue, all visitors together
    session_queue: int = 3  # generating jobs one visitor (a page, or a gradio_client Client) may have queued or running
    speed: SpeedSettings = field(default_factory=SpeedSettings)  # GPU paths: offload, compile, fusing, SDXL's VAE
    mcp_server: bool = True  # every endpoint is also an MCP tool (Gradio's own variable, whose default is off)
    # Where requests run: None in this process; else the URL of a Ray Serve application (serving/) the page calls.
    backend: str | None = None
    # Events of one group the page runs at once with a backend: it sends them on, and the backend's replicas run,
    # batch and queue them (past its queue, it says it is busy). In-process the studio runs one call at a time.
    backend_runs: int = 16
    # The secret a Ray Serve backend (serving/) and the page that calls it share; kept out of the repr (and logs).
    backend_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        _refuse_unsafe_torch_load(environ)
        read = _Reader(environ)
        return cls(
            model=read.text("STUDIO_MODEL", cls.model),
            lora_dir=read.text("STUDIO_LORA_DIR", cls.lora_dir),
            device=read.text("STUDIO_DEVICE", None),
            threads=read.whole("STUDIO_THREADS", None),
            limits=Limits(
                max_side=read.whole("STUDIO_MAX_SIDE", None),
                max_images=read.whole("STUDIO_MAX_IMAGES", Limits.max_images),
                max_steps=read.whole("STUDIO_MAX_STEPS", Limits.max_steps),
                max_input_pixels=read.whole("STUDIO_MAX_INPUT_PIXELS", Limits.max_input_pixels),
            ),
            loras=LoraLimits(
                cache_bytes=read.whole("STUDIO_LORA_CACHE_MB", LoraLimits.cache_bytes // MIB) * MIB,
                file_bytes=read.whole("STUDIO_MAX_LORA_MB", LoraLimits.file_bytes // MIB) * MIB,
                upload_bytes=read.whole("STUDIO_MAX_LORA_UPLOAD_MB", LoraLimits.upload_bytes // MIB) * MIB,
            ),
            controlnets={
                mode: source
                for mode in (*CONTROL_MODES, UNION)
                if (source := read.text(f"STUDIO_CONTROLNET_{mode.upper()}", None))
            },
            style_adapter=read.text("STUDIO_STYLE_ADAPTER", None),
            style_encoder=read.text("STUDIO_STYLE_ENCODER", None),
            detectors=DetectorSources(
                annotators=read.text("STUDIO_ANNOTATORS", None),
                depth_model=read.text("STUDIO_DEPTH_MODEL", DEFAULT_DEPTH_MODEL),
            ),
            cache_age_s=read.whole("STUDIO_CACHE_AGE_S", cls.cache_age_s),
            output_dir=_output_dir(read.text("STUDIO_OUTPUT_DIR", None), on_space=bool(read.text("SPACE_ID", None))),
            on_space=bool(read.text("SPACE_ID", None)),
            queue_size=read.whole("STUDIO_QUEUE_SIZE", cls.queue_size),
            session_queue=read.whole("STUDIO_SESSION_QUEUE", cls.session_queue),
            speed=SpeedSettings(
                offload=read.flag("STUDIO_OFFLOAD"),
                compile=read.flag("STUDIO_COMPILE"),
                fuse_loras=read.flag("STUDIO_FUSE_LORAS", default=None),
                compile_lora_rank=read.whole("STUDIO_COMPILE_LORA_RANK", SpeedSettings.compile_lora_rank),
                sdxl_vae=_none_means_off(read.text("STUDIO_SDXL_VAE", FP16_FIX_VAE)),
            ),
            mcp_server=read.flag("GRADIO_MCP_SERVER", default=cls.mcp_server),
            backend=_backend_url(read.text("STUDIO_BACKEND", None)),
            backend_runs=read.whole("STUDIO_BACKEND_RUNS", cls.backend_runs),
            backend_token=read.text("STUDIO_BACKEND_TOKEN", None),
        )

    def with_flags(
        self,
        *,
        model: str | None = None,
        lora_dir: str | None = None,
        device: str | None = None,
        threads: int | None = None,
        controlnets: Mapping[str, str] | None = None,
        offload: bool = False,
        compile: bool = False,
        outputs: str | None = None,
        queue_size: int | None = None,
        session_queue: int | None = None,
        backend: str | None = None,
    ) -> Settings:
        """Flags given on the command line win over the environment (a switch flag can only turn its path on)."""
        return replace(
            self,
            model=model or self.model,
            lora_dir=lora_dir or self.lora_dir,
            device=device or self.device,
            threads=threads or self.threads,
            controlnets={**self.controlnets, **(controlnets or {})},
            output_dir=_none_means_off(outputs) if outputs else self.output_dir,
            speed=replace(self.speed, offload=offload or self.speed.offload, compile=compile or self.speed.compile),
            queue_size=queue_size or self.queue_size,
            session_queue=session_queue or self.session_queue,
            backend=_backend_url(backend) if backend else self.backend,
        )


def _backend_url(value: str | None) -> str | None:
    """STUDIO_BACKEND: empty or "local" runs requests in this process; otherwise an http(s) URL."""
    if value is None or value.strip().lower() in ("", "local"):
        return None
    if not value.startswith(("http://", "https://")):
        raise StudioError(f"STUDIO_BACKEND must be 'local' or the http(s) URL of a Ray Serve application "
                          f"(http://host:8000/embedded), not {value!r}.")
    return value.strip()


@dataclass(frozen=True)
class _Reader:
    environ: Mapping[str, str]

    def text(self, name: str, default: str | None) -> str | None:
        return self.environ.get(name) or default

    def whole(self, name: str, default: int | None) -> int | None:
        value = self.environ.get(name)
        if not value:
            return default
        try:
            number = int(value)
        except ValueError:
            raise StudioError(f"The setting {name} must be a whole number, not {value!r}.") from None
        if number < 1:
            raise StudioError(f"The setting {name} must be at least 1, not {number}.")
        return number

    def flag(self, name: str, default: bool | None = False) -> bool | None:
        value = self.environ.get(name, "").strip().lower()
        if not value:
            return default
        if value in ("0", "false", "no", "off"):
            return False
        if value in ("1", "true", "yes", "on"):
            return True
        raise StudioError(f"The setting {name} must be 1 or 0 (true or false), not {value!r}.")


def _none_means_off(value: str | None) -> str | None:
    return None if value is not None and value.lower() == "none" else value


def _output_dir(value: str | None, on_space: bool) -> str | None:
    """Given: that folder (`none`: off). Not given: `outputs/` here when run locally; on a Space, where visitors
    share the disk and it is wiped on restart, off unless asked."""
    if value is not None:
        return _none_means_off(value)
    return None if on_space else str(DEFAULT_OUTPUTS)


def _refuse_unsafe_torch_load(environ: Mapping[str, str]) -> None:
    if environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() not in ("", "0", "false"):
        raise StudioError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, which would let weight files run arbitrary code when "
            "loaded; unset it to start the studio."
        )
