"""Diffusion studio: text, pose, edge and depth to images, with ControlNet and style LoRAs.

    python app.py                       # the embedded model, offline, on any machine
    python app.py --model runwayml/stable-diffusion-v1-5 --share
"""

from __future__ import annotations

import argparse
import ctypes
import logging
from dataclasses import replace

from pipelines.errors import StudioError
from pipelines.modes import CONTROL_MODES
from pipelines.settings import EMBEDDED_MODEL, Settings
from pipelines.studio import Studio
from ui import cache_writes
from ui.app import CSS, build_app
from ui.mcp_tools import tool_schemas_repaired
from ui.page_cache import page_cache
from ui.queue import configure_queue

logger = logging.getLogger("studio")
MAX_UPLOAD = "512mb"
M_ARENA_MAX = -8  # glibc's mallopt parameter, what MALLOC_ARENA_MAX sets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="hub id, diffusers folder or .safetensors file (env STUDIO_MODEL)")
    parser.add_argument("--lora-dir", help="folder of .safetensors LoRAs (env STUDIO_LORA_DIR)")
    parser.add_argument(
        "--controlnet", action="append", default=[], metavar="MODE=SOURCE",
        help=f"ControlNet for a mode ({', '.join(CONTROL_MODES)}); repeatable",
    )
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="torch threads on the CPU (env STUDIO_THREADS; default: by model)")
    parser.add_argument("--offload", action="store_true",
                        help="keep each model on the CPU until it runs, for small GPUs (env STUDIO_OFFLOAD)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the UNet on CUDA; LoRA switches never recompile (env STUDIO_COMPILE)")
    parser.add_argument("--outputs", metavar="DIR",
                        help="folder where every image, control map and grid is saved; 'none': nothing is "
                        "(env STUDIO_OUTPUT_DIR; default: outputs/ here, nothing on a Space)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    # No defaults: Gradio then reads GRADIO_SERVER_NAME and GRADIO_SERVER_PORT, which Spaces set (0.0.0.0),
    # and otherwise serves 127.0.0.1:7860; a flag passed to launch() would override them.
    parser.add_argument("--host", help="address to listen on (default: GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--queue-size", type=_at_least_one,
                        help="jobs that may wait, all visitors together (env STUDIO_QUEUE_SIZE; default 32)")
    parser.add_argument("--session-queue", type=_at_least_one,
                        help="generating jobs one visitor may have waiting or running (env STUDIO_SESSION_QUEUE; "
                        "default 3)")
    parser.add_argument("--backend", metavar="URL",
                        help="run every request on the Ray Serve application at URL (serving/; token in "
                        "STUDIO_BACKEND_TOKEN) instead of in this process (env STUDIO_BACKEND; default: local)")
    parser.add_argument("--no-mcp", action="store_true",
                        help="do not serve the endpoints as MCP tools (env GRADIO_MCP_SERVER=False)")
    return parser.parse_args(argv)


def _at_least_one(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def controlnet_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        mode, equals, source = pair.partition("=")
        if not equals or mode not in CONTROL_MODES:
            raise SystemExit(f"--controlnet takes MODE=SOURCE with MODE one of {', '.join(CONTROL_MODES)}: {pair!r}")
        overrides[mode] = source
    return overrides


def open_studio(settings: Settings) -> tuple[Studio, str]:
    """The requested model, or, when it cannot be loaded (say the Hub is out of reach), the embedded one; or the
    Ray Serve backend the settings name, which must answer now."""
    if settings.backend:
        return open_backend(settings), ""
    try:
        return Studio(settings), ""
    except StudioError as error:
        if settings.model == str(EMBEDDED_MODEL):
            raise
        warning = f"{error} Serving the embedded model instead."
        logger.warning(warning)
        return Studio(replace(settings, model=str(EMBEDDED_MODEL))), warning


def open_backend(settings: Settings) -> Studio:
    """The page's stand-in for a Studio that runs every request on the Ray Serve backend at `settings.backend`."""
    from serving.client import RemoteStudio  # httpx only: the page needs no Ray

    if not settings.backend_token:
        raise SystemExit("STUDIO_BACKEND names a Ray Serve backend: set STUDIO_BACKEND_TOKEN to the token it expects.")
    studio = RemoteStudio(settings.backend, settings.backend_token, settings)
    try:
        logger.info("generation runs on %s: %s", settings.backend, studio.model.name)
    except StudioError as error:
        raise SystemExit(f"The backend at {settings.backend} does not answer: {error}") from None
    return studio


def fewer_malloc_arenas(arenas: int = 2) -> bool:
    """Under a crowd Gradio runs handlers on up to 40 worker threads, and glibc gives busy threads malloc arenas of
    their own that keep what was freed: with 40 clients the server's resident memory was still climbing after two
    minutes (+167 MiB); with two arenas it levelled off (docs/benchmarks.md). Same as MALLOC_ARENA_MAX=2; without
    glibc, nothing is done."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO)
    fewer_malloc_arenas()  # before Gradio starts its threads
    cache_writes.install()  # two requests that make the same image never hand out half of it
    args = parse_args(argv)
    settings = Settings.from_env().with_flags(
        model=args.model,
        lora_dir=args.lora_dir,
        device=args.device,
        threads=args.threads,
        controlnets=controlnet_overrides(args.controlnet),
        offload=args.offload,
        compile=args.compile,
        outputs=args.outputs,
        queue_size=args.queue_size,
        session_queue=args.session_queue,
        backend=args.backend,
    )
    studio, warning = open_studio(settings)
    warning = " ".join([warning, *studio.notes]).strip()  # say which GPU paths asked for are off, and why
    demo = build_app(studio, warning)
    configure_queue(demo, settings)  # one generation at a time, the queue's size and each visitor's share
    demo.launch(
        share=args.share,
        server_name=args.host,
        server_port=args.port,
        css=CSS,
        show_error=True,
        max_file_size=MAX_UPLOAD,  # Gradio refuses a larger upload before writing it to disk
        # The page is built once per address, not once per visit; the MCP tools' schemas are valid JSON Schema.
        app_kwargs={"middleware": [page_cache()], "lifespan": tool_schemas_repaired(demo)},
        mcp_server=settings.mcp_server and not args.no_mcp,
    )


if __name__ == "__main__":
    main()
