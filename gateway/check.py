"""``idem-gateway check``: every manifest error at once, then every downstream's exposed tools.

Tool names come from the downstreams: everything printed goes through ``gateway.textsafe``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from gateway.audit.redaction import install_secret_filter
from gateway.downstream import DownstreamPool
from gateway.downstream.openapi import OpenAPISession
from gateway.manifests import ManifestErrors, load_manifests
from gateway.manifests.loader import check_exposed_names
from gateway.server import approval
from gateway.server.catalog import Catalog, ExposedTool
from gateway.textsafe import escape, table


def _fmt_seconds(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"


def review_table(tools: Iterable[ExposedTool]) -> str:
    """One row per exposed tool: its class and the policy that applies (also ``import``'s review)."""
    rows = [["TOOL", "SERVER", "CLASS", "RETENTION", "FORWARD_KEY", "IN_FLIGHT", "CANCEL", "APPROVE"]]
    for tool in sorted(tools, key=lambda t: t.name):
        p = tool.policy
        fk = (
            f"{p.forward_key.kind}:{p.forward_key.name}"
            if p.forward_key
            else ("native" if tool.native else "-")
        )
        rows.append(
            [
                tool.name,
                tool.spec.name,
                "side-effecting" if tool.side_effects else "read-only",
                _fmt_seconds(p.retention) if tool.side_effects else "-",
                fk if tool.side_effects else "-",
                p.in_flight if tool.side_effects else "-",
                p.cancel if tool.side_effects else "forward",
                approval.describe(p.approve) if tool.side_effects else "-",
            ]
        )
    return table(rows)


async def run_check(folder: Path, *, start_timeout: float = 20.0) -> int:
    try:
        specs = load_manifests(folder)
    except ManifestErrors as errors:
        for error in errors.errors:
            print(f"error: {escape(str(error))}", file=sys.stderr)
        print(f"{len(errors.errors)} error(s) in {folder}", file=sys.stderr)
        return 1

    install_secret_filter(s for spec in specs for s in spec.secrets)
    problems: list[str] = []
    warnings: list[str] = []
    async with DownstreamPool(specs, startup_timeout=start_timeout) as pool:
        for name, session in pool.sessions.items():
            source = session.spec.source.name
            if not session.ready:
                reason = f": {session.last_error}" if session.last_error else ""
                problems.append(f"{source}: server: downstream {name!r} did not start{reason}")
            if isinstance(session, OpenAPISession):
                warnings += [f"{source}: server.spec: {warning}" for warning in session.warnings]
                problems += [
                    f"{source}: server.operations: {op!r} is not an operation of the document"
                    for op in session.unknown_operations
                ]
        catalog = Catalog({n: (s.spec, s) for n, s in pool.sessions.items()})
        tools_by_server = {n: [str(t["name"]) for t in s.tools] for n, s in pool.sessions.items()}
        problems.extend(str(e) for e in check_exposed_names(specs, tools_by_server))
        for server, lacking in catalog.missing().items():
            spec = pool.sessions[server].spec
            for name in lacking:
                problems.append(f"{spec.source.name}: tools.{name}: the downstream does not offer this tool")
        review = review_table(catalog.all())
    print(review)
    for warning in warnings:
        print(f"warning: {escape(warning)}", file=sys.stderr)
    for problem in problems:
        print(f"error: {escape(problem)}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} error(s)", file=sys.stderr)
        return 1
    return 0
