"""Every parameter of every endpoint, sent bad values the way a stranger's script would.

Each refusal must name the field (its label or its API name) without a traceback or a server path. The values come
from the parameter declarations, so a new parameter or endpoint is covered without touching this file. Every case
runs in-process against the endpoint's own checks; through the real client goes one call per distinct (parameter,
bad value), one per endpoint to show its refusals reach the client by name, and every case that only the served
app's components refuse. The server must keep serving after them.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from pipelines.endpoints import ENDPOINTS as DECLARED
from pipelines.endpoints import LORA_GRID, MODE_ENDPOINTS
from pipelines.errors import StudioError
from pipelines.parameters import PARAMETERS, Param, Served

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUL = "a red\x00 circle"
# A unit's image named by a server path: the component refuses it before any handler runs (DeclaredUnits in
# ui/fields.py), so only the served app can.
PATH_AS_UNIT_IMAGE = [{"mode": "edge", "image": "/etc/hostname"}]


def call(client: Client, endpoint: str, arguments: dict) -> str:
    """The refusal's message. NaN and infinity cannot pass through `gradio_client` (its JSON encoder refuses
    them), but other clients send them: those go as raw JSON to Gradio's REST route, as such a client would."""
    if not any(isinstance(value, float) and not math.isfinite(value) for value in arguments.values()):
        with pytest.raises(AppError) as refused:
            client.predict(**arguments, api_name=f"/{endpoint}")
        return str(refused.value)
    declared = client.view_api(print_info=False, return_format="dict")["named_endpoints"][f"/{endpoint}"]
    data = [arguments.get(item["parameter_name"], item["parameter_default"]) for item in declared["parameters"]]
    posted = httpx.post(
        f"{client.src}gradio_api/call/{endpoint}",
        content=json.dumps({"data": data}),  # allow_nan: NaN and Infinity as JavaScript writes them
        headers={"content-type": "application/json"},
    )
    events = httpx.get(f"{client.src}gradio_api/call/{endpoint}/{posted.json()['event_id']}", timeout=60).text
    assert "event: error" in events, events
    return json.loads(events.split("data: ", 1)[1].splitlines()[0])["error"]


def _outside(param: Param) -> str:
    """A number just outside the declared range (above it where the top is a plain number)."""
    return f"{param.high + 1:g}" if isinstance(param.high, (int, float)) else f"{param.low - 1:g}"


def bad_values(param: Param) -> list[object]:
    """Values no declaration of this kind accepts."""
    not_a_number = ["5", [1], {"a": 1}, True, math.nan, math.inf, -math.inf]
    if param.kind in ("whole", "number"):
        out_of_range = [param.low - 1] if isinstance(param.low, (int, float)) else []
        fraction = [param.low + 0.5] if param.kind == "whole" and isinstance(param.low, (int, float)) else []
        return [*not_a_number, *out_of_range, *fraction]
    if param.kind == "text":
        return [NUL, ["a"], {"a": 1}, 5]
    if param.kind == "flag":
        return ["yes", 1, [True]]
    if param.kind == "choice":
        return ["bogus", 5, ["text"]]
    if param.kind == "style_mode":
        return ["bogus", 5, ["text"], {"a": 1}, '{"up": {"block_0": 9}}', "{not json"]
    if param.kind == "loras":
        return ["stripes:nan", "stripes:5", "stripes:2, stripes:2", "str\x00ipes:1", {"a": 1}, 3]
    if param.kind == "names":
        return ["stripes", {"stripes": 1}, [1], ["str\x00ipes"]]
    if param.kind in ("numbers", "wholes"):
        return ["0.5, nan", "1, inf", "1.5" if param.kind == "wholes" else _outside(param), {"a": 1}, 3.5, NUL]
    if param.kind == "units":
        return ["edge", {"a": 1}, [1], [{"mode": "sketch"}], PATH_AS_UNIT_IMAGE,
                [{"mode": "edge", "scale": "x"}], [{"mode": "edge", "weight": 1}]]
    return []  # images: a broken or missing file is covered in test_api.py


ENDPOINTS = [(endpoint.name, endpoint.parameters) for endpoint in DECLARED.values()]
# What the Explore endpoints need besides the value under test; each value is checked before any image is made.
EXPLORE_ARGUMENTS = {
    "denoise_timeline": dict(prompt="a red circle", steps=1),
    "forward_noise": {},
    "sweep": dict(prompt="a red circle", steps=1, guidance_scales="1", step_counts="1"),
    "xy_plot": dict(prompt="a red circle", steps=1, x_axis="seed", x_values="1", y_axis="guidance", y_values="2"),
}
CASES = [
    (endpoint, name, value)
    for endpoint, names in ENDPOINTS
    for name in names
    for value in bad_values(PARAMETERS[name])
]


def only_the_server_refuses(name: str, value: object) -> bool:
    return name == "control_units" and value == PATH_AS_UNIT_IMAGE


def _live_cases() -> list[tuple[str, str, object]]:
    """Each endpoint's last parameter with its first bad value (the wiring: every endpoint's refusals reach the
    client by name), every case only the served app refuses, then each (parameter, bad value) not sent yet, through
    the first endpoint that takes it."""
    wiring = [(endpoint, names[-1], bad_values(PARAMETERS[names[-1]])[0]) for endpoint, names in ENDPOINTS]
    live = [*wiring, *(case for case in CASES if only_the_server_refuses(*case[1:]))]
    sent = {(name, repr(value)) for _, name, value in live}
    for endpoint, name, value in CASES:
        if (name, repr(value)) not in sent:
            sent.add((name, repr(value)))
            live.append((endpoint, name, value))
    return live


IN_PROCESS_CASES = [case for case in CASES if not only_the_server_refuses(*case[1:])]
LIVE_CASES = _live_cases()


def valid_arguments(endpoint: str) -> dict:
    if endpoint in EXPLORE_ARGUMENTS:
        return dict(EXPLORE_ARGUMENTS[endpoint])
    if endpoint == LORA_GRID.name:
        return dict(lora_names=["stripes.safetensors"], weights="1", seeds="1", prompt="a red circle", steps=1)
    mode = DECLARED[endpoint].mode
    return dict(prompt="a red circle", steps=1, **({"preprocessor": "none"} if mode.is_controlled else {}))


def refusal_in_process(endpoint: str, arguments: dict, served: Served) -> str:
    """The refusal's message from the endpoint's checks, run on the request it builds from `arguments`, without a
    server; an argument left out takes its default, as the handler's would."""
    declared = DECLARED[endpoint]
    given = {param.name: param.default for param in declared.params(served)} | arguments
    with pytest.raises(StudioError) as refused:
        declared.validate(declared.request(given), served)
    return str(refused.value)


def assert_names_the_field(message: str, name: str) -> None:
    """The field by its label or API name, and nothing of the server's insides."""
    lowered = message.lower()
    assert PARAMETERS[name].label.lower() in lowered or name in lowered, message
    assert "traceback" not in lowered and tempfile.gettempdir() not in message and str(Path.cwd()) not in message


def case_id(endpoint: str, name: str, value: object) -> str:
    return f"{endpoint}-{name}-{value!r}"[:60]


@pytest.fixture(scope="module")
def served(tiny_studio) -> Served:
    return tiny_studio.served


@pytest.mark.parametrize(("endpoint", "name", "value"), IN_PROCESS_CASES, ids=[case_id(*c) for c in IN_PROCESS_CASES])
def test_bad_value_is_refused_by_the_endpoints_checks_naming_the_field(served, endpoint, name, value):
    assert_names_the_field(refusal_in_process(endpoint, {**valid_arguments(endpoint), name: value}, served), name)


@pytest.mark.parametrize(("endpoint", "name", "value"), LIVE_CASES, ids=[case_id(*c) for c in LIVE_CASES])
def test_bad_value_is_refused_through_the_client_naming_the_field(client, endpoint, name, value):
    assert_names_the_field(call(client, endpoint, {**valid_arguments(endpoint), name: value}), name)


@pytest.mark.parametrize("endpoint", [endpoint.name for endpoint in MODE_ENDPOINTS.values()])
def test_after_the_refusals_the_same_endpoint_still_serves(client, endpoint, edge_map):
    arguments = valid_arguments(endpoint)
    if endpoint != "text2img":
        from gradio_client import handle_file

        arguments["image"] = handle_file(edge_map)
    if endpoint == "inpaint":
        arguments["mask"] = handle_file(edge_map)  # white lines on black: repaint the lines
    gallery, *_ = client.predict(**arguments, api_name=f"/{endpoint}")
    assert gallery


def test_the_same_lora_named_twice_is_merged_within_range(tiny_studio):
    from pipelines.endpoints import validate_request
    from pipelines.request import GenerationRequest

    request, notes = validate_request(GenerationRequest(loras="a:0.5, a:0.75"), tiny_studio.served)
    assert [(choice.name, choice.weight) for choice in request.loras] == [("a", 1.25)]
    assert any("more than once" in note for note in notes)


def test_sizes_snap_to_what_every_pipeline_of_the_family_takes(tiny_studio):
    from pipelines.request import GenerationRequest

    result = tiny_studio.generate(GenerationRequest(width=60, height=44, steps=1))
    assert result.images[0].size == (56, 40)  # multiples of 8, which diffusers' text pipeline insists on


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "loras"])
def test_lone_surrogates_are_refused_by_name(tiny_studio, field):
    """httpx cannot even encode them, so they are checked here rather than through the client."""
    from pipelines.endpoints import validate_request
    from pipelines.errors import StudioError
    from pipelines.request import GenerationRequest

    with pytest.raises(StudioError, match=f"(?i)({PARAMETERS[field].label}|LoRA name).*unpaired surrogate"):
        validate_request(GenerationRequest(**{field: "a red \ud800 circle"}), tiny_studio.served)
