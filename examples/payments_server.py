"""A small payments MCP server whose side effects can be counted.

Every execution of a side-effecting tool appends one JSON line to the ledger
(``$PAYMENTS_LEDGER``, default ``payments-ledger.jsonl`` in the working directory),
flushed and fsynced before the tool returns: a test counts lines to know how many
times something really ran. A few hooks make failure modes testable without sleeps:
``slow_op`` holds a call mid-flight until a gate file appears, ``crash_op`` kills the
process mid-call, ``fail_op`` returns a tool error, ``effect_then_error`` acts and then answers
a JSON-RPC internal error, ``picky_op`` refuses with "invalid params" (before acting) until
a gate file exists.

Run over stdio (default) or streamable HTTP: ``python payments_server.py --http PORT``.
Logs go to stderr only; stdout is the protocol.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    TextContent,
    TextResourceContents,
    ToolAnnotations,
)

logger = logging.getLogger("payments_server")

GATE_POLL_SECONDS = 0.005
GATE_LIMIT_SECONDS = 60.0
# A 1x1 transparent PNG: small, valid, and binary.
PIXEL_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e5273fde0000000049454e44ae426082"
    )
).decode()

mcp = MCPServer("payments", instructions="Invoices, e-mails and charges; every effect is in the ledger.")


class Invoice(TypedDict):
    """The structured result of ``create_invoice``."""

    invoice_id: str
    customer: str
    amount: float
    currency: str


def ledger_path() -> Path:
    return Path(os.environ.get("PAYMENTS_LEDGER", "payments-ledger.jsonl"))


def append_ledger(tool: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Record one execution durably before anything is returned to the caller."""
    line = {"tool": tool, "args": args, "pid": os.getpid(), "at": time.time(), **extra}
    with ledger_path().open("a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return line


def read_ledger() -> list[dict[str, Any]]:
    path = ledger_path()
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@mcp.tool(description="Create an invoice for a customer.")
def create_invoice(
    customer: str,
    amount: float,
    currency: str = "EUR",
    trace_id: str | None = None,
    card_number: str | None = None,
) -> Invoice:
    invoice: Invoice = {
        "invoice_id": f"inv_{uuid.uuid4().hex[:12]}",
        "customer": customer,
        "amount": amount,
        "currency": currency,
    }
    args = {"customer": customer, "amount": amount, "currency": currency, "trace_id": trace_id}
    if card_number is not None:
        args["card_number"] = card_number
    append_ledger("create_invoice", args, result=dict(invoice))
    return invoice


@mcp.tool(description="Send an e-mail.")
def send_email(to: str, subject: str, body: str) -> str:
    append_ledger("send_email", {"to": to, "subject": subject, "body": body})
    return f"sent to {to}"


@mcp.tool(description="Read one invoice.", annotations=ToolAnnotations(read_only_hint=True))
def get_invoice(invoice_id: str) -> dict[str, Any]:
    for line in read_ledger():
        if line["tool"] == "create_invoice" and line.get("result", {}).get("invoice_id") == invoice_id:
            return dict(line["result"])
    raise ValueError(f"no invoice {invoice_id}")


@mcp.tool(description="List every invoice.", annotations=ToolAnnotations(read_only_hint=True))
def list_invoices() -> list[dict[str, Any]]:
    return [dict(line["result"]) for line in read_ledger() if line["tool"] == "create_invoice"]


@mcp.tool(description="Test hook: report this process's id (no side effect).")
def whoami() -> dict[str, int]:
    return {"pid": os.getpid(), "ppid": os.getppid()}


@mcp.tool(description="Test hook: start, wait until gate_file exists, then finish.")
async def slow_op(label: str, gate_file: str) -> str:
    append_ledger("slow_op", {"label": label, "gate_file": gate_file}, phase="started")
    gate = anyio.Path(gate_file)
    with anyio.fail_after(GATE_LIMIT_SECONDS):
        while not await gate.exists():  # noqa: ASYNC110 - the gate is a file another process creates
            await anyio.sleep(GATE_POLL_SECONDS)
    append_ledger("slow_op", {"label": label, "gate_file": gate_file}, phase="finished")
    return f"finished {label}"


@mcp.tool(description="Test hook: a tool that runs and reports failure.")
def fail_op(reason: str) -> CallToolResult:
    append_ledger("fail_op", {"reason": reason})
    return CallToolResult(content=[TextContent(type="text", text=f"failed: {reason}")], is_error=True)


@mcp.tool(description="Test hook: returns non-text content (an image and an embedded resource).")
def image_op() -> CallToolResult:
    append_ledger("image_op", {})
    return CallToolResult(
        content=[
            ImageContent(type="image", data=PIXEL_PNG, mime_type="image/png"),
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(uri="ledger://receipt", mime_type="text/plain", text="receipt"),
            ),
            EmbeddedResource(
                type="resource",
                resource=BlobResourceContents(uri="ledger://pixel", mime_type="image/png", blob=PIXEL_PNG),
            ),
        ]
    )


@mcp.tool(description="Test hook: the process dies mid-call, after its side effect.")
def crash_op(label: str | None = None) -> str:
    append_ledger("crash_op", {} if label is None else {"label": label})
    os._exit(1)


# A tool's own exception becomes an isError result; an MCPError is passed through by MCPServer
# and goes on the wire as a JSON-RPC error response with its code.
@mcp.tool(description="Test hook: acts (one ledger line), then answers a JSON-RPC internal error (-32603).")
def effect_then_error(label: str) -> str:
    append_ledger("effect_then_error", {"label": label})
    raise MCPError(code=INTERNAL_ERROR, message="internal error after the effect")


@mcp.tool(
    description="Test hook: refuses with invalid params (-32602), before acting, until gate_file exists."
)
def picky_op(label: str, gate_file: str) -> str:
    if not Path(gate_file).exists():
        raise MCPError(code=INVALID_PARAMS, message="invalid params: not yet")
    append_ledger("picky_op", {"label": label, "gate_file": gate_file})
    return f"done {label}"


@mcp.tool(description="Quote the fee on an amount.", annotations=ToolAnnotations(read_only_hint=True))
def quote_fee(amount: float) -> dict[str, float]:
    return {"amount": amount, "fee": round(amount * 0.029 + 0.3, 2)}


@contextmanager
def _charging() -> Iterator[None]:
    """One check-then-charge at a time across every process on this ledger (several gateways may
    each run a server, and a gateway re-sends a forwarded key while the first send may still run)."""
    with ledger_path().with_name(ledger_path().name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _charge_once(tool: str, amount: float, idempotency_key: str, **extra: Any) -> dict[str, Any]:
    """The key's earlier charge, or a new one: the ledger is the dedupe state, so a restarted
    server still knows every key."""
    with _charging():
        for line in read_ledger():
            if (
                line["tool"] == tool
                and line.get("phase") == extra.get("phase")
                and line["args"].get("idempotency_key") == idempotency_key
            ):
                return dict(line["result"])
        result = {"charge_id": f"ch_{uuid.uuid4().hex[:12]}", "amount": amount}
        append_ledger(tool, {"amount": amount, "idempotency_key": idempotency_key}, result=result, **extra)
        return result


@mcp.tool(description="Charge an amount; natively idempotent: the same key returns the same charge.")
def native_charge(amount: float, idempotency_key: str) -> dict[str, Any]:
    return _charge_once("native_charge", amount, idempotency_key)


@mcp.tool(description="Charge once the gate file exists; natively idempotent like native_charge.")
async def slow_charge(amount: float, idempotency_key: str, gate_file: str) -> dict[str, Any]:
    append_ledger("slow_charge", {"amount": amount, "idempotency_key": idempotency_key}, phase="waiting")
    gate = anyio.Path(gate_file)
    with anyio.fail_after(GATE_LIMIT_SECONDS):
        while not await gate.exists():  # noqa: ASYNC110 - the gate is a file another process creates
            await anyio.sleep(GATE_POLL_SECONDS)
    return await anyio.to_thread.run_sync(
        lambda: _charge_once("slow_charge", amount, idempotency_key, phase="charged")
    )


@mcp.tool(description="Consume one queue message (at-least-once delivery: a redelivery repeats the id).")
def consume_message(message_id: str, body: str) -> str:
    append_ledger("consume_message", {"message_id": message_id, "body": body})
    return f"consumed {message_id}"


@mcp.tool(description="Test hook: the HTTP request headers this call arrived with (HTTP only).")
def echo_headers(ctx: Context) -> dict[str, str]:
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    return {k.lower(): v for k, v in headers.items()} if headers is not None else {}


@mcp.tool(
    description="Test hook: the _meta this call arrived with (trace context, forwarded keys).",
    annotations=ToolAnnotations(read_only_hint=True),
)
def echo_meta(ctx: Context) -> dict[str, Any]:
    return dict(ctx.request_context.meta or {})


@mcp.resource("ledger://summary", name="ledger-summary", mime_type="application/json")
def ledger_summary() -> str:
    counts: dict[str, int] = {}
    for line in read_ledger():
        counts[line["tool"]] = counts.get(line["tool"], 0) + 1
    return json.dumps({"lines": sum(counts.values()), "by_tool": counts})


@mcp.prompt(description="Ask for a dunning e-mail for one customer.")
def dunning_letter(customer: str) -> str:
    return f"Write a polite reminder to {customer} about their unpaid invoices."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT")
    options = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    if options.http is not None:
        anyio.run(lambda: mcp.run_streamable_http_async(host="127.0.0.1", port=options.http))
    else:
        anyio.run(mcp.run_stdio_async)


if __name__ == "__main__":
    main()
