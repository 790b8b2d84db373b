"""An MCP server that offers everything the MCP conformance suite's server scenarios call.

Written here, on the SDK's low-level ``Server``, so every byte of a tool schema or an elicitation
schema is ours: tests compare what a client gets from it directly with what it gets through the
gateway. It serves both protocol eras: over the 2025 handshake it sends sampling, elicitation and
roots requests to the client and logs and progress as notifications; for a 2026-07-28 client the
same tools answer ``input_required`` and finish when the client retries with the responses, and
resource updates and list changes go to ``subscriptions/listen`` streams.

Beyond the suite's ``test_*`` tools, a few let tests see what a proxy relays: URL elicitation,
roots (and the client's roots/list_changed notifications), a resource update, a tool list
change, a slow tool with progress, and an echo of the request's ``_meta``.

Run over stdio (default) or streamable HTTP on 127.0.0.1: ``python everything_server.py --http PORT``
(endpoint ``/mcp``). Logs go to stderr only; over stdio, stdout is the protocol.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import struct
import sys
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.connection import allowed_log_levels
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

logger = logging.getLogger("everything_server")

Ctx = ServerRequestContext[Any, Any]
ToolResult = types.CallToolResult | types.InputRequiredResult
ToolHandler = Callable[[Ctx, dict[str, Any]], Awaitable[ToolResult]]
ResultT = TypeVar("ResultT", bound=BaseModel)

NOTIFICATION_PACE = 0.05  # the suite asks for ~50 ms between a tool's log and progress messages
LOG_LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)


def _png_pixel() -> str:
    """A valid 1x1 red PNG, built rather than pasted."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def _wav_silence() -> str:
    """A valid WAV file: 8 kHz mono 16-bit, one silent sample."""
    samples = b"\x00\x00"
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples))
    return base64.b64encode(b"RIFF" + struct.pack("<I", len(body) + len(samples)) + body + samples).decode()


PNG = _png_pixel()
WAV = _wav_silence()
WATCHED_URI = "test://watched-resource"
TEMPLATE = "test://template/{id}/data"
DYNAMIC_TOOL = "test_dynamic_tool"


def text(value: str) -> types.TextContent:
    return types.TextContent(type="text", text=value)


def ok(value: str) -> types.CallToolResult:
    return types.CallToolResult(content=[text(value)])


def failed(value: str) -> types.CallToolResult:
    return types.CallToolResult(content=[text(value)], is_error=True)


def structured(value: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[text(json.dumps(value, sort_keys=True))], structured_content=value)


def connection_key(ctx: Ctx) -> str:
    """Which client connection a request came on: its HTTP session id, or the one stdio peer."""
    headers = getattr(ctx.request, "headers", None)
    if headers is None:
        return "stdio"
    return str(headers.get("mcp-session-id") or "")


def modern(ctx: Ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


@dataclass
class State:
    """What outlives one request: log levels, subscribers, the watched resource, the dynamic tool."""

    bus: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)
    log_levels: dict[str, types.LoggingLevel] = field(default_factory=dict)
    subscribers: dict[str, dict[str, ServerSession]] = field(default_factory=dict)
    watched_version: int = 0
    dynamic_tool: bool = False
    roots_changed: int = 0


STATE = State()
TOOLS: dict[str, tuple[types.Tool, ToolHandler]] = {}


def tool(
    name: str,
    description: str,
    schema: Mapping[str, Any] | None = None,
    *,
    read_only: bool = True,
) -> Callable[[ToolHandler], ToolHandler]:
    """Register a tool; ``read_only`` becomes ``readOnlyHint`` (the gateway's ``auto`` class reads it)."""

    def register(handler: ToolHandler) -> ToolHandler:
        input_schema = dict(schema) if schema is not None else {"type": "object", "properties": {}}
        annotations = types.ToolAnnotations(
            read_only_hint=read_only, destructive_hint=False if read_only else None
        )
        TOOLS[name] = (
            types.Tool(
                name=name, description=description, input_schema=input_schema, annotations=annotations
            ),
            handler,
        )
        return handler

    return register


def string_args(*names: str, required: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": {n: {"type": "string"} for n in names}}
    if required:
        schema["required"] = list(names)
    return schema


async def log(ctx: Ctx, level: types.LoggingLevel, message: str) -> None:
    """A log notification on this request's stream, if the client asked for that level.

    2025: the level the connection set with ``logging/setLevel`` (everything until it does).
    2026-07-28: the level this request opted into in its ``_meta`` (nothing without it).
    """
    if modern(ctx):
        if level not in allowed_log_levels(ctx.protocol_version, ctx.meta):
            return
    elif LOG_LEVELS.index(level) < LOG_LEVELS.index(STATE.log_levels.get(connection_key(ctx), "debug")):
        return
    notification = types.LoggingMessageNotification(
        params=types.LoggingMessageNotificationParams(level=level, data=message, logger="everything")
    )
    await ctx.session.send_notification(notification, related_request_id=ctx.request_id)


async def ask(
    ctx: Ctx, arguments: dict[str, Any], key: str, request: types.InputRequest, answer: type[ResultT]
) -> ResultT | types.InputRequiredResult:
    """A server→client request: sent on this request's stream (2025), or ``input_required`` (2026).

    On 2026-07-28 the client retries the call with ``inputResponses[key]``; that is the answer.
    """
    if modern(ctx):
        responses = (ctx.params or {}).get("inputResponses") or {}
        if key not in responses:
            return types.InputRequiredResult(input_requests={key: request})
        return answer.model_validate(responses[key], by_name=False)
    return await ctx.session.send_request(
        request, answer, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
    )


def lacks(ctx: Ctx, capability: str) -> bool:
    """The client did not declare ``capability`` (at the handshake, or in this 2026 request's envelope)."""
    caps = ctx.session.client_capabilities
    return caps is None or getattr(caps, capability) is None


# -- tools the conformance suite calls ----------------------------------------------------------


@tool("test_simple_text", "Returns a simple text response.")
async def simple_text(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    return ok("This is a simple text response for testing.")


@tool("test_image_content", "Returns an image (a 1x1 PNG).")
async def image_content(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    return types.CallToolResult(content=[types.ImageContent(type="image", data=PNG, mime_type="image/png")])


@tool("test_audio_content", "Returns audio (a tiny WAV).")
async def audio_content(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    return types.CallToolResult(content=[types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")])


def embedded(uri: str, mime_type: str, body: str) -> types.EmbeddedResource:
    contents = types.TextResourceContents(uri=uri, mime_type=mime_type, text=body)
    return types.EmbeddedResource(type="resource", resource=contents)


@tool("test_embedded_resource", "Returns an embedded text resource.")
async def embedded_resource(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    resource = embedded("test://embedded-resource", "text/plain", "This is an embedded resource content.")
    return types.CallToolResult(content=[resource])


@tool("test_multiple_content_types", "Returns text, an image and an embedded resource.")
async def multiple_content_types(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    body = json.dumps({"test": "data", "value": 123})
    return types.CallToolResult(
        content=[
            text("Multiple content types test:"),
            types.ImageContent(type="image", data=PNG, mime_type="image/png"),
            embedded("test://mixed-content-resource", "application/json", body),
        ]
    )


@tool("test_tool_with_logging", "Sends three info log messages while it runs.")
async def tool_with_logging(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    await log(ctx, "info", "Tool execution started")
    await anyio.sleep(NOTIFICATION_PACE)
    await log(ctx, "info", "Tool processing data")
    await anyio.sleep(NOTIFICATION_PACE)
    await log(ctx, "info", "Tool execution completed")
    return ok("Tool with logging executed successfully")


@tool("test_error_handling", "Always fails with a tool error (isError).")
async def error_handling(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    return failed("This tool intentionally returns an error for testing")


@tool("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100 when given a progress token.")
async def tool_with_progress(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    for step in (0, 50, 100):
        if step:
            await anyio.sleep(NOTIFICATION_PACE)
        await ctx.session.report_progress(step, 100, f"Completed step {step} of 100")
    token = (ctx.meta or {}).get("progress_token")
    return ok(f"Progress reported (token {token!r})")


@tool(
    "test_sampling", "Asks the client's LLM (sampling/createMessage).", string_args("prompt"), read_only=False
)
async def sampling(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    if lacks(ctx, "sampling"):
        return failed("The client does not support sampling (no sampling capability).")
    message = types.SamplingMessage(role="user", content=text(str(arguments.get("prompt", ""))))
    request = types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(messages=[message], max_tokens=100)
    )
    got = await ask(ctx, arguments, "sampling", request, types.CreateMessageResult)
    if isinstance(got, types.InputRequiredResult):
        return got
    reply = got.content.text if isinstance(got.content, types.TextContent) else f"<{got.content.type}>"
    return ok(f"LLM response: {reply}")


async def elicit_form(
    ctx: Ctx, arguments: dict[str, Any], message: str, schema: dict[str, Any]
) -> ToolResult:
    if lacks(ctx, "elicitation"):
        return failed("The client does not support elicitation (no elicitation capability).")
    request = types.ElicitRequest(
        params=types.ElicitRequestFormParams(message=message, requested_schema=schema)
    )
    got = await ask(ctx, arguments, "elicitation", request, types.ElicitResult)
    if isinstance(got, types.InputRequiredResult):
        return got
    content = json.dumps(got.content or {}, sort_keys=True)
    return ok(f"Elicitation completed: action={got.action}, content={content}")


@tool("test_elicitation", "Asks the user for a username and e-mail.", string_args("message"), read_only=False)
async def elicitation(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }
    return await elicit_form(ctx, arguments, str(arguments.get("message", "")), schema)


SEP1034_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
}


@tool(
    "test_elicitation_sep1034_defaults",
    "Elicits with a default for every primitive type (SEP-1034).",
    read_only=False,
)
async def elicitation_sep1034_defaults(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    return await elicit_form(ctx, arguments, "Please review your information", SEP1034_SCHEMA)


def titled(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"const": value, "title": title} for value, title in pairs]


SEP1330_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": titled(
                ("value1", "First Option"), ("value2", "Second Option"), ("value3", "Third Option")
            ),
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": titled(
                    ("value1", "First Choice"), ("value2", "Second Choice"), ("value3", "Third Choice")
                )
            },
        },
    },
}


@tool(
    "test_elicitation_sep1330_enums",
    "Elicits with all five enum schema variants (SEP-1330).",
    read_only=False,
)
async def elicitation_sep1330_enums(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    return await elicit_form(ctx, arguments, "Please choose", SEP1330_SCHEMA)


JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


@tool("json_schema_2020_12_tool", "Tool with JSON Schema 2020-12 features", JSON_SCHEMA_2020_12)
async def json_schema_2020_12_tool(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    return structured({"received": arguments})


@tool("test_reconnection", "Closes its SSE stream mid-call; the result arrives after the client reconnects.")
async def reconnection(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    await log(ctx, "info", "Before disconnect")
    if ctx.close_sse_stream is not None:
        await ctx.close_sse_stream()
        await anyio.sleep(0.2)  # the result is stored in the event store and replayed on reconnect
    await log(ctx, "info", "After reconnect")
    return ok("Reconnection test completed")


# -- tools for what a proxy must relay ----------------------------------------------------------


@tool(
    "test_elicitation_url",
    "Asks the user to visit a URL (URL-mode elicitation).",
    string_args("url"),
    read_only=False,
)
async def elicitation_url(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    caps = ctx.session.client_capabilities
    if caps is None or caps.elicitation is None or caps.elicitation.url is None:
        return failed("The client does not support URL elicitation (no elicitation.url capability).")
    params = types.ElicitRequestURLParams(
        message="Please finish this step in your browser.",
        url=str(arguments.get("url", "https://example.com/authorize")),
        elicitation_id=None if modern(ctx) else f"elicit-{ctx.request_id}",
    )
    got = await ask(ctx, arguments, "url_elicitation", types.ElicitRequest(params=params), types.ElicitResult)
    if isinstance(got, types.InputRequiredResult):
        return got
    return ok(f"URL elicitation: action={got.action}")


@tool("test_list_roots", "Asks the client for its roots (roots/list) and returns them.")
async def list_roots(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    if lacks(ctx, "roots"):
        return failed("The client does not support roots (no roots capability).")
    got = await ask(ctx, arguments, "roots", types.ListRootsRequest(), types.ListRootsResult)
    if isinstance(got, types.InputRequiredResult):
        return got
    roots = [{"uri": str(r.uri), **({"name": r.name} if r.name is not None else {})} for r in got.roots]
    return structured({"roots": roots, "list_changed_notifications": STATE.roots_changed})


@tool(
    "test_update_resource",
    f"Changes {WATCHED_URI} and notifies its subscribers (resources/updated).",
    read_only=False,
)
async def update_resource(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    STATE.watched_version += 1
    await STATE.bus.publish(ResourceUpdated(uri=WATCHED_URI))
    for key, session in list(STATE.subscribers.get(WATCHED_URI, {}).items()):
        try:
            await session.send_resource_updated(WATCHED_URI)
        except Exception:  # a subscriber that went away is dropped, the others still hear
            logger.info("dropping resource subscriber %s: its connection is gone", key)
            STATE.subscribers[WATCHED_URI].pop(key, None)
    return structured({"uri": WATCHED_URI, "version": STATE.watched_version})


@tool(
    "test_trigger_tool_change",
    f"Adds or removes {DYNAMIC_TOOL} and says so (tools/list_changed).",
    read_only=False,
)
async def trigger_tool_change(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    STATE.dynamic_tool = not STATE.dynamic_tool
    await STATE.bus.publish(ToolsListChanged())
    if not modern(ctx):
        await ctx.session.send_tool_list_changed()
    return structured({"tool": DYNAMIC_TOOL, "listed": STATE.dynamic_tool})


@tool(
    "test_slow_progress",
    "Runs for steps x interval_ms, reporting progress after each step.",
    {
        "type": "object",
        "properties": {
            "steps": {"type": "integer", "minimum": 1},
            "interval_ms": {"type": "integer", "minimum": 0},
        },
        "required": ["steps", "interval_ms"],
    },
)
async def slow_progress(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    steps, interval = int(arguments["steps"]), int(arguments["interval_ms"]) / 1000
    for step in range(1, steps + 1):
        await anyio.sleep(interval)
        await ctx.session.report_progress(step, steps, f"step {step} of {steps}")
    return ok(f"finished {steps} steps")


@tool("test_echo_meta", "Returns the request's _meta and arguments as it received them.")
async def echo_meta(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    return structured({"meta": dict((ctx.params or {}).get("_meta") or {}), "arguments": arguments})


async def dynamic_tool(ctx: Ctx, arguments: dict[str, Any]) -> ToolResult:
    return ok("the dynamic tool ran")


DYNAMIC = types.Tool(
    name=DYNAMIC_TOOL,
    description="Listed only while test_trigger_tool_change has it on.",
    input_schema={"type": "object", "properties": {}},
    annotations=types.ToolAnnotations(read_only_hint=True),
)


# -- request handlers ---------------------------------------------------------------------------


async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    tools = [t for t, _ in TOOLS.values()]
    return types.ListToolsResult(tools=[*tools, DYNAMIC] if STATE.dynamic_tool else tools)


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> ToolResult:
    if params.name == DYNAMIC_TOOL and STATE.dynamic_tool:
        return await dynamic_tool(ctx, params.arguments or {})
    if params.name not in TOOLS:
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
    return await TOOLS[params.name][1](ctx, params.arguments or {})


RESOURCES = [
    types.Resource(
        uri="test://static-text",
        name="static-text",
        description="A static text resource",
        mime_type="text/plain",
    ),
    types.Resource(
        uri="test://static-binary",
        name="static-binary",
        description="A static binary resource (a PNG)",
        mime_type="image/png",
    ),
    types.Resource(
        uri=WATCHED_URI,
        name="watched-resource",
        description="Changes when test_update_resource runs; subscribe to hear about it",
        mime_type="text/plain",
    ),
]


async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=RESOURCES)


async def list_templates(
    ctx: Ctx, params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    template = types.ResourceTemplate(
        uri_template=TEMPLATE,
        name="template-data",
        description="Data for one id",
        mime_type="application/json",
    )
    return types.ListResourceTemplatesResult(resource_templates=[template])


async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    contents: types.TextResourceContents | types.BlobResourceContents
    if uri == "test://static-text":
        contents = types.TextResourceContents(
            uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
        )
    elif uri == "test://static-binary":
        contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)
    elif uri == WATCHED_URI:
        contents = types.TextResourceContents(
            uri=uri, mime_type="text/plain", text=f"Watched resource content, version {STATE.watched_version}"
        )
    elif uri.startswith("test://template/") and uri.endswith("/data") and uri.count("/") == 4:
        item = uri.split("/")[3]
        body = json.dumps({"id": item, "templateTest": True, "data": f"Data for ID: {item}"})
        contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=body)
    else:
        raise MCPError(types.INVALID_PARAMS, f"Resource not found: {uri}", {"uri": uri})
    return types.ReadResourceResult(contents=[contents])


async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    STATE.subscribers.setdefault(str(params.uri), {})[connection_key(ctx)] = ctx.session
    return types.EmptyResult()


async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    STATE.subscribers.get(str(params.uri), {}).pop(connection_key(ctx), None)
    return types.EmptyResult()


def prompt_argument(name: str, description: str) -> types.PromptArgument:
    return types.PromptArgument(name=name, description=description, required=True)


PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A simple prompt without arguments"),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with two required arguments",
        arguments=[
            prompt_argument("arg1", "First test argument"),
            prompt_argument("arg2", "Second test argument"),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt that embeds a resource",
        arguments=[prompt_argument("resourceUri", "URI of the resource to embed")],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt that includes an image"),
]


async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=PROMPTS)


def user(content: types.ContentBlock) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    args = params.arguments or {}
    declared = next((p for p in PROMPTS if p.name == params.name), None)
    if declared is None:
        raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
    missing = [a.name for a in declared.arguments or [] if a.required and a.name not in args]
    if missing:
        raise MCPError(types.INVALID_PARAMS, f"Missing required arguments: {', '.join(missing)}")
    if params.name == "test_simple_prompt":
        messages = [user(text("This is a simple prompt for testing."))]
    elif params.name == "test_prompt_with_arguments":
        messages = [user(text(f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"))]
    elif params.name == "test_prompt_with_embedded_resource":
        resource = embedded(args["resourceUri"], "text/plain", "Embedded resource content for testing.")
        messages = [user(resource), user(text("Please process the embedded resource above."))]
    else:
        image = types.ImageContent(type="image", data=PNG, mime_type="image/png")
        messages = [user(image), user(text("Please analyze the image above."))]
    return types.GetPromptResult(description=declared.description, messages=messages)


COMPLETIONS = {
    ("test_prompt_with_arguments", "arg1"): ["paris", "park", "party", "test", "testing"],
    ("test_prompt_with_arguments", "arg2"): ["alpha", "beta", "gamma"],
    (TEMPLATE, "id"): ["1", "12", "123", "42"],
}


async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
    ref = params.ref
    target = ref.name if isinstance(ref, types.PromptReference) else ref.uri
    options = COMPLETIONS.get((target, params.argument.name), [])
    values = [v for v in options if v.startswith(params.argument.value)]
    return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


async def set_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    STATE.log_levels[connection_key(ctx)] = params.level
    return types.EmptyResult()


async def roots_changed(ctx: Ctx, params: types.NotificationParams) -> None:
    STATE.roots_changed += 1


class EverythingServer(Server[Any]):
    """The low-level server, announcing ``listChanged`` for tools on every transport."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        notification_options = notification_options or NotificationOptions(tools_changed=True)
        return super().create_initialization_options(
            notification_options, experimental_capabilities, extensions
        )


def build() -> EverythingServer:
    server = EverythingServer(
        "everything-fixture",
        version="1.0.0",
        instructions="Conformance fixture: test_* tools, test:// resources and templates, test_* prompts.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_subscriptions_listen=ListenHandler(STATE.bus),
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
    )
    # Logging and roots are 2025-era features (deprecated in 2026-07-28); registered directly so
    # the constructor does not warn on every start.
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    server.add_notification_handler(
        "notifications/roots/list_changed", types.NotificationParams, roots_changed
    )
    return server


class MemoryEventStore(EventStore):
    """Events kept in memory (bounded) so a client that reconnects with Last-Event-ID catches up."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._events: list[tuple[str, int, types.JSONRPCMessage | None]] = []
        self._next = 0

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        self._next += 1
        self._events.append((stream_id, self._next, message))
        del self._events[: max(0, len(self._events) - self.LIMIT)]
        return str(self._next)

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        if not last_event_id.isdigit():
            return None
        after = int(last_event_id)
        stream = next((s for s, n, _ in self._events if n == after), None)
        if stream is None:
            return None
        for s, n, message in list(self._events):
            if s == stream and n > after and message is not None:
                await send_callback(EventMessage(message, str(n)))
        return stream


async def serve_http(port: int) -> None:
    import uvicorn

    server = build()
    app = server.streamable_http_app(event_store=MemoryEventStore(), retry_interval=100, host="127.0.0.1")
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    await uvicorn.Server(config).serve()


async def serve_stdio() -> None:
    server = build()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp"
    )
    options = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    if options.http is not None:
        anyio.run(serve_http, options.http)
    else:
        anyio.run(serve_stdio)


if __name__ == "__main__":
    main()
