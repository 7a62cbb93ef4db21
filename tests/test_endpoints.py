"""Endpoints are declared once (`pipelines/endpoints.py`): a new mode is one entry in `MODES`, and its tab, its API
endpoint and its checks follow; every served endpoint has a declaration, and only the declarations bind parameters.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.endpoints import ENDPOINTS, LORA_GRID, MODE_ENDPOINTS
from pipelines.errors import StudioError
from pipelines.modes import MODES

PROJECT = Path(__file__).resolve().parents[1]
DUMP = Path(__file__).parent / "fixtures" / "view_api.json"
# One entry, as a person adding a mode would write it in pipelines/modes.py.
SKETCH = '''        Mode(
            "sketch", "Sketch", "sketch2img", "A line drawing, or a ready edge map (preprocessor 'none').",
            preprocessors=("canny", "none"), union_type=3,
        ),
'''
# What the copy reports: its tabs, its API endpoints and their parameters, and a refusal through the endpoint.
PROBE = '''
import json
from pipelines.endpoints import ENDPOINTS
from pipelines.errors import StudioError
from pipelines.settings import Settings
from pipelines.studio import Studio
from ui.app import build_app

studio = Studio(Settings.from_env())
demo = build_app(studio)
tabs = [block["props"].get("label") for block in demo.config["components"] if block["type"] == "tabitem"]
api = demo.get_api_info()["named_endpoints"]
sketch = ENDPOINTS["sketch2img"]
try:
    sketch.validate(sketch.request({"image": "map.png", "prompt": "x", "preprocessor": "pencil"}), studio.served)
    refusal = ""
except StudioError as error:
    refusal = str(error)
print(json.dumps({"tabs": tabs, "parameters": [item["parameter_name"] for item in api["/sketch2img"]["parameters"]],
                  "endpoints": sorted(api), "refusal": refusal}))
'''


def test_every_served_endpoint_is_declared_once():
    served = set(json.loads(DUMP.read_text())["named_endpoints"])
    assert served - {"/loras", "/lora_info", "/png_info"} == {f"/{name}" for name in ENDPOINTS}
    assert {endpoint.name for endpoint in MODE_ENDPOINTS.values()} == {mode.endpoint for mode in MODES.values()}


def test_only_the_declarations_bind_parameters():
    bound = [path for folder in ("pipelines", "ui") for path in (PROJECT / folder).rglob("*.py")
             if "bind(PARAMETERS" in path.read_text()]
    assert bound == [PROJECT / "pipelines" / "endpoints.py"]


def test_nothing_in_the_lora_library_imports_above_the_request_types():
    above = re.compile(r"^\s*(from|import) pipelines\.(validation|endpoints|studio|grid|explore)", re.MULTILINE)
    assert not [path.name for path in (PROJECT / "pipelines" / "lora").glob("*.py") if above.search(path.read_text())]


def test_an_unknown_argument_is_refused_by_name():
    with pytest.raises(StudioError, match="takes no colour"):
        LORA_GRID.request({"colour": "red"})


def test_a_new_mode_is_one_entry(tmp_path):
    """A copy of the project with one more entry in MODES: the page has its tab, the API its endpoint with the
    declared parameters of a controlled mode, and the endpoint checks what it is sent."""
    copy = tmp_path / "project"
    left_out = shutil.ignore_patterns(".git", "models", "outputs", "__pycache__", "*.egg-info")
    shutil.copytree(PROJECT, copy, ignore=left_out)
    (copy / "models").symlink_to(PROJECT / "models")
    modes = copy / "pipelines" / "modes.py"
    source = modes.read_text()
    anchor = '        Mode(\n            "img2img"'
    assert anchor in source
    modes.write_text(source.replace(anchor, SKETCH + anchor, 1))
    ran = subprocess.run([sys.executable, "-c", PROBE], cwd=copy, capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                              "STUDIO_OUTPUT_DIR": "none", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(copy)})
    assert ran.returncode == 0, ran.stderr[-3000:]
    found = json.loads(ran.stdout.strip().splitlines()[-1])
    assert "Sketch" in found["tabs"]
    assert "/sketch2img" in found["endpoints"]
    assert found["parameters"][:2] == ["image", "prompt"] and "low_threshold" in found["parameters"]
    assert "Preprocessor" in found["refusal"] and "pencil" in found["refusal"]


def test_every_kind_of_parameter_is_declared_once():
    """Each kind carries its API type, its checks and its component in one entry (pipelines/validation.py KINDS),
    and every declared parameter is of one of them."""
    from typing import get_args

    from pipelines.parameters import PARAMETERS, KindName
    from pipelines.validation import KINDS

    assert set(KINDS) == set(get_args(KindName))
    assert {param.kind for param in PARAMETERS.values()} <= set(KINDS)
