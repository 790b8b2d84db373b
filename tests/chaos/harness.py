"""The chaos harness: gateway replicas over HTTP on one store, clients, faults, and the verdict.

Topology: N ``idem-gateway serve --transport http --stateless`` processes on one store (two on a
SQLite file, three on PostgreSQL), each with its own stdio ``examples/payments_server.py``, all
writing one ledger. Clients speak raw 2026-07-28 JSON-RPC over HTTP (one request, one answer,
no session), spread round-robin over the replicas; a refused connection goes to the next
replica (nothing was sent), anything else that is not an answer is "lost".

Each round mints new keys (each bound to one tool and one payload forever), and workers call
them, and older keys, concurrently: duplicates, bursts of three, retries across rounds (some
after the key's retention ended). Meanwhile one or two faults: a replica SIGKILLed (and
restarted on its port), SIGSTOPped then SIGCONTed, its downstream SIGKILLed, the store stalled
(SQLite: the write lock held; PostgreSQL: ``LOCK TABLE`` held, or every backend terminated).
Errors after the effect come from the tools themselves (``effect_then_error``, ``crash_op``);
gated calls outlive the downstream timeout or not, at random.

The verdict comes from the ledger (what ran) and the answers (what clients were told); see
``Verdict``. Every random choice comes from one seeded generator (``CHAOS_SEED`` replays the
choices; process timing is the machine's).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anyio.abc import Process
from sqlalchemy.engine import make_url

from tests.never_twice.kit import WriteLock, children, events, free_port, sqlite_path
from tests.support import Setup, alive, forwarded_key, new_key, read_ledger

MODERN = "2026-07-28"
CALL_BOUND = 25.0  # a client gives up on one call after this long ("lost")
START_BOUND = 60.0  # a replica restarted on a loaded machine: imports alone are ~2 s of CPU
ROUND_BOUND = 150.0  # a whole round, faults and restarts included: far more than it ever takes
LEASE_TTL = "1"
STORE_TIMEOUT = "1"  # SQLite busy timeout: a stall longer than this fails store operations
SHORT_RETENTION = 5.0  # >= timeout 3 s + lease 1 s, the loader's rule
CLOCK_TOLERANCE = 0.25  # seconds: the store clock's measured offset is sure to 0.1 s

# The tools under test: weight, and how a key's executions show in the ledger.
TOOLS: dict[str, float] = {
    "slow_op": 3.0,
    "create_invoice": 2.0,
    "effect_then_error": 1.0,
    "crash_op": 0.5,
    "native_charge": 1.5,
    "slow_charge": 1.0,
}
MANIFEST: dict[str, Any] = {
    "server": {"timeout": "3s"},
    "defaults": {"wait": "4s"},
    "tools": {
        # Short retention; after it a completed key may run anew ("execute"): a new incarnation.
        "slow_op": {"retention": "5s", "expired": "execute"},
        "effect_then_error": {"retention": "5s", "expired": "execute"},
        "crash_op": {"retention": "5s", "expired": "execute"},
        # Short retention; after it the key is refused ("reject").
        "create_invoice": {"retention": "5s", "expired": "reject"},
    },
}
# Seconds a completed key is replayed before it may run anew (the others: the default, a day).
RETENTION = {tool: SHORT_RETENTION for tool in MANIFEST["tools"]}


# ---- one replica ----------------------------------------------------------------------------------


@dataclass
class Replica:
    """One gateway process on a fixed port; restarted on the same port after a kill."""

    index: int
    setup: Setup
    port: int = field(default_factory=free_port)
    process: Process | None = None
    up: bool = False
    starts: int = 0
    downstreams: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--transport",
            "http",
            "--port",
            str(self.port),
            "--stateless",
            "--manifests",
            str(self.setup.manifests),
            "--store",
            self.setup.store,
            "--lease-ttl",
            LEASE_TTL,
            "--sweep-interval",
            "1",
        ]

    async def start(self, http: httpx2.AsyncClient) -> None:
        self.starts += 1
        log = self.setup.tmp / f"replica{self.index}.log"
        env = {k: v for k, v in os.environ.items() if k != "IDEM_GATEWAY_TOKENS"}
        env["IDEM_GATEWAY_STORE_TIMEOUT"] = STORE_TIMEOUT
        with log.open("ab") as errlog:
            self.process = await anyio.open_process(
                self.argv(), stdout=subprocess.DEVNULL, stderr=errlog, cwd=self.setup.tmp, env=env
            )
        with anyio.fail_after(START_BOUND):
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"replica {self.index} exited at start:\n{log.read_text()[-3000:]}")
                try:
                    if (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                await anyio.sleep(0.05)
        self.up = True
        self.note_downstreams()

    def note_downstreams(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.downstreams.update(children(self.pid))

    async def kill(self) -> None:
        self.note_downstreams()
        self.up = False
        assert self.process is not None
        self.process.kill()
        with anyio.fail_after(START_BOUND):
            await self.process.wait()

    async def terminate(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.note_downstreams()
        os.kill(self.pid, signal.SIGCONT)
        self.process.terminate()
        with anyio.move_on_after(START_BOUND):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


# ---- keys, attempts --------------------------------------------------------------------------------


@dataclass
class Plan:
    """One key: its tool and payload, the same on every call."""

    key: str
    tool: str
    arguments: dict[str, Any]
    gate: Path | None


@dataclass
class Attempt:
    key: str
    answer: str  # executed | replayed | an error code | tool_error | rpc:<code> | http:<status> | lost
    replica: int
    started: float
    ended: float


def plan_key(rng: random.Random, gates: Path) -> Plan:
    tool = rng.choices(list(TOOLS), weights=list(TOOLS.values()))[0]
    key = new_key()
    gate = gates / key if tool in ("slow_op", "slow_charge") else None
    arguments: dict[str, Any] = {"idempotency_key": key}
    if tool == "slow_op":
        arguments |= {"label": key, "gate_file": str(gate)}
    elif tool == "create_invoice":
        arguments |= {"customer": key, "amount": rng.choice([5, 12.5, 9007199254740993])}
    elif tool in ("effect_then_error", "crash_op"):
        arguments |= {"label": key}
    elif tool == "native_charge":
        arguments |= {"amount": rng.choice([1, 2.5])}
    else:
        arguments |= {"amount": 3, "gate_file": str(gate)}
    return Plan(key, tool, arguments, gate)


def classify(body: dict[str, Any]) -> str:
    if "error" in body:
        return f"rpc:{body['error'].get('code')}"
    result = body.get("result") or {}
    meta = result.get("_meta") or {}
    error = meta.get("idem-gateway/error")
    if isinstance(error, dict):
        return str(error.get("code"))
    if "idem-gateway/outcome" in meta:
        return str(meta["idem-gateway/outcome"])
    return "tool_error" if result.get("isError") else "unmarked"


def parse_response(response: httpx2.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                message: dict[str, Any] = json.loads(line[5:])
                if "id" in message:
                    return message
        raise ValueError("no response in the event stream")
    parsed: dict[str, Any] = response.json()
    return parsed


# ---- the verdict ------------------------------------------------------------------------------------


def executions_by_key(ledger: Path, forwarded: dict[str, str]) -> dict[str, list[float]]:
    """Start times of every execution (native tools: every charge), by key.

    ``forwarded``: the key a natively idempotent tool receives (scoped to the principal) → the
    client's key.
    """
    found: dict[str, list[float]] = {}
    for line in read_ledger(ledger):
        tool, args, phase = line["tool"], line.get("args", {}), line.get("phase")
        if tool in ("slow_op", "effect_then_error", "crash_op"):
            key = args.get("label") if phase in (None, "started") else None
        elif tool == "create_invoice":
            key = args.get("customer")
        elif tool == "native_charge":
            key = forwarded.get(args.get("idempotency_key", ""))
        elif tool == "slow_charge":
            key = forwarded.get(args.get("idempotency_key", "")) if phase == "charged" else None
        else:
            key = None
        if key is not None:
            found.setdefault(key, []).append(float(line["at"]))
    return {k: sorted(v) for k, v in found.items()}


@dataclass
class Verdict:
    """What the ledger and the answers say.

    - duplicates: an execution of a key that no completed incarnation precedes: between two
      starts of one key there must be an ``executed`` event (a stored result) at least the
      tool's retention before the second (it had expired); anything else ran a key whose outcome
      was unknown, in progress, lost, or still to be replayed. Natively
      idempotent tools count charges, not sends.
    - unbacked: a key answered ``executed`` or ``replayed`` that the ledger never ran.
    - unavailable_ran: a key whose every attempt was answered ``downstream_unavailable`` (so it
      was never retried past that answer) but that the ledger shows ran.
    """

    executions: int = 0
    duplicates: dict[str, list[float]] = field(default_factory=dict)
    unbacked: list[str] = field(default_factory=list)
    unavailable_ran: list[str] = field(default_factory=list)
    # For the offending keys, what explains them: ledger starts and the key's audit events.
    story: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.unbacked or self.unavailable_ran)


async def judge(setup: Setup, plans: Sequence[Plan], attempts: Sequence[Attempt]) -> Verdict:
    native = [p.key for p in plans if p.tool in ("native_charge", "slow_charge")]
    ran = executions_by_key(setup.ledger, {forwarded_key(key): key for key in native})
    verdict = Verdict(executions=sum(len(v) for v in ran.values()))
    completed_at: dict[str, list[tuple[float, bool]]] = {}
    audit: dict[str, list[str]] = {}
    for event in await events(setup.store):
        if event["key"] is not None:
            audit.setdefault(event["key"], []).append(
                f"event {event['at'] / 1_000_000:.3f} {event['outcome']} {event.get('detail') or ''}"
            )
        if event["outcome"] == "executed" and event["key"] is not None:
            late = bool((event.get("detail") or {}).get("settled_late"))
            completed_at.setdefault(event["key"], []).append((event["at"] / 1_000_000, late))
    tools = {p.key: p.tool for p in plans}
    for key, starts in ran.items():
        retention = RETENTION.get(tools.get(key, ""), math.inf)
        for before, after in itertools.pairwise(starts):
            # A run anew needs a completed run before it whose retention had ended: its result
            # expires at least ``retention`` after its event (the expiry is taken after the event
            # is dated). A late settlement keeps the expiry of its first attempt: any time counts.
            if not any(
                before < done < after and (late or after >= done + retention - CLOCK_TOLERANCE)
                for done, late in completed_at.get(key, [])
            ):
                verdict.duplicates.setdefault(key, starts)
    answers: dict[str, list[str]] = {}
    for attempt in attempts:
        answers.setdefault(attempt.key, []).append(attempt.answer)
    for plan in plans:
        told = answers.get(plan.key, [])
        if any(a in ("executed", "replayed") for a in told) and not ran.get(plan.key):
            verdict.unbacked.append(plan.key)
        if told and all(a == "downstream_unavailable" for a in told) and ran.get(plan.key):
            verdict.unavailable_ran.append(plan.key)
    for key in [*verdict.duplicates, *verdict.unbacked, *verdict.unavailable_ran]:
        verdict.story[key] = [f"ran {at:.3f}" for at in ran.get(key, [])] + audit.get(key, [])
    return verdict


# ---- the run ------------------------------------------------------------------------------------------


@dataclass
class Chaos:
    setup: Setup
    backend: str
    replicas: int
    rounds: int
    seed: int
    keys_per_round: int = 8
    workers: int = 6
    calls_per_worker: int = 5
    rng: random.Random = field(init=False)
    fleet: list[Replica] = field(init=False, default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    refused: int = 0
    round_seconds: list[float] = field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.gates = self.setup.tmp / "gates"
        self.gates.mkdir(exist_ok=True)
        self.setup.manifest(**MANIFEST)

    # -- calls -------------------------------------------------------------------------------------

    def _body(self, plan: Plan, ident: int) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": ident,
            "method": "tools/call",
            "params": {
                "name": plan.tool,
                "arguments": plan.arguments,
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MODERN,
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        }

    async def call(self, http: httpx2.AsyncClient, plan: Plan) -> None:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": plan.tool,
        }
        for _ in range(4 * len(self.fleet)):
            self._next += 1
            replica = self.fleet[self._next % len(self.fleet)]
            started = time.time()  # wall clock: read beside the ledger's and the events' times
            answer = "lost"
            with anyio.move_on_after(CALL_BOUND):
                try:
                    response = await http.post(
                        replica.url, json=self._body(plan, self._next), headers=headers
                    )
                except httpx2.ConnectError:
                    self.refused += 1  # nothing was sent: try the next replica
                    await anyio.sleep(0.05)
                    continue
                except httpx2.TransportError:
                    answer = "lost"
                else:
                    try:
                        answer = (
                            classify(parse_response(response))
                            if response.status_code == 200
                            else f"http:{response.status_code}"
                        )
                    except ValueError:
                        answer = "lost"
            self.attempts.append(Attempt(plan.key, answer, replica.index, started, time.time()))
            return

    async def worker(self, http: httpx2.AsyncClient, fresh: list[Plan]) -> None:
        for _ in range(self.calls_per_worker):
            older = self.plans[: -len(fresh)] if len(self.plans) > len(fresh) else []
            plan = self.rng.choice(older) if older and self.rng.random() < 0.25 else self.rng.choice(fresh)
            burst = 3 if self.rng.random() < 0.2 else 1
            async with anyio.create_task_group() as tg:
                for _ in range(burst):
                    tg.start_soon(self.call, http, plan)

    async def open_gate(self, plan: Plan, delay: float) -> None:
        await anyio.sleep(delay)  # the call runs that long, outliving the downstream timeout or not
        assert plan.gate is not None
        await anyio.Path(plan.gate).touch()

    # -- faults ------------------------------------------------------------------------------------

    async def fault(self, http: httpx2.AsyncClient) -> None:
        await anyio.sleep(self.rng.uniform(0.0, 0.8))  # land somewhere in the round's calls
        kinds = ["kill_gateway", "stop_gateway", "kill_downstream", "stall_store"]
        for kind in self.rng.sample(kinds, k=self.rng.choice([1, 1, 2])):
            self.faults[kind] += 1
            await getattr(self, kind)(http)

    def _up(self) -> list[Replica]:
        return [r for r in self.fleet if r.up]

    async def kill_gateway(self, http: httpx2.AsyncClient) -> None:
        up = self._up()
        if len(up) < 2:
            return
        victim = self.rng.choice(up)
        await victim.kill()
        await victim.start(http)

    async def stop_gateway(self, http: httpx2.AsyncClient) -> None:
        victim = self.rng.choice(self._up())
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            await anyio.sleep(self.rng.uniform(0.5, 2.5))  # a pause past the 1 s lease, or not
        finally:
            os.kill(victim.pid, signal.SIGCONT)

    async def kill_downstream(self, http: httpx2.AsyncClient) -> None:
        victim = self.rng.choice(self._up())
        victim.note_downstreams()
        alive_children = [pid for pid in children(victim.pid) if alive(pid)]
        if alive_children:
            os.kill(self.rng.choice(alive_children), signal.SIGKILL)

    async def stall_store(self, http: httpx2.AsyncClient) -> None:
        seconds = self.rng.uniform(0.5, 2.5)
        if self.backend == "sqlite":
            lock = WriteLock(sqlite_path(self.setup.store))
            await lock.acquire()
            try:
                await anyio.sleep(seconds)  # the stall's length is the fault
            finally:
                await lock.release()
            return
        import psycopg

        conninfo = (
            make_url(self.setup.store).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            if self.rng.random() < 0.5:
                self.faults["pg_lock_table"] += 1
                async with conn.transaction():
                    await conn.execute("LOCK TABLE idempotency_records IN ACCESS EXCLUSIVE MODE")
                    await anyio.sleep(seconds)
            else:
                self.faults["pg_terminate_backend"] += 1
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

    # -- rounds ------------------------------------------------------------------------------------

    async def round(self, http: httpx2.AsyncClient) -> None:
        fresh = [plan_key(self.rng, self.gates) for _ in range(self.keys_per_round)]
        self.plans.extend(fresh)
        async with anyio.create_task_group() as tg:
            for plan in fresh:
                if plan.gate is not None:
                    tg.start_soon(self.open_gate, plan, self.rng.uniform(0.05, 4.0))
            for _ in range(self.workers):
                tg.start_soon(self.worker, http, fresh)
            tg.start_soon(self.fault, http)

    async def run(self) -> Verdict:
        limits = httpx2.Limits(max_keepalive_connections=0)  # a refused connect is unambiguous
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(CALL_BOUND), limits=limits) as http:
            self.fleet = [Replica(i, self.setup) for i in range(self.replicas)]
            try:
                with anyio.fail_after(ROUND_BOUND * self.rounds + START_BOUND * len(self.fleet)):
                    async with anyio.create_task_group() as tg:
                        for replica in self.fleet:
                            tg.start_soon(replica.start, http)
                    for _ in range(self.rounds):
                        began = time.monotonic()
                        await self.round(http)
                        self.round_seconds.append(time.monotonic() - began)
            finally:
                for plan in self.plans:
                    if plan.gate is not None:
                        plan.gate.touch()
                with anyio.CancelScope(shield=True):
                    async with anyio.create_task_group() as tg:
                        for replica in self.fleet:
                            tg.start_soon(replica.terminate)
        # Orphaned downstreams (their gateway was killed) finish what they had, then exit.
        seen = {pid for replica in self.fleet for pid in replica.downstreams}
        with anyio.fail_after(START_BOUND):
            while any(alive(pid) for pid in seen):  # noqa: ASYNC110 - other processes exit
                await anyio.sleep(0.05)
        return await judge(self.setup, self.plans, self.attempts)

    def summary(self, verdict: Verdict) -> str:
        answers = Counter(a.answer for a in self.attempts)
        return (
            f"chaos[{self.backend}] seed={self.seed} rounds={self.rounds} replicas={self.replicas} "
            f"kills={self.faults['kill_gateway']} stops={self.faults['stop_gateway']} "
            f"downstream_kills={self.faults['kill_downstream']} stalls={self.faults['stall_store']} "
            f"keys={len(self.plans)} calls={len(self.attempts)} refused_connects={self.refused} "
            f"executions={verdict.executions} duplicates={len(verdict.duplicates)} "
            f"unbacked={len(verdict.unbacked)} unavailable_ran={len(verdict.unavailable_ran)} "
            f"answers={dict(sorted(answers.items()))} "
            f"round_seconds={[round(x, 1) for x in self.round_seconds]}"
        )

    def explain(self, verdict: Verdict, limit: int = 5) -> str:
        """The first few offending keys with their tool and every answer they got."""
        tools = {p.key: p.tool for p in self.plans}
        lines = []
        for title, keys in (
            ("duplicate", list(verdict.duplicates)),
            ("unbacked", verdict.unbacked),
            ("unavailable but ran", verdict.unavailable_ran),
        ):
            for key in keys[:limit]:
                attempts = [a for a in self.attempts if a.key == key]
                lines.append(f"{title}: {tools.get(key)} {key} answers={[a.answer for a in attempts]}")
                lines += [
                    f"  attempt replica {a.replica} {a.started:.3f}-{a.ended:.3f} {a.answer}"
                    for a in sorted(attempts, key=lambda a: a.started)
                ]
                story = sorted(verdict.story.get(key, []), key=lambda line: line.split()[1])
                lines += [f"  {line}" for line in story]
        return "\n".join(lines)
