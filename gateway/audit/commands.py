"""``idem-gateway audit events|show|stats``, ``resolve`` and ``purge``: the operator's side.

Tables for people, ``--json`` for scripts; the JSON of ``audit stats --principal P`` is the
body of that principal's ``audit://stats``. Exit 0 when done, 1 with a sentence on stderr.

None of these commands creates a store: a missing SQLite file is an error that says so. Every
value printed for people went through ``gateway.textsafe.escape``: a key or tool name sent by
a client cannot drive the operator's terminal (JSON output is escaped by the encoder).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from gateway.audit.stats import WINDOWS, compute_stats
from gateway.audit.views import event_view, record_view
from gateway.errors import StoreUnavailable
from gateway.localfiles import StoreFileError, require_store
from gateway.outcomes import Outcome
from gateway.store import Event, EventQuery, RecordState, Store, open_store
from gateway.store.cipher import CipherError
from gateway.textsafe import escape, table

SHOW_LIMIT = 1000
START_TIMEOUT = 20.0


class CommandError(Exception):
    """A clear sentence for stderr; the command exits 1."""


def _fail(message: str) -> int:
    print(f"error: {escape(message)}", file=sys.stderr)
    return 1


@asynccontextmanager
async def _store(url: str) -> AsyncIterator[Store]:
    """An existing store, as it is: never created, never migrated (``open`` is for ``serve``)."""
    try:
        require_store(url)
    except StoreFileError as exc:
        raise CommandError(str(exc)) from None
    try:
        store = open_store(url)
    except CipherError as exc:
        raise CommandError(str(exc)) from None
    try:
        await store.sync_clock()  # the database's time, for "now" (no schema is created)
        yield store
    finally:
        await store.close()


def _refuse_nul(**values: str | None) -> None:
    """A NUL cannot be in any key, tool or principal; a database would refuse the query."""
    for name, value in values.items():
        if value is not None and "\x00" in value:
            raise CommandError(f"the {name} contains a NUL character: no such {name} can exist")


def _print_json(body: Any) -> None:
    print(json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False))


def _fmt(value: Any) -> str:
    """One table cell: what was stored, with control characters shown as escapes."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict | list):
        return escape(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    return escape(str(value))


def _events_table(events: list[dict[str, Any]]) -> str:
    rows = [["AT", "PRINCIPAL", "KEY", "TOOL", "OUTCOME", "MS", "ARGUMENTS"]]
    for e in events:
        rows.append(
            [
                _fmt(e["at"]),
                _fmt(e.get("principal")),
                _fmt(e["key"]),
                _fmt(e["tool"]),
                _fmt(e["outcome"]),
                _fmt(e["duration_ms"]),
                _fmt(e["arguments"]),
            ]
        )
    return table(rows)


# ---- audit ------------------------------------------------------------------------------------


async def run_audit(args: argparse.Namespace) -> int:
    try:
        async with _store(args.store) as store:
            if args.audit_command == "events":
                return await _events(store, args)
            if args.audit_command == "show":
                return await _show(store, args)
            return await _stats(store, args)
    except (StoreUnavailable, CommandError) as exc:
        return _fail(str(exc))


async def _events(store: Store, args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CommandError("--limit must be at least 1")
    _refuse_nul(key=args.key, tool=args.tool, outcome=args.outcome, principal=args.principal)
    query = EventQuery(
        principal=args.principal, key=args.key, tool=args.tool, outcome=args.outcome, limit=args.limit
    )
    events = [event_view(e, with_principal=True) for e in await store.events(query)]
    if args.json:
        _print_json({"events": events})
    elif events:
        print(_events_table(events))
    else:
        print("no events", file=sys.stderr)
    return 0


async def _show(store: Store, args: argparse.Namespace) -> int:
    _refuse_nul(key=args.key, principal=args.principal)
    record = await store.get(args.principal, args.key)
    events = await store.events(EventQuery(principal=args.principal, key=args.key, limit=SHOW_LIMIT))
    if record is None and not events:
        raise CommandError(f"no such key {args.key!r} for principal {args.principal!r}")
    view = record_view(record)
    shown = [event_view(e) for e in events]
    if args.json:
        _print_json({"record": view, "events": shown})
        return 0
    if view is None:
        print(f"key {escape(args.key)}: no record (released, purged or never stored); its events:")
    else:
        print(table([[name.upper(), _fmt(value)] for name, value in view.items()]))
    if events:
        print()
        print(_events_table(shown))
    return 0


async def _stats(store: Store, args: argparse.Namespace) -> int:
    _refuse_nul(principal=args.principal)
    stats = await compute_stats(store, args.principal, now=store.now())
    if args.json:
        _print_json(stats)
        return 0
    scope = f"principal {escape(args.principal)}" if args.principal else "all principals"
    print(f"{scope}, all time")
    print(_stats_text(stats))
    print(f"unknown outcomes open: {stats['unknown_open']}")
    for name in WINDOWS:
        print()
        print(name.replace("_", " "))
        print(_stats_text(stats[name]))
    return 0


def _stats_text(stats: dict[str, Any]) -> str:
    outcomes = sorted(stats["by_outcome"])
    rows = [["TOOL", *(escape(o.upper()) for o in outcomes)]]
    for tool, counts in stats["by_tool"].items():
        rows.append([escape(tool), *(str(counts.get(o, 0)) for o in outcomes)])
    rows.append(["(all)", *(str(stats["by_outcome"][o]) for o in outcomes)])
    lines = [table(rows)] if outcomes else ["no events"]
    lines.append(f"duplicates prevented: {stats['duplicates_prevented']}")
    lines.append(f"spend prevented: {stats['spend_prevented']:g}")
    return "\n".join(lines)


# ---- resolve ------------------------------------------------------------------------------------


async def run_resolve(args: argparse.Namespace) -> int:
    try:
        result = _load_result(args)
        async with _store(args.store) as store:
            return await _resolve(store, args, result)
    except (StoreUnavailable, CommandError) as exc:
        return _fail(str(exc))


def _load_result(args: argparse.Namespace) -> dict[str, Any] | None:
    """The CallToolResult to replay (``--as completed``), parsed and shape-checked up front."""
    if args.as_ == "failed":
        if args.result is not None:
            raise CommandError("--result goes with --as completed only")
        return None
    if args.result is None:
        raise CommandError("--as completed needs --result FILE (a CallToolResult in JSON)")
    path = Path(args.result)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise CommandError(f"{path} is not JSON: {exc}") from exc
    from gateway.audit.resolution import shape_problem  # the SDK's wire types: only resolve needs them

    if (problem := shape_problem(result)) is not None:
        raise CommandError(f"{path}: {problem}")
    return result


async def _resolve(store: Store, args: argparse.Namespace, result: dict[str, Any] | None) -> int:
    _refuse_nul(key=args.key, principal=args.principal)
    record = await store.get(args.principal, args.key)
    if record is None:
        raise CommandError(f"no such key {args.key!r} for principal {args.principal!r}")
    force = bool(getattr(args, "force", False))
    if record.state is not RecordState.UNKNOWN and not force:
        raise CommandError(
            f"key {args.key!r} is {record.state.value}, not unknown: only an unknown outcome is "
            "resolved (--force overrides, and can make a retry repeat an effect)"
        )
    is_error = False
    if result is not None:
        is_error = bool(result.get("isError", False))
        schema = await _output_schema(args.manifests, record.server, record.tool)
        from gateway.audit.resolution import output_problem

        if (problem := output_problem(result, schema)) is not None:
            raise CommandError(problem)
    event = Event(
        at=store.now(),
        principal=args.principal,
        key=args.key,
        server=record.server,
        tool=record.tool,
        outcome=Outcome.RESOLVED.value,
        fingerprint=record.fingerprint,
        detail={"as": args.as_, "previous_state": record.state.value, **({"forced": True} if force else {})},
    )
    # Fenced on the record as read: if a gateway took the key over meanwhile (a forwarded-key
    # re-send), this settles nothing rather than the new call's record.
    settled = await store.resolve(
        args.principal, args.key, expected=record, result=result, is_error=is_error, now=event.at, event=event
    )
    if settled is None:
        raise CommandError(
            f"key {args.key!r} changed while it was being resolved (a gateway took it over, or it went "
            "away): nothing was settled; look at it again with `idem-gateway audit show`"
        )
    if result is None:
        print(f"resolved {escape(args.key)} as failed: the key is released, a retry executes")
    else:
        print(f"resolved {escape(args.key)} as completed: a retry replays the given result")
    return 0


async def _output_schema(manifests: str, server: str, tool: str) -> dict[str, Any] | None:
    """The tool's outputSchema from its running downstream; None (with a warning) if unknowable."""
    from gateway.downstream import DownstreamPool
    from gateway.manifests import ManifestErrors, load_manifests

    def skip(why: str) -> None:
        print(f"warning: {why}; the result is not checked against the tool's outputSchema", file=sys.stderr)

    from gateway.audit.redaction import install_secret_filter

    try:
        specs = [s for s in load_manifests(manifests) if s.name == server]
        install_secret_filter(secret for spec in specs for secret in spec.secrets)
    except ManifestErrors as errors:
        skip(f"the manifests in {manifests} do not load ({len(errors.errors)} error(s))")
        return None
    if not specs:
        skip(f"no manifest in {manifests} declares server {server!r}")
        return None
    spec = specs[0]
    async with DownstreamPool([spec], startup_timeout=START_TIMEOUT) as pool:
        session = pool.sessions[spec.name]
        if not session.ready:
            skip(f"the downstream {server!r} did not start")
            return None
        listed = {spec.exposed_name(str(t.get("name"))): t for t in session.tools}
    found = listed.get(tool)
    if found is None:
        skip(f"the downstream {escape(server)!r} does not offer {escape(tool)!r}")
        return None
    schema = found.get("outputSchema")
    return schema if isinstance(schema, dict) else None


# ---- purge --------------------------------------------------------------------------------------


async def run_purge(args: argparse.Namespace) -> int:
    retention = getattr(args, "audit_retention", None)
    try:
        async with _store(args.store) as store:
            now = store.now()
            deleted = await store.purge(now)
            dropped = 0 if retention is None else await store.purge_events(now - timedelta(seconds=retention))
    except (StoreUnavailable, CommandError) as exc:
        return _fail(str(exc))
    print(f"purged {deleted} expired record(s) and {dropped} audit event(s) past the audit retention")
    return 0
