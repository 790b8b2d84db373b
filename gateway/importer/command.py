"""``idem-gateway import FILE``: read, plan, start each server once, write, review, replace.

Order of work, so that nothing half-done is left behind:

1. read the client's file and plan every entry (names, variables) — the whole file, so a
   server's manifest does not depend on which others ``--only`` picked;
2. refuse what cannot be written (unsupported entries, existing files without ``--force``);
3. start the chosen servers together, from the manifest as it will be written (loaded by the
   real loader, with the lifted values supplied in memory), bounded by ``start_timeout``;
4. write one manifest per server (also for one that did not start: marked, without tools);
5. print the review table, the client entry that replaces the servers, and last what to look at.

Values lifted out of the file are never printed: everything shown that came from a server or
the file passes through ``mask``, and the log handlers get the same secrets to mask.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO, cast

import anyio

from gateway.audit.redaction import SecretFilter, install_secret_filter
from gateway.check import review_table
from gateway.downstream import DownstreamSession
from gateway.importer.clients import Client, ClientConfig, ConfigError, read_config
from gateway.importer.plan import Plan, Variable, Variables, plan_all
from gateway.importer.render import classify, render, unannotated
from gateway.importer.snippet import render_snippet
from gateway.manifests import ManifestErrors, load_manifests
from gateway.manifests.models import ServerSpec
from gateway.server.catalog import Catalog
from gateway.textsafe import table

DEFAULT_START_TIMEOUT = 30.0
STDERR_TAIL = 5  # lines of a failed server's own stderr worth showing


@dataclass(slots=True)
class Outcome:
    """What happened to one planned server."""

    plan: Plan
    path: Path
    spec: ServerSpec | None = None
    tools: list[dict[str, Any]] | None = None  # None: did not start
    failure: str | None = None  # why it did not start, masked
    stderr_tail: list[str] = field(default_factory=list)
    tool_prefix: str = ""
    written: bool = False
    skipped: str | None = None  # why it was not written


async def run_import(args: argparse.Namespace) -> int:
    """The CLI entry: exit 0 when every chosen server's manifest was written, else 1."""
    try:
        config = read_config(Path(args.file), Client(args.client) if args.client else None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    variables = Variables()
    plans = plan_all(config, variables)
    chosen = _choose(plans, args.only or [])
    if chosen is None:
        return 1
    out = Path(args.out)
    secrets = SecretFilter(variables.secrets())
    install_secret_filter(variables.secrets())

    outcomes = [Outcome(plan, out / f"{plan.name}.toml") for plan in chosen]
    for o in outcomes:
        if o.plan.problem is not None:
            o.skipped = f"not imported: {o.plan.problem}"
        elif o.path.exists() and not args.force:
            o.skipped = "exists, left as it is (--force overwrites it)"
    startable = [o for o in outcomes if o.skipped is None]
    await _probe(startable, config, variables, secrets, float(args.start_timeout))
    _prefix_clashes(startable)
    for o in startable:
        text = render(
            o.plan, source=_source(config), tools=o.tools, tool_prefix=o.tool_prefix, relative_to=out
        )
        _write(o.path, text)
        o.written = True

    _report(config, outcomes, variables, secrets, out)
    return 0 if all(o.written for o in outcomes) else 1


def _choose(plans: list[Plan], only: Sequence[str]) -> list[Plan] | None:
    if not only:
        return plans
    by_name = {p.source_name: p for p in plans} | {p.name: p for p in plans}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        print(
            f"error: no server named {', '.join(map(repr, unknown))} in the file; "
            f"it has {', '.join(repr(p.source_name) for p in plans)}",
            file=sys.stderr,
        )
        return None
    wanted = {id(by_name[n]) for n in only}
    return [p for p in plans if id(p) in wanted]


def _source(config: ClientConfig) -> str:
    return f"{config.path} ({config.client.label})"


# ---- starting each server once -------------------------------------------------------------------


async def _probe(
    outcomes: list[Outcome], config: ClientConfig, variables: Variables, secrets: SecretFilter, timeout: float
) -> None:
    """Start every server from its manifest as written (cwd absolute), list its tools, stop it."""
    environ = _probe_environ(variables)
    with tempfile.TemporaryDirectory(prefix="idem-import-") as tmp, ExitStack() as stack:
        errlogs: dict[str, TextIO] = {}
        for o in outcomes:
            folder = Path(tmp) / o.plan.name
            folder.mkdir()
            (folder / f"{o.plan.name}.toml").write_text(render(o.plan, source=_source(config), tools=[]))
            try:
                o.spec = load_manifests(folder, environ)[0]
            except ManifestErrors as errors:
                o.failure = secrets.mask("; ".join(e.message for e in errors.errors))
                continue
            errlog = stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8"))
            errlogs[o.spec.name] = cast(TextIO, errlog)
        specs = [o.spec for o in outcomes if o.spec is not None and o.failure is None]
        if not specs:
            return

        sessions = {
            spec.name: DownstreamSession(spec, connect_timeout=timeout, errlog=errlogs[spec.name])
            for spec in specs
        }
        with _quiet("gateway.downstream", "mcp"):
            listed = await _start_once(list(sessions.values()), timeout)
        for o in outcomes:
            live = sessions.get(o.plan.name) if o.failure is None else None
            if live is None:
                continue
            o.tools = listed.get(live.name)
            if o.tools is None:
                o.failure = secrets.mask(live.last_error or f"not ready within {timeout:g}s")
        for o in outcomes:
            if o.failure is not None and o.plan.name in errlogs:
                log = errlogs[o.plan.name]
                log.seek(0)
                lines = [line.rstrip() for line in log.read().splitlines() if line.strip()]
                o.stderr_tail = [secrets.mask(line) for line in lines[-STDERR_TAIL:]]


async def _start_once(sessions: list[DownstreamSession], timeout: float) -> dict[str, list[dict[str, Any]]]:
    """Start every session together, wait (bounded) for each one's first attempt, and keep the
    tools of those that got ready; then stop them all (their supervisors would keep retrying)."""
    listed: dict[str, list[dict[str, Any]]] = {}

    async def first_attempt(session: DownstreamSession) -> None:
        if await session.wait_attempt(timeout):
            listed[session.name] = [dict(t) for t in session.tools]

    async with anyio.create_task_group() as supervisors:
        for session in sessions:
            await supervisors.start(session.run)
        async with anyio.create_task_group() as waiters:
            for session in sessions:
                waiters.start_soon(first_attempt, session)
        supervisors.cancel_scope.cancel()
    return listed


def _probe_environ(variables: Variables) -> dict[str, str]:
    """The gateway's environment plus the lifted literals; a reference nobody set reads as empty."""
    environ = dict(os.environ)
    for var in variables.by_name.values():
        if var.value is not None:
            environ[var.name] = var.value
        else:
            environ.setdefault(var.name, "")
    return environ


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The import reports start-up failures itself; the supervisors' retry warnings are noise."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _prefix_clashes(outcomes: list[Outcome]) -> None:
    """Two imported servers offering the same tool name: the later one gets ``tool_prefix``.

    A client namespaces tools per server; the gateway exposes one flat list, where a clash is
    a load error, so the import settles it the first time.
    """
    seen: set[str] = set()
    for o in outcomes:
        names = {str(t.get("name")) for t in o.tools or []}
        if names & seen:
            o.tool_prefix = f"{o.plan.name}_"
        seen |= {o.tool_prefix + n for n in names}


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a temporary file next to it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---- the report --------------------------------------------------------------------------------


def _report(
    config: ClientConfig, outcomes: list[Outcome], variables: Variables, secrets: SecretFilter, out: Path
) -> None:
    print(f"Read {len(config.entries)} server(s) from {_source(config)}.")
    rows = [["SERVER", "STATUS", "MANIFEST"]]
    for o in outcomes:
        if o.skipped:
            status = o.skipped
        elif o.tools is None:
            status = "DID NOT START (written without tools)"
        else:
            status = f"started, {len(o.tools)} tool(s)"
        rows.append([o.plan.name, status, str(o.path) if o.written or o.path.exists() else "-"])
    print(table(rows))

    listed = [o for o in outcomes if o.written and o.spec is not None and o.tools is not None]
    if listed:
        print()
        print(review_table(_review_catalog(listed).all()))

    written = [o for o in outcomes if o.written]
    if written:
        used = _used_variables(written, variables)
        print()
        names = ", ".join(repr(o.plan.source_name) for o in written)
        print(f"In {config.path.name}, replace {names} with the gateway ({config.client.label}):")
        print(render_snippet(config.client, used, out.resolve()))

    look = _look_at(outcomes, variables, secrets)  # last: what a person must do before serving
    if look:
        print()
        print("Look at:")
        for line in look:
            print(line)


def _review_catalog(outcomes: list[Outcome]) -> Catalog:
    """The check's view of the manifests as written: each tool's class set explicitly."""

    class Listed:
        def __init__(self, tools: list[dict[str, Any]]) -> None:
            self.tools = tools

    sources: dict[str, tuple[ServerSpec, Any]] = {}
    for o in outcomes:
        assert o.spec is not None and o.tools is not None
        policies = {str(t["name"]): replace(o.spec.defaults, side_effects=classify(t)[0]) for t in o.tools}
        spec = replace(o.spec, tools=policies, tool_prefix=o.tool_prefix)
        sources[spec.name] = (spec, Listed(o.tools))
    return Catalog(sources)


def _look_at(outcomes: list[Outcome], variables: Variables, secrets: SecretFilter) -> list[str]:
    lines: list[str] = []
    by_default: dict[str, list[str]] = {}
    for o in outcomes:
        names = sorted(str(t["name"]) for t in o.tools or [] if unannotated(t))
        if o.written and names:
            by_default[o.plan.name] = names
    if by_default:
        count = sum(len(v) for v in by_default.values())
        lines.append(
            f"- {count} tool(s) are side-effecting only because they carry no readOnlyHint; each now "
            "needs an idempotency_key. If one only reads, set side_effects = false in its [tools.NAME]:"
        )
        lines += [f"    {server}: {', '.join(names)}" for server, names in by_default.items()]
    for o in outcomes:
        if o.written and o.tools is None:
            lines.append(f"- {o.plan.name} did not start: {o.failure}")
            lines += [f"    | {line}" for line in o.stderr_tail]
            lines.append(
                "    Its manifest has no tools yet: fix it, then run "
                f"`idem-gateway check --manifests {o.path.parent}`."
            )
        if o.skipped:
            lines.append(f"- {o.plan.name}: {o.skipped}")
        if o.tool_prefix:
            lines.append(
                f"- {o.plan.name}: its tool names clash with another server's: exposed as {o.tool_prefix}*"
            )
        lines += [f"- {o.plan.name}: {secrets.mask(note)}" for note in o.plan.notes if o.written]
    used = _used_variables([o for o in outcomes if o.written], variables)
    if used:
        lines.append(
            "- Set these variables where the gateway runs: the manifests refer to them, and their values "
            "were copied nowhere (take them from the entries you replace):"
        )
        width = max(len(v.name) for v in used)
        for var in used:
            status = "" if var.value is not None else "  (was a reference already)"
            lines.append(f"    {var.name.ljust(width)}  {', '.join(var.origins)}{status}")
    return lines


def _used_variables(outcomes: Sequence[Outcome], variables: Variables) -> list[Variable]:
    names: dict[str, None] = {}
    for o in outcomes:
        names.update(dict.fromkeys(o.plan.variables))
    return [variables.by_name[n] for n in names]
