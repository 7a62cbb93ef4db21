"""Every public endpoint of `python app.py` is also an MCP tool, described from the declarations, and the tools work
through the MCP endpoint itself (the `mcp` client library over streamable HTTP, as an agent connects)."""

from __future__ import annotations

import asyncio
import io
import re
import urllib.request

import pytest
from gradio_client import Client
from jsonschema import Draft202012Validator
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, Tool
from PIL import Image

from pipelines.errors import StudioError
from pipelines.modes import MODES
from pipelines.parameters import PARAMETERS
from pipelines.settings import Settings

MCP_PATH = "gradio_api/mcp/"
MCP_VARIABLE = "GRADIO_MCP_SERVER"
TEXT = MODES["text"]


async def _with_session(url: str, work):
    async with streamable_http_client(url + MCP_PATH) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        return await work(session)


def mcp(url: str, work):
    """`work(session)` on a fresh MCP session with the app at `url`."""
    return asyncio.run(_with_session(url, work))


@pytest.fixture(scope="module")
def tools(app_url) -> dict[str, Tool]:
    async def listed(session: ClientSession):
        return (await session.list_tools()).tools

    return {tool.name: tool for tool in mcp(app_url, listed)}


def test_the_tools_are_the_public_endpoints_and_no_private_event(app_url, tools):
    endpoints = Client(app_url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(tools) == {name.lstrip("/") for name in endpoints}
    assert {mode.endpoint for mode in MODES.values()} <= set(tools)


def test_every_tool_schema_is_valid_json_schema(tools):
    # The MCP library checks each call against its tool's schema, and model APIs refuse a tool list holding an
    # invalid one (gr.JSON's {"type": {}} was one).
    for tool in tools.values():
        Draft202012Validator.check_schema(tool.inputSchema)


def test_a_tool_says_what_its_mode_and_each_parameter_declare(tools):
    tool = tools[TEXT.endpoint]
    assert TEXT.hint in tool.description
    properties = tool.inputSchema["properties"]
    assert list(properties) == list(TEXT.parameters)
    for name, schema in properties.items():
        declared = PARAMETERS[name]
        # The label and help line from the declaration, then the range the served model binds (the API info's). A file
        # input (the style image) is a URL to Gradio's MCP server, which drops its API info's description.
        described = schema.get("additional_description", declared.help if declared.kind == "image" else None)
        assert schema["description"] == f"{declared.label}: {described}", name
        assert described.startswith(declared.help), name
    assert re.search(r"; 1 to \d+$", properties["steps"]["description"])


def test_text2img_through_mcp_returns_the_image_asked_for(app_url):
    async def called(session: ClientSession):
        arguments = dict(prompt="a red circle on a blue background", steps=1, seed=7, randomize_seed=False,
                         width=64, height=48)
        return await session.call_tool(TEXT.endpoint, arguments)

    result: CallToolResult = mcp(app_url, called)
    # Gradio hands the outputs back as text (the gallery's files as URLs served by the app); an agent fetches them.
    text = " ".join(part.text for part in result.content if part.type == "text")
    assert not result.isError, text
    assert "Seed: 7" in text
    (image_url,) = re.findall(r"'url': '(http[^']+)'", text)
    with urllib.request.urlopen(image_url, timeout=10) as response:
        image = Image.open(io.BytesIO(response.read()))
    assert (image.format, image.size) == ("PNG", (64, 48))


@pytest.mark.parametrize(("value", "serves"), [(None, True), ("", True), ("False", False), (" true ", True)])
def test_mcp_is_on_unless_gradios_variable_turns_it_off(value, serves):
    environ = {} if value is None else {MCP_VARIABLE: value}
    assert Settings.from_env(environ).mcp_server is serves


def test_a_bad_mcp_switch_stops_the_start_naming_the_variable():
    with pytest.raises(StudioError, match=f"{MCP_VARIABLE} must be 1 or 0"):
        Settings.from_env({MCP_VARIABLE: "maybe"})
