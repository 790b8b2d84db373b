"""``idem-gateway demo``: a flaky agent's retries, deduplicated, proven by the downstream's ledger.

Self-contained: a temporary folder holds a manifest for the example payments server, its ledger
and (unless ``--store`` is given) the SQLite store. The gateway runs as a real subprocess
(``python -m gateway serve``) and a real ``mcp.Client`` drives it over stdio, scripted like an
agent on a bad network:

    normal call          → executed
    lost response        → the same key again → replayed
    client timeout       → the client gives up, the call still finishes (cancel = "finish"),
                           the retry gets its result → replayed
    double submit        → two calls with one key at the same moment → one execution
    changed amount       → a key reused for another payload → idempotency_key_conflict
    downstream timeout   → outcome_unknown, and so is the retry: never re-run blindly

The verdict comes from the ledger the example server writes on every execution, not from the
gateway's own account: every intent ran at most once, and a refused payload never ran.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from gateway import meta

EXAMPLE_SERVER = Path(__file__).resolve().parent.parent / "examples" / "payments_server.py"
CLIENT_TIMEOUT = 0.5  # the agent's patience on the slow call, in seconds
UNKNOWN_TIMEOUT = "400ms"  # the settlement server's downstream timeout: past it the outcome is unknown
COSTS = {"create_invoice": 0.30, "send_email": 0.01, "slow_op": 1.00}
RUN_LIMIT = 60.0


@dataclass(frozen=True, slots=True)
class Intent:
    """One action the agent means to take once; ``match`` finds its executions in the ledger."""

    name: str
    tool: str
    arguments: dict[str, Any]
    match: dict[str, Any]
    key: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(slots=True)
class Step:
    """One call the agent made and what it got back."""

    label: str
    tool: str
    outcome: str  # executed | replayed | <error code> | client_gave_up | read_only


@dataclass(slots=True)
class Run:
    steps: list[Step] = field(default_factory=list)
    intents: list[Intent] = field(default_factory=list)
    refused: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # payloads that must not run


def _manifest(folder: Path, ledger: Path) -> None:
    """Two manifests for the example server: payments, and a settlement step with a short timeout."""
    folder.mkdir(parents=True, exist_ok=True)
    common = (
        'transport = "stdio"\n'
        f"command = {json.dumps(sys.executable)}\n"
        f"args = [{json.dumps(str(EXAMPLE_SERVER))}]\n"
        f"env = {{ PAYMENTS_LEDGER = {json.dumps(str(ledger))} }}\n"
        'expose = "listed"\n'
    )
    (folder / "payments.toml").write_text(
        '[server]\nname = "payments"\n' + common + 'timeout = "30s"\n\n'
        '[defaults]\nin_flight = "wait"\nwait = "30s"\ncancel = "finish"\n\n'
        "[tools.create_invoice]\nside_effects = true\n"
        f'fingerprint_exclude = ["trace_id"]\ncost = {COSTS["create_invoice"]}\n\n'
        f"[tools.send_email]\nside_effects = true\ncost = {COSTS['send_email']}\n\n"
        f"[tools.slow_op]\nside_effects = true\ncost = {COSTS['slow_op']}\n\n"
        "[tools.list_invoices]\nside_effects = false\n"
    )
    (folder / "settlement.toml").write_text(
        '[server]\nname = "settlement"\ntool_prefix = "settlement_"\n'
        + common
        + f'timeout = "{UNKNOWN_TIMEOUT}"\n\n'
        f"[tools.slow_op]\nside_effects = true\ncost = {COSTS['slow_op']}\n"
    )


def _outcome(result: Any) -> str:
    return meta.outcome_of(result.meta) or "read_only"


def _ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _executions(lines: list[dict[str, Any]], tool: str, match: dict[str, Any]) -> int:
    """Ledger lines of one execution of ``tool`` with these arguments (a slow call's end is not another)."""
    return sum(
        1
        for line in lines
        if line.get("tool") == tool
        and line.get("phase") != "finished"
        and all(line.get("args", {}).get(k) == v for k, v in match.items())
    )


async def _script(client: Client, tmp: Path, run: Run) -> None:
    """The flaky agent."""

    async def call(label: str, intent: Intent, *, tool: str | None = None, **override: Any) -> Any:
        name = tool or intent.tool
        arguments = {**intent.arguments, **override, "idempotency_key": intent.key}
        result = await client.call_tool(name, arguments)
        run.steps.append(Step(label, name, _outcome(result)))
        return result

    def intent(name: str, tool: str, arguments: dict[str, Any], *match_keys: str) -> Intent:
        made = Intent(name, tool, arguments, {k: arguments[k] for k in match_keys})
        run.intents.append(made)
        return made

    # 1. A normal call, then the same call again: the agent never saw the first response.
    acme = intent(
        "invoice acme 120.00",
        "create_invoice",
        {"customer": "acme", "amount": 120.0, "currency": "EUR", "trace_id": "t-1"},
        "customer",
        "amount",
    )
    await call("create_invoice acme 120.00", acme)
    await call("  response lost, retry (new trace_id)", acme, trace_id="t-2")
    await call("  retry again", acme, trace_id="t-3")

    # 2. The client times out while the call is still running; the gateway lets it finish.
    gate = tmp / "settle-gate"
    batch = intent("settle batch 7", "slow_op", {"label": "settle batch 7", "gate_file": str(gate)}, "label")
    try:
        await client.call_tool(
            "slow_op", {**batch.arguments, "idempotency_key": batch.key}, read_timeout_seconds=CLIENT_TIMEOUT
        )
        run.steps.append(Step("slow_op settle batch 7", "slow_op", "executed"))
    except MCPError:
        run.steps.append(Step("slow_op settle batch 7 (client times out)", "slow_op", "client_gave_up"))
    gate.touch()  # the slow downstream work completes after the client stopped listening
    await call("  retry after the client timeout", batch)
    await call("  retry again", batch)

    # 3. A double submit: the same intent sent twice at the same moment.
    email = intent(
        "e-mail acme",
        "send_email",
        {"to": "billing@acme.example", "subject": "Invoice for March", "body": "Please find it attached."},
        "subject",
    )
    async with anyio.create_task_group() as tg:
        for n in (1, 2):
            tg.start_soon(call, f"send_email (double submit #{n})", email)

    # 4. A key reused with a changed amount: refused, nothing runs.
    changed = {**acme.arguments, "amount": 1200.0, "idempotency_key": acme.key}
    result = await client.call_tool("create_invoice", changed)
    run.steps.append(
        Step("create_invoice acme, same key, amount 1200.00", "create_invoice", _outcome(result))
    )
    run.refused.append(("create_invoice", {"customer": "acme", "amount": 1200.0}))

    # 5. The downstream times out: the outcome is unknown, and a retry must not run it again.
    stuck = intent(
        "settle batch 8",
        "slow_op",
        {"label": "settle batch 8", "gate_file": str(tmp / "never-opens")},
        "label",
    )
    await call("settlement_slow_op batch 8 (downstream times out)", stuck, tool="settlement_slow_op")
    await call("  retry after the unknown outcome", stuck, tool="settlement_slow_op")

    # 6. Normal work: another invoice, and a read.
    globex = intent(
        "invoice globex 80.00",
        "create_invoice",
        {"customer": "globex", "amount": 80.0, "currency": "EUR"},
        "customer",
        "amount",
    )
    await call("create_invoice globex 80.00", globex)
    listed = await client.call_tool("list_invoices", {})
    run.steps.append(Step("list_invoices (read-only: no key needed)", "list_invoices", _outcome(listed)))


def _report(run: Run, ledger: list[dict[str, Any]], stats: dict[str, Any] | None) -> dict[str, Any]:
    count: Callable[[str], int] = lambda o: sum(1 for s in run.steps if s.outcome == o)  # noqa: E731
    ran = [_executions(ledger, i.tool, i.match) for i in run.intents]
    per_intent = [
        {"intent": i.name, "tool": i.tool, "executions": n} for i, n in zip(run.intents, ran, strict=True)
    ]
    refused_ran = sum(_executions(ledger, tool, match) for tool, match in run.refused)
    executions = sum(1 for line in ledger if line.get("phase") != "finished")
    replayed = [s for s in run.steps if s.outcome == "replayed"]
    spend = round(sum(COSTS.get(s.tool.removeprefix("settlement_"), 0.0) for s in replayed), 6)
    ok = all(n == 1 for n in ran) and refused_ran == 0 and executions == len(run.intents) == sum(ran)
    return {
        "calls": len(run.steps),
        "intents": len(run.intents),
        "executions": executions,
        "duplicates_prevented": len(replayed),
        "conflicts": count("idempotency_key_conflict"),
        "unknowns": count("outcome_unknown"),
        "client_timeouts": count("client_gave_up"),
        "spend_prevented": spend,
        "by_outcome": {o: count(o) for o in sorted({s.outcome for s in run.steps})},
        "per_intent": per_intent,
        "refused_payloads_executed": refused_ran,
        "gateway_stats": stats,
        "no_duplicate_side_effects": ok,
    }


def _print_report(run: Run, report: dict[str, Any], out: TextIO) -> None:
    width = max(len(s.label) for s in run.steps) + 2
    print(
        "idem-gateway demo: a flaky agent against the example payments server, through the gateway\n",
        file=out,
    )
    for s in run.steps:
        print(f"  {s.label.ljust(width)}{s.outcome}", file=out)
    print("", file=out)
    rows = [
        ("calls made", str(report["calls"])),
        ("intents (distinct actions)", str(report["intents"])),
        ("executions downstream (ledger)", str(report["executions"])),
        ("duplicates prevented", str(report["duplicates_prevented"])),
        ("conflicts refused", str(report["conflicts"])),
        ("unknown outcomes (not re-run)", str(report["unknowns"])),
        ("spend prevented", f"{report['spend_prevented']:.2f}"),
    ]
    for name, value in rows:
        print(f"  {name:<32}{value:>8}", file=out)
    print("", file=out)
    if report["no_duplicate_side_effects"]:
        print("verdict: no duplicate side effects (every intent ran exactly once, per the ledger)", file=out)
    else:
        print("verdict: DUPLICATE OR MISSING SIDE EFFECTS, per the ledger:", file=out)
        for i in report["per_intent"]:
            print(f"  {i['intent']}: {i['executions']} execution(s)", file=out)
        print(f"  refused payloads executed: {report['refused_payloads_executed']}", file=out)


async def _gateway_stats(client: Client) -> dict[str, Any] | None:
    """The gateway's own account (audit://stats), for comparison; the verdict does not rely on it."""
    try:
        read = await client.read_resource("audit://stats")
    except MCPError:
        return None
    for item in read.contents:
        text = getattr(item, "text", None)
        if text:
            stats = json.loads(text)
            return {k: stats.get(k) for k in ("duplicates_prevented", "spend_prevented", "unknown_open")}
    return None


async def run_demo(args: argparse.Namespace) -> int:
    if not EXAMPLE_SERVER.exists():
        print(f"demo: the example server is missing ({EXAMPLE_SERVER}); run from a checkout", file=sys.stderr)
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="idem-gateway-demo-") as tmp_name:
        tmp = Path(tmp_name)
        ledger = tmp / "ledger.jsonl"
        _manifest(tmp / "manifests", ledger)
        store = args.store or f"sqlite:///{tmp / 'gateway.db'}"
        # A principal of its own, so that a reused --store does not mix earlier runs into the stats.
        principal = f"demo-{uuid.uuid4().hex[:8]}"
        params = StdioServerParameters(
            command=sys.executable,
            args=[
                *("-m", "gateway", "serve", "--manifests", str(tmp / "manifests")),
                *("--store", store, "--principal", principal),
                # A store of its own gets a secret of its own, in the temporary folder too; a
                # given --store uses the default secret, as any gateway on that store would.
                *(() if args.store else ("--secret-file", str(tmp / "secret.key"))),
            ],
            env={**os.environ, "IDEM_GATEWAY_LOG_LEVEL": os.environ.get("IDEM_GATEWAY_LOG_LEVEL", "WARNING")},
            cwd=str(tmp),
        )
        log_path = tmp / "gateway.log"
        run = Run()
        try:
            with log_path.open("w") as log, anyio.fail_after(RUN_LIMIT):
                async with Client(stdio_client(params, errlog=log), cache=None) as client:
                    await _script(client, tmp, run)
                    stats = await _gateway_stats(client)
        except Exception as exc:
            print(f"demo: failed: {exc!r}; the gateway's log follows", file=sys.stderr)
            print(log_path.read_text()[-4000:], file=sys.stderr)
            return 1
        report = _report(run, _ledger(ledger), stats)
        report["seconds"] = round(time.monotonic() - started, 2)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(run, report, sys.stdout)
    return 0 if report["no_duplicate_side_effects"] else 1
