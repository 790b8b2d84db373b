"""A test server that asks its client things, logs, reports progress and changes its lists, in
both protocol eras: the way a 2025-era server does it (requests mid-call, notifications on the
session) and the way a 2026-07-28 server does (``input_required`` rounds, per-request log
opt-in, ``subscriptions/listen``).

Run over stdio (default) or streamable HTTP (``--http PORT``). Every execution of ``keyed_ask``
appends one line to ``$RELAY_LEDGER`` before it returns, so a test can count what ran.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server import Server
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

warnings.simplefilter("ignore")  # the 2025-era helpers (sampling, logging) warn of 2026-07-28
Ctx = ServerRequestContext[Any, Any]

BUS = InMemorySubscriptionBus()
EXTRA_TOOLS: list[str] = []
LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LEVEL = ["debug"]  # the 2025-era logging/setLevel of this process's (one) connection
RESERVED = ("io.modelcontextprotocol/", "progressToken", "progress_token")


def _tool(name: str, properties: dict[str, Any] | None = None, **extra: Any) -> types.Tool:
    schema = {"type": "object", "properties": properties or {}}
    return types.Tool(name=name, input_schema=schema, **extra)


READ_ONLY = types.ToolAnnotations(read_only_hint=True)
TOOLS = [
    _tool("ask", {"method": {"type": "string"}, "text": {"type": "string"}}, annotations=READ_ONLY),
    _tool("keyed_ask", {"text": {"type": "string"}}),
    _tool("echo_meta", annotations=READ_ONLY),
    _tool("log_during_call", annotations=READ_ONLY),
    _tool(
        "progress_for", {"steps": {"type": "integer"}, "interval": {"type": "number"}}, annotations=READ_ONLY
    ),
    _tool("block", {"gate": {"type": "string"}, "note": {"type": "string"}}, annotations=READ_ONLY),
    _tool("add_tool", {"name": {"type": "string"}}, annotations=READ_ONLY),
]


def modern(ctx: Ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"resultType": "complete", "content": [{"type": "text", "text": value}], **extra}


def input_request(method: str, prompt: str) -> dict[str, Any]:
    if method == "sampling/createMessage":
        params: dict[str, Any] = {
            "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}],
            "maxTokens": 10,
        }
    elif method == "elicitation/create":
        params = {
            "message": prompt,
            "requestedSchema": {"type": "object", "properties": {"answer": {"type": "string"}}},
        }
    else:
        params = {}
    return {"method": method, "params": params}


def summarize(method: str, answer: dict[str, Any]) -> str:
    if method == "sampling/createMessage":
        return str(answer.get("content", {}).get("text"))
    if method == "elicitation/create":
        return f"{answer.get('action')}:{json.dumps(answer.get('content'), sort_keys=True)}"
    return ",".join(str(r.get("uri")) for r in answer.get("roots", []))


async def ask(ctx: Ctx, method: str, prompt: str) -> dict[str, Any] | str:
    """The answer to one question: the text, or (2026-07-28, first round) the input_required result."""
    if modern(ctx):
        answers = (ctx.params or {}).get("inputResponses") or {}
        if "q" in answers:
            return summarize(method, answers["q"])
        return {
            "resultType": "input_required",
            "inputRequests": {"q": input_request(method, prompt)},
            "requestState": "s1",
        }
    if method == "sampling/createMessage":
        message = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))
        sampled = await ctx.session.create_message(
            messages=[message], max_tokens=10, related_request_id=ctx.request_id
        )
        return summarize(method, sampled.model_dump(by_alias=True, mode="json"))
    if method == "elicitation/create":
        schema = input_request(method, prompt)["params"]["requestedSchema"]
        elicited = await ctx.session.elicit_form(prompt, schema, related_request_id=ctx.request_id)
        return summarize(method, elicited.model_dump(by_alias=True, mode="json"))
    roots = await ctx.session.list_roots()
    return summarize(method, roots.model_dump(by_alias=True, mode="json"))


def ledger(line: dict[str, Any]) -> None:
    path = Path(os.environ.get("RELAY_LEDGER", "relay-ledger.jsonl"))
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _note(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> dict[str, Any]:
    args = params.arguments or {}
    name = params.name
    if name in ("ask", "keyed_ask"):
        method = str(args.get("method", "sampling/createMessage"))
        answer = await ask(ctx, method, str(args.get("text", "")))
        if isinstance(answer, dict):
            return answer
        if name == "keyed_ask":
            ledger({"tool": name, "answer": answer})
        return text(answer)
    if name == "echo_meta":
        meta = {k: v for k, v in (ctx.meta or {}).items() if not k.startswith(RESERVED)}
        return text(
            json.dumps(meta, sort_keys=True),
            _meta={
                "relay/extra": "kept",
                "idem-gateway/outcome": "forged",
                types.SERVER_INFO_META_KEY: {"name": "x"},
            },
        )
    if name == "log_during_call":
        floor = LEVELS.index(LEVEL[0])
        for level in ("debug", "info", "warning", "error"):
            if not modern(ctx) and LEVELS.index(level) < floor:
                continue  # 2025 era: logging/setLevel filters (2026-07-28: the SDK's opt-in gate does)
            await ctx.session.send_log_message(
                level, f"log at {level}", "relay", related_request_id=ctx.request_id
            )
        return text("logged")
    if name == "progress_for":
        for step in range(int(args.get("steps", 3))):
            await anyio.sleep(float(args.get("interval", 0.0)))
            await ctx.session.report_progress(step + 1, float(args.get("steps", 3)), f"step {step + 1}")
        return text("done")
    if name == "block":
        # ``note``: a file that gets "started", then "cancelled" if the call is cancelled here.
        note = Path(str(args["note"])) if args.get("note") else None
        if note is not None:
            _note(note, "started")
        gate = anyio.Path(str(args["gate"]))
        try:
            with anyio.fail_after(120):
                while not await gate.exists():  # noqa: ASYNC110 - a test makes the file appear
                    await anyio.sleep(0.01)
        except anyio.get_cancelled_exc_class():
            if note is not None:
                _note(note, "cancelled")
            raise
        return text("released")
    if name == "add_tool":
        EXTRA_TOOLS.append(str(args["name"]))
        if modern(ctx):
            await BUS.publish(ToolsListChanged())
        else:
            await ctx.session.send_tool_list_changed()
        return text("added")
    if name in EXTRA_TOOLS:
        return text(f"{name} ran")
    return text(f"Unknown tool: {name}", isError=True)


async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    extra = [_tool(n, annotations=READ_ONLY) for n in EXTRA_TOOLS]
    return types.ListToolsResult(tools=[*TOOLS, *extra])


PROMPT = types.Prompt(name="greet", arguments=[types.PromptArgument(name="who", required=True)])


async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=[PROMPT])


async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> dict[str, Any]:
    who = (params.arguments or {}).get("who", "")
    label = os.environ.get("RELAY_LABEL", "relay")
    message = {"role": "user", "content": {"type": "text", "text": f"{label} greets {who}"}}
    return {"resultType": "complete", "messages": [message]}


async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=[types.Resource(uri="relay://static", name="static")])


async def list_templates(
    ctx: Ctx, params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    template = types.ResourceTemplate(uri_template="relay://item/{id}", name="item")
    return types.ListResourceTemplatesResult(resource_templates=[template])


async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> dict[str, Any]:
    uri = str(params.uri)
    label = os.environ.get("RELAY_LABEL", "relay")
    return {"resultType": "complete", "contents": [{"uri": uri, "text": f"{label}:{uri}"}]}


async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
    prefix = params.argument.value
    values = [v for v in ("alice", "albert", "bob") if v.startswith(prefix)]
    return types.CompleteResult(completion=types.Completion(values=values, has_more=False))


def server() -> Server[Any]:
    # The SDK serves a handler's plain dict result (``mcp.server.context.HandlerResult``) but types
    # the ``on_*`` parameters to the result models alone, and ``CACHEABLE_METHODS`` as
    # ``frozenset[str]`` rather than of ``CacheableMethod``: hence the targeted ignores below.
    made: Server[Any] = Server(
        "relay",
        version="1.0",
        instructions="The relay server asks, logs and reports progress.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,  # type: ignore[arg-type]
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,  # type: ignore[arg-type]
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,  # type: ignore[arg-type]
        on_completion=complete,
        on_subscriptions_listen=ListenHandler(BUS),
        cache_hints={m: CacheHint(ttl_ms=0, scope="private") for m in CACHEABLE_METHODS},  # type: ignore[misc]
    )

    async def set_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        LEVEL[0] = params.level
        return types.EmptyResult()

    made.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    return made


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=None)
    args = parser.parse_args()
    app = server()
    if args.http is None:
        async with stdio_server() as (read, write):
            await app.run(read, write, app.create_initialization_options())
        return
    config = uvicorn.Config(app.streamable_http_app(), host="127.0.0.1", port=args.http, log_level="warning")
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    anyio.run(main)
