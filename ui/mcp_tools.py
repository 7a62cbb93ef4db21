"""Every public endpoint is also an MCP tool (Gradio's MCP server, at /gradio_api/mcp/), described from the
declarations: the tool's description is the event's `api_description`, each parameter's description comes from
the handler's docstring (`ui.fields.with_signature`), its type, default and range from the component's API info.

One repair: a `gr.JSON` input (the ControlNet units) describes its value as `{"type": {}}` ("any valid json"),
which is no JSON Schema. The MCP library checks every call against the tool's schema, and with that schema it
fails before the call runs (jsonschema's SchemaError), so no tool with control units could be called; model APIs
also refuse a tool list holding such a schema. Gradio's MCP server keeps its own copy of the API info, taken at
launch, and the repair goes there only, so `client.view_api()` shows what it always did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import gradio as gr


def as_json_schema(parameter_type: dict) -> dict:
    """`parameter_type` with gr.JSON's "any valid json" said the JSON Schema way: no "type" at all."""
    if parameter_type.get("type") == {}:
        return {key: value for key, value in parameter_type.items() if key != "type"}
    return parameter_type


def repair_tool_schemas(api_info: dict) -> None:
    """Make every parameter type in the MCP server's copy of the API info valid JSON Schema."""
    for endpoint in api_info["named_endpoints"].values():
        for parameter in endpoint["parameters"]:
            parameter["type"] = as_json_schema(parameter["type"])


def tool_schemas_repaired(demo: gr.Blocks) -> Callable[[object], AbstractAsyncContextManager[None]]:
    """A lifespan for `launch(app_kwargs={"lifespan": ...})`: Gradio builds its MCP server while launching and
    runs this lifespan at the server's start, before any tool is listed or called."""

    @asynccontextmanager
    async def lifespan(_app: object) -> AsyncIterator[None]:
        if demo.mcp_server_obj is not None:
            repair_tool_schemas(demo.mcp_server_obj.api_info)
        yield

    return lifespan
