"""The TypeScript SDK's client as a test client: ``tests/js/ts_client.mjs`` driven by a JSON plan.

A 2025-11-25 client nobody here wrote (``@modelcontextprotocol/sdk`` 1.x from npm, run with
Node 22): it connects over stdio (spawning a command) or streamable HTTP, declares sampling,
elicitation (form and URL) and roots, answers the server's requests from scripted answers, runs a
list of operations and reports everything it saw. The plan's format is described at the top of
the driver; :func:`run_ts_client` writes it, runs the driver (bounded) and parses its report.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from tests import node

TS_SDK = "@modelcontextprotocol/sdk@1"
DRIVER = Path(__file__).resolve().parent / "js" / "ts_client.mjs"


def stdio(
    command: str, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> dict[str, Any]:
    """Connect by spawning ``command args`` (the driver's environment plus ``env``)."""
    connect: dict[str, Any] = {"command": command, "args": list(args), "env": dict(env or {})}
    if cwd is not None:
        connect["cwd"] = str(cwd)
    return connect


def http(url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Connect to a streamable HTTP endpoint."""
    return {"url": url, "headers": dict(headers or {})}


@dataclass(frozen=True)
class Report:
    """What the driver printed: one result per operation, every notification, every request answered."""

    raw: dict[str, Any]

    @property
    def initialize(self) -> dict[str, Any]:
        return dict(self.raw["initialize"] or {})

    @property
    def results(self) -> list[dict[str, Any]]:
        return list(self.raw["results"])

    def result(self, index: int) -> dict[str, Any]:
        """The result of operation ``index``; fails the test with the error if it failed."""
        entry = self.results[index]
        assert entry["ok"], f"operation {index} ({entry['op']}) failed: {entry['error']}"
        return dict(entry["result"])

    def error(self, index: int) -> dict[str, Any]:
        entry = self.results[index]
        assert not entry["ok"], f"operation {index} ({entry['op']}) succeeded: {entry['result']}"
        return dict(entry["error"])

    def notifications(self, method: str) -> list[dict[str, Any]]:
        return [n["params"] for n in self.raw["notifications"] if n["method"] == method]

    def requests(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.raw["requests"] if r["method"] == method]

    def errors(self) -> list[str]:
        """The client's errors, less one the TypeScript SDK raises by itself: it runs notification
        handlers a microtask later but its response handler at once, so a request's last progress
        notification read in the same chunk as its response finds the handler gone ("unknown
        token", ``Protocol._onprogress`` in ``@modelcontextprotocol/sdk`` 1.x). Dropped only when
        that notification is the final step (progress == total) and the report did receive it."""
        received = [json.dumps(p, sort_keys=True) for p in self.notifications("notifications/progress")]
        kept = []
        for error in self.raw["errors"]:
            late = error.removeprefix(LATE_PROGRESS)
            if late != error:
                params = json.loads(late).get("params", {})
                if (
                    params.get("progress") == params.get("total")
                    and json.dumps(params, sort_keys=True) in received
                ):
                    continue
            kept.append(error)
        return kept


LATE_PROGRESS = "Received a progress notification for an unknown token: "


async def run_ts_client(
    connect: Mapping[str, Any],
    operations: Sequence[Mapping[str, Any]],
    *,
    answers: Mapping[str, Any] | None = None,
    capabilities: Mapping[str, Any] | None = None,
    request_timeout: float = 30.0,
    timeout: float = 120.0,
) -> Report:
    """Run one plan to completion (killed past ``timeout`` seconds) and return the driver's report."""
    binary = await anyio.to_thread.run_sync(node.node22)
    sdk = await anyio.to_thread.run_sync(node.npm_package, TS_SDK, "@modelcontextprotocol/sdk")
    plan: dict[str, Any] = {
        "connect": dict(connect),
        "operations": [dict(op) for op in operations],
        "answers": dict(answers or {}),
        "timeoutMs": int(request_timeout * 1000),
    }
    if capabilities is not None:
        plan["capabilities"] = dict(capabilities)
    with tempfile.TemporaryDirectory(prefix="ts-client-") as tmp:
        path = Path(tmp) / "plan.json"
        await anyio.Path(path).write_text(json.dumps(plan))
        done = await node.run_node(binary, DRIVER, str(path), timeout=timeout, env={"TS_SDK_ROOT": str(sdk)})
    stdout, stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    try:
        raw = json.loads(stdout)
    except ValueError:
        raise AssertionError(
            f"the TS client printed no report (exit {done.returncode}):\n{stdout}\n{stderr}"
        ) from None
    assert done.returncode == 0, f"the TS client could not run its plan: {raw.get('fatal')}\n{stderr}"
    return Report(raw)
