"""argv → serve / check / audit / resolve / purge / import / demo.

Over stdio nothing but protocol messages may reach stdout, so logging goes to stderr and is
configured before anything else runs, with the filter that masks manifest secrets and escapes
control characters (``gateway.audit.redaction``).

Every option shows its default and its environment variable in ``--help``. Environment values
are read only once a command runs (``--help`` never reads them) and a bad one is a sentence
that names the variable, never a traceback. Numbers are bounded: a value past the bound is a
usage error, not an overflow deep inside.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from gateway.textsafe import escape

DEFAULT_MANIFESTS = "./tool_manifests"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Libraries that log every request with its full URL (a manifest URL may carry a secret in its
# query) at INFO: they speak only when something is wrong.
_QUIET_LOGGERS = ("httpx2", "httpcore2", "httpx", "httpcore")


def default_store_url() -> str:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite:///{Path(state) / 'idem-gateway' / 'gateway.db'}"


# ---- converters: each raises ArgumentTypeError with a sentence ----------------------------------


Convert = Callable[[str], Any]


def _int_range(low: int, high: int) -> Convert:
    def convert(text: str) -> int:
        text = text.strip()
        digits = text.lstrip("+-")
        if not digits.isdigit() or len(digits) > len(str(high)) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}")
        return int(text)

    convert.__name__ = "number"
    return convert


def _seconds(low: float, high: float) -> Convert:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a number of seconds from {low:g} to {high:g}")
        return value

    convert.__name__ = "seconds"
    return convert


def _retention(text: str) -> float | None:
    """A duration (``90d``), or ``off`` to keep audit events for ever."""
    from gateway.durations import MAX_DURATION_DAYS, parse_duration

    if text.strip().lower() == "off":
        return None
    try:
        seconds = parse_duration(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected an integer and a unit (ms s m h d), e.g. 90d, or off"
        ) from None
    if not 0 < seconds <= MAX_DURATION_DAYS * 86400:
        raise argparse.ArgumentTypeError(f"expected a duration from 1ms to {MAX_DURATION_DAYS}d, or off")
    return seconds


def _rate(text: str) -> Any:
    from gateway.server.limits import Rate

    try:
        return Rate.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _log_level(text: str) -> str:
    if text.strip().upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}")
    return text.strip().upper()


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError("expected 1/true/yes/on or 0/false/no/off")


def _text(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# ---- options with an environment variable, read lazily ------------------------------------------

_SPECS = "_env_specs_"


def _option(
    p: argparse.ArgumentParser,
    flag: str,
    *,
    help: str,
    env: str | None = None,
    default: str | None = None,
    shown: str | None = None,
    convert: Convert = _text,
    flag_value: bool = False,
    **kwargs: Any,
) -> None:
    """Add ``flag``; its default comes from ``env`` (if set and not empty), else ``default``,
    both converted only when the command runs. Help shows both."""
    dest = kwargs.pop("dest", None) or flag.lstrip("-").replace("-", "_")
    notes = [f"default: {shown or default or 'none'}"]
    if env:
        notes.append(f"env {env}")
    text = f"{help} ({'; '.join(notes)})".replace("%", "%%")
    if flag_value:
        p.add_argument(flag, dest=dest, action="store_const", const=True, default=None, help=text, **kwargs)
    else:
        p.add_argument(flag, dest=dest, default=None, type=convert, help=text, **kwargs)
    key = _SPECS + str(id(p))
    specs = list(p.get_default(key) or [])
    specs.append((dest, env, default, convert))
    p.set_defaults(**{key: specs})


def _resolve_env(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill every option left unset from its environment variable or its default."""
    for name, specs in list(vars(args).items()):
        if not name.startswith(_SPECS):
            continue
        delattr(args, name)
        for dest, env, default, convert in specs:
            if getattr(args, dest, None) is not None:
                continue
            raw = os.environ.get(env) if env else None
            source = env if raw else None
            if not raw:
                raw = default
            if raw is None:
                continue
            try:
                setattr(args, dest, convert(raw))
            except (argparse.ArgumentTypeError, ValueError) as exc:
                if source is None:
                    raise  # a built-in default that does not convert is a bug, not a usage error
                parser.error(f"{source}={escape(raw)!r}: {exc}")


# ---- the parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from gateway.server.limits import (
        DEFAULT_AUDIT_RETENTION_DAYS,
        DEFAULT_HEADER_TIMEOUT,
        DEFAULT_MAX_CONNECTIONS,
        DEFAULT_RATE,
        DEFAULT_SESSIONS_PER_PRINCIPAL,
    )

    parser = argparse.ArgumentParser(
        prog="idem-gateway",
        description="An MCP gateway that makes agent retries safe with durable idempotency keys.",
    )
    _option(
        parser,
        "--log-level",
        help="log level (logs go to stderr)",
        env="IDEM_GATEWAY_LOG_LEVEL",
        default="INFO",
        convert=_log_level,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def store_arg(p: argparse.ArgumentParser) -> None:
        _option(
            p,
            "--store",
            help="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://user@host/db",
            env="IDEM_GATEWAY_STORE",
            default=default_store_url(),
            shown="sqlite:///$XDG_STATE_HOME/idem-gateway/gateway.db",
        )

    def manifests_arg(p: argparse.ArgumentParser) -> None:
        _option(
            p,
            "--manifests",
            help="the folder of manifests (*.toml, *.json)",
            env="IDEM_GATEWAY_MANIFESTS",
            default=DEFAULT_MANIFESTS,
        )

    def principal_arg(p: argparse.ArgumentParser, help: str) -> None:
        _option(p, "--principal", help=help, env="IDEM_GATEWAY_PRINCIPAL", default="local")

    serve = sub.add_parser("serve", help="run the gateway (stdio by default)")
    manifests_arg(serve)
    store_arg(serve)
    serve.add_argument(
        "--transport", choices=["stdio", "http"], default="stdio", help="stdio or http (default: stdio)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="http: the address to bind (default: 127.0.0.1)")
    _option(serve, "--port", help="http: the port to bind", default="8765", convert=_int_range(0, 65535))
    principal_arg(serve, "the principal of every call over stdio, and over http without tokens")
    _option(
        serve,
        "--tokens",
        env="IDEM_GATEWAY_TOKENS",
        help='http: a TOML file of lines principal = "<sha256 hex of its bearer token>"',
    )
    _option(
        serve,
        "--stateless",
        env="IDEM_GATEWAY_STATELESS",
        default="false",
        convert=_boolean,
        flag_value=True,
        help="http: no handshake-era sessions, so replicas need no sticky sessions",
    )
    _option(
        serve,
        "--lease-ttl",
        env="IDEM_GATEWAY_LEASE_TTL",
        default="10",
        convert=_seconds(0.1, 3600),
        help="seconds a claim's lease lasts without renewal (a crashed holder is noticed after it)",
    )
    _option(
        serve,
        "--sweep-interval",
        env="IDEM_GATEWAY_SWEEP_INTERVAL",
        default="60",
        convert=_seconds(0.01, 86400),
        help="seconds between background sweeps of expired records and events",
    )
    _option(
        serve,
        "--replay-cache",
        env="IDEM_GATEWAY_REPLAY_CACHE",
        default="60",
        convert=_seconds(0, 3600),
        help="seconds a completed result is replayed from memory without reading the store (0: every "
        "replay reads it); an operator's forced resolve reaches a running gateway after at most this",
    )
    _option(
        serve,
        "--secret-file",
        env="IDEM_GATEWAY_SECRET_FILE",
        shown="$XDG_STATE_HOME/idem-gateway/secret.key",
        help="the fingerprint secret, created on first start; every gateway on one store needs the same",
    )
    _option(
        serve,
        "--connect-wait",
        env="IDEM_GATEWAY_CONNECT_WAIT",
        default="2",
        convert=_seconds(0, 3600),
        help="seconds a call waits for a downstream that is (re)connecting before it is refused as "
        "downstream_unavailable",
    )
    _option(
        serve,
        "--store-timeout",
        env="IDEM_GATEWAY_STORE_TIMEOUT",
        default="5",
        convert=_seconds(0.1, 600),
        help="seconds a store operation may wait for a lock or a connection",
    )
    _option(
        serve,
        "--rate-limit",
        env="IDEM_GATEWAY_RATE_LIMIT",
        default=DEFAULT_RATE,
        convert=_rate,
        help="new keys and refused calls per principal, COUNT/UNIT (s, m, h; the burst is COUNT), or off",
    )
    _option(
        serve,
        "--audit-retention",
        env="IDEM_GATEWAY_AUDIT_RETENTION",
        default=f"{DEFAULT_AUDIT_RETENTION_DAYS}d",
        convert=_retention,
        help="how long audit events are kept before the sweeper deletes them, or off",
    )
    _option(
        serve,
        "--max-connections",
        env="IDEM_GATEWAY_MAX_CONNECTIONS",
        default=str(DEFAULT_MAX_CONNECTIONS),
        convert=_int_range(1, 1_000_000),
        help="http: open connections before new requests get 503",
    )
    _option(
        serve,
        "--header-timeout",
        env="IDEM_GATEWAY_HEADER_TIMEOUT",
        default=f"{DEFAULT_HEADER_TIMEOUT:g}",
        convert=_seconds(0.1, 3600),
        help="http: seconds a client has to send a request's headers (then 408)",
    )
    _option(
        serve,
        "--sessions-per-principal",
        env="IDEM_GATEWAY_SESSIONS_PER_PRINCIPAL",
        default=str(DEFAULT_SESSIONS_PER_PRINCIPAL),
        convert=_int_range(1, 1_000_000),
        help="http: open sessions per principal; one more ends its oldest idle session, or gets 429",
    )

    check = sub.add_parser("check", help="validate manifests, start downstreams, list exposed tools")
    manifests_arg(check)

    audit = sub.add_parser("audit", help="read the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    events = audit_sub.add_parser("events", help="the audit trail, newest first")
    store_arg(events)
    events.add_argument("--tool", help="only this exposed tool's events (default: every tool)")
    events.add_argument("--key", help="only this key's events (default: every key)")
    events.add_argument("--outcome", help="only this outcome, e.g. executed, replayed (default: every one)")
    events.add_argument("--principal", help="only this principal's events (default: every principal)")
    _option(events, "--limit", help="at most this many events", default="50", convert=_int_range(1, 100_000))
    events.add_argument("--json", action="store_true", help="JSON instead of a table (default: a table)")
    show = audit_sub.add_parser("show", help="one key's record and every event about it")
    store_arg(show)
    show.add_argument("key", help="the idempotency key")
    principal_arg(show, "the key's principal")
    show.add_argument("--json", action="store_true", help="JSON instead of a table (default: a table)")
    stats = audit_sub.add_parser("stats", help="counts by outcome and tool, duplicates and spend prevented")
    store_arg(stats)
    stats.add_argument("--principal", help="only this principal (default: every principal)")
    stats.add_argument("--json", action="store_true", help="JSON instead of tables (default: tables)")

    resolve = sub.add_parser("resolve", help="settle a key whose outcome is unknown")
    store_arg(resolve)
    manifests_arg(resolve)
    resolve.add_argument("key", help="the idempotency key")
    principal_arg(resolve, "the key's principal")
    resolve.add_argument(
        "--as",
        dest="as_",
        choices=["failed", "completed"],
        required=True,
        help="failed: release the key (a retry runs); completed: store --result to be replayed (required)",
    )
    resolve.add_argument(
        "--result", type=Path, help="a CallToolResult in JSON, with --as completed (default: none)"
    )
    resolve.add_argument(
        "--force", action="store_true", help="settle a key that is not unknown (default: only unknown keys)"
    )

    purge = sub.add_parser("purge", help="delete expired records and old audit events now")
    store_arg(purge)
    _option(
        purge,
        "--audit-retention",
        env="IDEM_GATEWAY_AUDIT_RETENTION",
        default=f"{DEFAULT_AUDIT_RETENTION_DAYS}d",
        convert=_retention,
        help="also delete audit events older than this, or off",
    )

    imp = sub.add_parser("import", help="one manifest per server of an MCP client's configuration")
    imp.add_argument("file", help="claude_desktop_config.json, .mcp.json or VS Code's mcp.json")
    imp.add_argument(
        "--out",
        default=DEFAULT_MANIFESTS,
        help=f"the manifests folder to write into (default: {DEFAULT_MANIFESTS})",
    )
    imp.add_argument(
        "--only", nargs="+", action="extend", metavar="NAME", help="import only these servers (default: all)"
    )
    imp.add_argument("--force", action="store_true", help="overwrite existing manifests (default: keep them)")
    imp.add_argument(
        "--client",
        choices=["claude-desktop", "claude-code", "vscode"],
        help="override detection (default: detected from the file)",
    )
    _option(
        imp,
        "--start-timeout",
        help="seconds each server has to start",
        default="30",
        convert=_seconds(0.1, 3600),
    )

    demo = sub.add_parser("demo", help="a flaky agent's retries, deduplicated")
    demo.add_argument(
        "--store", default=None, help="the store URL (default: a fresh SQLite file in a temp dir)"
    )
    demo.add_argument("--json", action="store_true", help="the figures as JSON (default: a report)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    _resolve_env(parser, args)
    return args


def configure_logging(level: str) -> None:
    from gateway.audit.redaction import install_secret_filter

    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    install_secret_filter()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    handler = COMMANDS[args.command]
    try:
        return int(anyio.run(handler, args) or 0)
    except KeyboardInterrupt:
        return 130


async def _serve(args: argparse.Namespace) -> int:
    from gateway.audit.redaction import install_secret_filter
    from gateway.localfiles import StoreFileError, secure_store
    from gateway.manifests import ManifestErrors, load_manifests
    from gateway.secret import SecretError, default_secret_file, load_or_create
    from gateway.server.app import Gateway
    from gateway.server.limits import Limits
    from gateway.store import open_store
    from gateway.store.cipher import CipherError
    from gateway.tracing import setup as setup_tracing

    try:
        specs = load_manifests(args.manifests, lease_ttl=args.lease_ttl)
    except ManifestErrors as errors:
        print(str(errors), file=sys.stderr)
        return 1
    install_secret_filter(s for spec in specs for s in spec.secrets)
    try:
        secret = load_or_create(Path(args.secret_file) if args.secret_file else default_secret_file())
    except SecretError as exc:
        print(f"idem-gateway: {exc}", file=sys.stderr)
        return 1
    tokens = None
    if args.transport == "http":
        from gateway.server.http import HttpRefused, preflight

        try:
            tokens = preflight(args.host, args.tokens)
        except HttpRefused as refused:
            print(f"idem-gateway: {refused}", file=sys.stderr)
            return 1
    try:
        secure_store(args.store)
    except StoreFileError as exc:
        print(f"idem-gateway: {exc}", file=sys.stderr)
        return 1
    limits = Limits(
        rate=args.rate_limit,
        audit_retention=args.audit_retention,
        sessions_per_principal=args.sessions_per_principal,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
    )
    try:
        store = open_store(args.store, busy_timeout=args.store_timeout)
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
        replay_cache=args.replay_cache,
        secret=secret,
        connect_wait=args.connect_wait,
        limits=limits,
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
                    gateway, host=args.host, port=args.port, tokens=tokens, stateless=args.stateless
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
    from gateway.server import stdio

    await stdio.serve(gateway.server())


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
    "import": _import,
    "demo": _demo,
}
