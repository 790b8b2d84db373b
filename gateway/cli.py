"""argv → serve / check / audit / resolve / purge / import / demo.

Over stdio nothing but protocol messages may reach stdout, so logging goes to stderr and is
configured before anything else runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio

DEFAULT_MANIFESTS = "./tool_manifests"


def default_store_url() -> str:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite:///{Path(state) / 'idem-gateway' / 'gateway.db'}"


def _env_or(name: str, default: str) -> str:
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idem-gateway",
        description="An MCP gateway that makes agent retries safe with durable idempotency keys.",
    )
    parser.add_argument("--log-level", default=os.environ.get("IDEM_GATEWAY_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    def store_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--store",
            default=_env_or("IDEM_GATEWAY_STORE", default_store_url()),
            help="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://user@host/db",
        )

    def manifests_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--manifests", default=_env_or("IDEM_GATEWAY_MANIFESTS", DEFAULT_MANIFESTS))

    serve = sub.add_parser("serve", help="run the gateway (stdio by default)")
    manifests_arg(serve)
    store_arg(serve)
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--principal", default=_env_or("IDEM_GATEWAY_PRINCIPAL", "local"))
    serve.add_argument(
        "--tokens",
        default=os.environ.get("IDEM_GATEWAY_TOKENS") or None,
        help='http: a TOML file of lines principal = "<sha256 hex of its bearer token>"',
    )
    serve.add_argument(
        "--stateless",
        action="store_true",
        default=os.environ.get("IDEM_GATEWAY_STATELESS", "") not in ("", "0", "false"),
        help="http: no handshake-era sessions, so replicas need no sticky sessions",
    )
    serve.add_argument(
        "--lease-ttl",
        type=float,
        default=float(_env_or("IDEM_GATEWAY_LEASE_TTL", "10")),
        help="seconds a claim's lease lasts without renewal (a crashed holder is noticed after it)",
    )
    serve.add_argument("--sweep-interval", type=float, default=60.0)
    serve.add_argument(
        "--secret-file",
        default=os.environ.get("IDEM_GATEWAY_SECRET_FILE") or None,
        help="the fingerprint secret, created on first start; every gateway on one store needs the "
        "same (default $XDG_STATE_HOME/idem-gateway/secret.key; env IDEM_GATEWAY_SECRET_FILE)",
    )
    serve.add_argument(
        "--connect-wait",
        type=float,
        default=float(_env_or("IDEM_GATEWAY_CONNECT_WAIT", "2")),
        help="seconds a call waits for a downstream that is (re)connecting before it is refused "
        "as downstream_unavailable (default 2; env IDEM_GATEWAY_CONNECT_WAIT)",
    )

    check = sub.add_parser("check", help="validate manifests, start downstreams, list exposed tools")
    manifests_arg(check)

    audit = sub.add_parser("audit", help="read the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    events = audit_sub.add_parser("events", help="the audit trail, newest first")
    store_arg(events)
    events.add_argument("--tool")
    events.add_argument("--key")
    events.add_argument("--outcome")
    events.add_argument("--principal")
    events.add_argument("--limit", type=int, default=50)
    events.add_argument("--json", action="store_true")
    show = audit_sub.add_parser("show", help="one key's record and every event about it")
    store_arg(show)
    show.add_argument("key")
    show.add_argument("--principal", default=_env_or("IDEM_GATEWAY_PRINCIPAL", "local"))
    show.add_argument("--json", action="store_true")
    stats = audit_sub.add_parser("stats", help="counts by outcome and tool, duplicates and spend prevented")
    store_arg(stats)
    stats.add_argument("--principal")
    stats.add_argument("--json", action="store_true")

    resolve = sub.add_parser("resolve", help="settle a key whose outcome is unknown")
    store_arg(resolve)
    manifests_arg(resolve)
    resolve.add_argument("key")
    resolve.add_argument("--principal", default=_env_or("IDEM_GATEWAY_PRINCIPAL", "local"))
    resolve.add_argument("--as", dest="as_", choices=["failed", "completed"], required=True)
    resolve.add_argument("--result", type=Path, help="a CallToolResult in JSON (with --as completed)")
    resolve.add_argument("--force", action="store_true", help="settle a key that is not unknown")

    purge = sub.add_parser("purge", help="delete expired records now")
    store_arg(purge)

    imp = sub.add_parser("import", help="one manifest per server of an MCP client's configuration")
    imp.add_argument("file", help="claude_desktop_config.json, .mcp.json or VS Code's mcp.json")
    imp.add_argument("--out", default=DEFAULT_MANIFESTS, help="the manifests folder to write into")
    imp.add_argument("--only", nargs="+", action="extend", metavar="NAME", help="import only these servers")
    imp.add_argument("--force", action="store_true", help="overwrite existing manifests")
    imp.add_argument(
        "--client", choices=["claude-desktop", "claude-code", "vscode"], help="override detection"
    )
    imp.add_argument("--start-timeout", type=float, default=30.0, help="seconds each server has to start")

    demo = sub.add_parser("demo", help="a flaky agent's retries, deduplicated")
    demo.add_argument("--store", default=None, help="default: a fresh SQLite file in a temp dir")
    demo.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The HTTP client logs each request's URL (arguments, as query parameters, that `redact` may
    # mask) and, at debug, each response's headers: never at the gateway's own levels.
    for name in ("httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    handler = COMMANDS[args.command]
    try:
        return int(anyio.run(handler, args) or 0)
    except KeyboardInterrupt:
        return 130


async def _serve(args: argparse.Namespace) -> int:
    from gateway.manifests import ManifestErrors, load_manifests
    from gateway.secret import SecretError, default_secret_file, load_or_create
    from gateway.server.app import Gateway
    from gateway.store import open_store
    from gateway.tracing import setup as setup_tracing

    try:
        specs = load_manifests(args.manifests, lease_ttl=args.lease_ttl)
    except ManifestErrors as errors:
        print(str(errors), file=sys.stderr)
        return 1
    try:
        secret = load_or_create(Path(args.secret_file) if args.secret_file else default_secret_file())
    except SecretError as exc:
        print(f"idem-gateway: {exc}", file=sys.stderr)
        return 1
    if args.transport == "http":
        from gateway.server.http import HttpRefused, preflight

        try:
            preflight(args.host, args.tokens)
        except HttpRefused as refused:
            print(f"idem-gateway: {refused}", file=sys.stderr)
            return 1
    from gateway.store.cipher import CipherError

    try:
        store = open_store(args.store, busy_timeout=float(_env_or("IDEM_GATEWAY_STORE_TIMEOUT", "5")))
    except CipherError as exc:
        print(f"idem-gateway: {exc}", file=sys.stderr)
        return 1
    tracing = setup_tracing()  # None unless OTEL_* asks for traces and the [otel] extra is installed
    gateway = Gateway(
        specs,
        tracing.store(store) if tracing else store,
        principal=args.principal,
        lease_ttl=args.lease_ttl,
        sweep_interval=args.sweep_interval,
        secret=secret,
        connect_wait=args.connect_wait,
    )
    _install_extras(gateway)
    if tracing:
        tracing.instrument(gateway)
    try:
        async with gateway.running(), anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope)
            if args.transport == "stdio":
                await _serve_stdio(gateway)
            else:
                from gateway.server.http import serve_http

                await serve_http(
                    gateway, host=args.host, port=args.port, tokens_file=args.tokens, stateless=args.stateless
                )
            tg.cancel_scope.cancel()
    except SecretError as exc:
        print(f"idem-gateway: {exc}", file=sys.stderr)
        return 1
    return 0


def _install_extras(gateway: Any) -> None:
    """The gateway's own resources and prompt (the audit trail, the agent policy)."""
    from gateway.audit.resources import install

    install(gateway)


async def _serve_stdio(gateway: Any) -> None:
    from gateway.server.stdio import stdio_transport

    server = gateway.server()
    async with stdio_transport() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            logging.getLogger("gateway").info("signal %d: shutting down", signum)
            scope.cancel()
            return


async def _check(args: argparse.Namespace) -> int:
    from gateway.check import run_check

    return await run_check(Path(args.manifests))


async def _audit(args: argparse.Namespace) -> int:
    from gateway.audit import commands

    return await commands.run_audit(args)


async def _resolve(args: argparse.Namespace) -> int:
    from gateway.audit import commands

    return await commands.run_resolve(args)


async def _purge(args: argparse.Namespace) -> int:
    from gateway.audit import commands

    return await commands.run_purge(args)


async def _import(args: argparse.Namespace) -> int:
    from gateway.importer import run_import

    return await run_import(args)


async def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return await run_demo(args)


COMMANDS = {
    "serve": _serve,
    "check": _check,
    "audit": _audit,
    "resolve": _resolve,
    "purge": _purge,
    "demo": _demo,
    "import": _import,
}
