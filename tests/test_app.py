"""The launcher: flags, and going on with the embedded model when the requested one cannot load."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import app
from pipelines.errors import StudioError
from pipelines.settings import Settings


def test_unreachable_hub_model_falls_back_to_the_embedded_model_and_says_so(
    tiny_sd_dir, empty_lora_dir, monkeypatch
):
    monkeypatch.setattr(app, "EMBEDDED_MODEL", tiny_sd_dir)
    settings = Settings(model="someone/not-cached-anywhere", lora_dir=str(empty_lora_dir), device="cpu")
    studio, warning = app.open_studio(settings)
    assert studio.model.source == str(tiny_sd_dir)
    assert "someone/not-cached-anywhere" in warning and "embedded model instead" in warning


def test_controlnet_flags_map_modes_to_sources():
    assert app.controlnet_overrides(["pose=/models/pose", "edge=org/canny"]) == {
        "pose": "/models/pose",
        "edge": "org/canny",
    }
    with pytest.raises(SystemExit, match="MODE=SOURCE"):
        app.controlnet_overrides(["sketch=/x"])


def test_flags_override_settings():
    args = app.parse_args(["--model", "m", "--lora-dir", "l", "--share", "--port", "7999"])
    assert (args.model, args.lora_dir, args.share, args.port) == ("m", "l", True, 7999)
    environment = {"STUDIO_MODEL": "from-env", "STUDIO_CONTROLNET_EDGE": "env/edge", "STUDIO_MAX_STEPS": "12"}
    settings = Settings.from_env(environment).with_flags(model="from-flag", controlnets={"pose": "flag/pose"})
    assert settings.model == "from-flag" and settings.limits.max_steps == 12
    assert settings.controlnets == {"edge": "env/edge", "pose": "flag/pose"}


def test_host_and_port_are_left_to_gradio_unless_a_flag_names_them():
    """Spaces set GRADIO_SERVER_NAME=0.0.0.0; a launch() argument would override it."""
    args = app.parse_args([])
    assert args.host is None and args.port is None


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [("STUDIO_MAX_STEPS", "many", "STUDIO_MAX_STEPS must be a whole number"),
     ("STUDIO_MAX_SIDE", "0", "at least 1"),
     ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1", "arbitrary code"),
     ("STUDIO_BACKEND", "cluster:8000", "must be 'local' or the http\\(s\\) URL")],
)
def test_bad_settings_stop_the_start_with_a_plain_message(variable, value, words):
    with pytest.raises(StudioError, match=words):
        Settings.from_env({variable: value})


def test_where_requests_run_is_a_setting_and_a_flag():
    assert Settings.from_env({}).backend is None and Settings.from_env({"STUDIO_BACKEND": "local"}).backend is None
    remote = Settings.from_env({"STUDIO_BACKEND": "http://cluster:8000/sd15"})
    assert remote.backend == "http://cluster:8000/sd15"
    args = app.parse_args(["--backend", "https://other:8000/sd15"])
    assert Settings.from_env({}).with_flags(backend=args.backend).backend == "https://other:8000/sd15"


def test_a_page_with_a_backend_sends_it_more_requests_at_once_than_it_runs_itself():
    import gradio as gr

    from ui.queue import RUNNING_AT_ONCE, configure_queue

    for settings, running in ((Settings(), RUNNING_AT_ONCE),
                              (Settings(backend="http://cluster:8000/sd15", backend_runs=12), 12)):
        with gr.Blocks() as demo:
            gr.Button().click(lambda: None)
        configure_queue(demo, settings)
        assert demo._queue.default_concurrency_limit == running
    assert Settings.from_env({"STUDIO_BACKEND_RUNS": "7"}).backend_runs == 7


def test_a_backend_without_its_token_or_that_does_not_answer_stops_the_start_plainly():
    with pytest.raises(SystemExit, match="set STUDIO_BACKEND_TOKEN"):
        app.open_studio(Settings(backend="http://127.0.0.1:1/embedded"))
    with socket.socket() as unused:  # bound, never listening: a connection is refused at once
        unused.bind(("127.0.0.1", 0))
        silent = Settings(backend=f"http://127.0.0.1:{unused.getsockname()[1]}/embedded", backend_token="t")
        with pytest.raises(SystemExit, match="does not answer: The studio backend at .* cannot be reached"):
            app.open_studio(silent)


def test_only_the_settings_module_reads_the_environment():
    served = [Path("app.py"), *Path("ui").rglob("*.py"), *Path("pipelines").rglob("*.py")]
    readers = [str(path) for path in served if re.search(r"os\.environ|os\.getenv", path.read_text())]
    assert readers == [str(Path("pipelines/__init__.py")), str(Path("pipelines/settings.py"))]
    # The package's start only gives torch's own allocator variable a default, before torch loads.
    uses = re.findall(r"os\.environ\S*", Path("pipelines/__init__.py").read_text())
    assert uses == ['os.environ.setdefault("THP_MEM_ALLOC_ENABLE",']


HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(not HUGE_PAGES.exists() or "[never]" in HUGE_PAGES.read_text(), reason="no huge pages here")
def test_the_apps_large_tensors_take_a_page_fault_per_2_mb_not_per_4_kb():
    """`python app.py` imports the studio before torch allocates, so torch reads THP_MEM_ALLOC_ENABLE=1 in time."""
    probe = ("import resource, app, torch; before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; "
             "torch.ones(2**25); print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
    environment = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
    done = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True, check=True)
    faults = int(done.stdout.split()[-1])
    assert faults < 2**25 * 4 / 4096 / 8, faults  # 128 MB: 32,768 faults on 4 KB pages, 64 on 2 MB ones


def test_the_readme_lists_every_setting():
    variables = set(re.findall(r"STUDIO_[A-Z_]+", Path("pipelines/settings.py").read_text()))
    variables.discard("STUDIO_CONTROLNET_")
    readme = Path("README.md").read_text()
    assert variables and all(variable in readme for variable in variables), variables - set(readme.split("`"))
