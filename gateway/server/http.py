"""Streamable HTTP: the SDK's ASGI app on uvicorn, behind bearer tokens that name principals.

Request path: ``BearerAuth`` (401, or the principal into the ASGI scope) → Starlette routes →
``/mcp``: the SDK's session manager (body limit → 413, Host/Origin check → 421/403, then the
2026-07-28 single-exchange entry or the handshake-era transport) → ``Gateway`` handlers, which
read the principal back with ``Gateway.principal_of``.

Who may bind where: without a tokens file every caller is the one ``--principal``, so the
gateway listens only on loopback and the SDK's DNS-rebinding protection (Host and Origin must
be loopback) keeps web pages in the user's browser out. With tokens it may listen anywhere;
the token, which a browser page cannot know, is the protection.

Limits (``gateway.server.http_limits``): a header timeout and a connection cap bound what a
client can hold before its token is even read; a principal holds at most so many sessions;
accept failures and other client-triggered warnings are logged once per interval.

Replicas: 2026-07-28 requests carry no session and work on any replica. Handshake-era clients
get an ``Mcp-Session-Id`` that only the replica which issued it knows, unless ``stateless``:
then each of their requests is served on its own too (no standalone SSE stream, so no
``resources/subscribe`` notifications for them), which is what N replicas behind a load
balancer without sticky sessions need.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import resource
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import uvicorn
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__, _sdk
from gateway.server import metrics
from gateway.server.app import PRINCIPAL_SCOPE_KEY
from gateway.server.audit_page import audit_routes, with_audit_assets
from gateway.server.http_limits import (
    Listener,
    SdkSessions,
    SessionCap,
    bounded_protocol,
    install_log_rate_limits,
)
from gateway.server.limits import Limits

if TYPE_CHECKING:
    from gateway.server.app import Gateway

logger = logging.getLogger(__name__)

MCP_PATH = "/mcp"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
GRACEFUL_SHUTDOWN_SECONDS = 5
LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Descriptors kept free for everything but client connections: downstreams, the store, logs.
FD_HEADROOM = 64


class HttpRefused(Exception):
    """The HTTP server will not start as configured (the message says why and what to do)."""


# ---- tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tokens:
    """SHA-256 digests of bearer tokens and the principal each one names.

    Only digests are kept, so the file can be read by more people than the tokens themselves.
    """

    digests: tuple[tuple[bytes, str], ...]

    @classmethod
    def load(cls, path: str | Path) -> Tokens:
        """Lines ``principal = "<sha256 hex>"`` (or a list of them, to rotate a token)."""
        path = Path(path)
        try:
            _check_mode(path)
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise HttpRefused(f"cannot read the tokens file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise HttpRefused(f"{path}: not valid TOML: {exc}") from None
        return cls.parse(table, source=str(path))

    @classmethod
    def parse(cls, table: Mapping[str, Any], *, source: str = "tokens") -> Tokens:
        digests: list[tuple[bytes, str]] = []
        owner: dict[bytes, str] = {}
        for principal, value in table.items():
            values = value if isinstance(value, list) else [value]
            if not principal or not values:
                raise HttpRefused(f"{source}: {principal!r}: needs a principal name and a token hash")
            for digest in values:
                if not isinstance(digest, str) or not _SHA256_HEX.match(digest.lower()):
                    raise HttpRefused(
                        f"{source}: {principal}: expected the SHA-256 hex of a token (64 hex digits), "
                        'e.g. printf %s "$TOKEN" | sha256sum'
                    )
                raw = bytes.fromhex(digest)
                first = owner.setdefault(raw, principal)
                if first != principal:
                    raise HttpRefused(
                        f"{source}: {first} and {principal} list the same token hash: a token must name "
                        "one principal (otherwise whoever holds it acts as the first one listed)"
                    )
                if (raw, principal) not in digests:
                    digests.append((raw, principal))
        if not digests:
            raise HttpRefused(f'{source}: no tokens: add a line principal = "<sha256 hex of its token>"')
        return cls(tuple(digests))

    def principal_for(self, token: str) -> str | None:
        """The token's principal, comparing every digest in constant time (no early exit)."""
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: str | None = None
        for digest, principal in self.digests:
            if hmac.compare_digest(presented, digest) and found is None:
                found = principal
        return found


def _check_mode(path: Path) -> None:
    """Refuse a tokens file others can write (they could add a principal); warn if they can read
    it (a weak token can be found from its hash)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise HttpRefused(
            f"the tokens file {path} is writable by other users, who could add a principal: "
            f"chmod go-w {path} (0600 is best)"
        )
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning(
            "the tokens file %s is readable by other users (mode %o): a weak token can be found from "
            "its hash; chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def preflight(host: str, tokens_file: str | Path | None) -> Tokens | None:
    """Refuse a configuration that would expose one anonymous principal to the network.

    The CLI calls this before starting any downstream, so a refusal costs nothing.
    """
    tokens = Tokens.load(tokens_file) if tokens_file else None
    if tokens is None and not is_loopback(host):
        raise HttpRefused(
            f"refusing to serve on {host} without bearer tokens: every caller would act as the one "
            "principal. Bind a loopback address (--host 127.0.0.1), or give a tokens file "
            '(--tokens FILE or IDEM_GATEWAY_TOKENS) of lines principal = "<sha256 hex of its token>".'
        )
    return tokens


# ---- the ASGI app ------------------------------------------------------------------------------


class BearerAuth:
    """Names the caller's principal in the scope, or answers 401 before anything else runs.

    Open: ``/healthz`` always (load balancers probe it without credentials); ``/metrics`` when no
    tokens are configured (loopback only). Everything else needs a known token if tokens are
    configured. The principal also goes into ``scope["user"]`` the way the SDK's own auth does,
    so a handshake-era session can only be used with the credential that opened it.
    """

    def __init__(self, app: ASGIApp, *, tokens: Tokens | None, default_principal: str) -> None:
        self.app = app
        self.tokens = tokens
        self.default_principal = default_principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        if self.tokens is None:
            principal = self.default_principal
        else:
            token = _bearer(scope)
            found = self.tokens.principal_for(token) if token is not None else None
            if found is None:
                await _unauthorized(invalid=token is not None)(scope, receive, send)
                return
            principal = found
        scope[PRINCIPAL_SCOPE_KEY] = principal
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=principal, scopes=[]))
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _unauthorized(*, invalid: bool) -> Response:
    challenge = 'Bearer realm="idem-gateway"' + (', error="invalid_token"' if invalid else "")
    return JSONResponse(
        {
            "error": "invalid_token" if invalid else "unauthorized",
            "message": "Send Authorization: Bearer <token>; the gateway's tokens file names its principal.",
        },
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )


def security_settings(host: str) -> TransportSecuritySettings | None:
    """DNS-rebinding protection on loopback binds; elsewhere tokens are required instead."""
    if not is_loopback(host):
        return None
    bound = f"[{host.strip('[]')}]:*" if ":" in host else f"{host}:*"
    origin = f"http://{bound}"
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=sorted({*LOOPBACK_HOSTS, bound}),
        allowed_origins=sorted({*LOOPBACK_ORIGINS, origin}),
    )


def build_app(
    gateway: Gateway,
    *,
    host: str,
    tokens: Tokens | None,
    stateless: bool = False,
    max_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE,
) -> ASGIApp:
    """The whole HTTP face: /mcp from the SDK, /healthz and /metrics from here, auth around all,
    and at most ``gateway.limits.sessions_per_principal`` sessions per principal."""
    security = security_settings(host)
    host_check = TransportSecurityMiddleware(security)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def metrics_text(request: Request) -> Response:
        # Without tokens the only guard is the loopback Host check, as for /mcp.
        if tokens is None and (refusal := await host_check.validate_request(request)) is not None:
            return refusal
        return Response(
            gateway.metrics.render(waiting=gateway.guard.waiting()), media_type=metrics.CONTENT_TYPE
        )

    server = gateway.server()
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=stateless,
        max_request_body_size=max_body_size,
        transport_security=security,
        host=host,
        custom_starlette_routes=[
            Route(HEALTH_PATH, healthz, methods=["GET"]),
            Route(METRICS_PATH, metrics_text, methods=["GET"]),
            *audit_routes(gateway, security=security),  # /audit/api/*: the audit page's JSON
        ],
    )
    sessions = None if stateless else SdkSessions(server.session_manager)
    limits = getattr(gateway, "limits", None) or Limits()
    capped = SessionCap(app, sessions, per_principal=limits.sessions_per_principal, path=MCP_PATH)
    return with_audit_assets(BearerAuth(capped, tokens=tokens, default_principal=gateway.principal))


# ---- serving ---------------------------------------------------------------------------------


def _listen(host: str, port: int) -> socket.socket:
    """Bind here rather than in uvicorn, which calls sys.exit on a busy port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock: socket.socket = Listener(family, kind, proto)
    except OSError as exc:
        raise HttpRefused(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise HttpRefused(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


async def serve_http(
    gateway: Gateway,
    *,
    host: str,
    port: int,
    tokens_file: str | Path | None = None,
    tokens: Tokens | None = None,
    stateless: bool = False,
    max_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE,
) -> None:
    """Serve until cancelled, then stop taking connections and let running requests finish.

    A running request is a tools/call that may already be downstream: the grace period lets
    it complete and store its result rather than leave its key unknown.
    """
    if tokens is None:  # else the caller ran ``preflight`` already (the CLI, before any downstream)
        tokens = preflight(host, tokens_file)
    app = build_app(gateway, host=host, tokens=tokens, stateless=stateless, max_body_size=max_body_size)
    limits = getattr(gateway, "limits", None) or Limits()
    install_log_rate_limits()
    config = uvicorn.Config(
        app,
        log_config=None,  # the CLI's logging: stderr, one format
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        http=bounded_protocol(limits.header_timeout),
        limit_concurrency=connection_cap(limits.max_connections),
    )
    server = _sdk.uvicorn_server(config)  # no signal handlers: the CLI owns signals
    sock = _listen(host, port)
    with sock:
        logger.info(
            "serving MCP on http://%s%s (%s, %s)",
            _authority(sock),
            MCP_PATH,
            f"{len({p for _, p in tokens.digests})} principals by bearer token"
            if tokens
            else f"principal {gateway.principal!r}, loopback only",
            "stateless" if stateless else "handshake-era sessions kept per replica",
        )

        async def stop_when_cancelled() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                server.should_exit = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_when_cancelled)
            # Shielded: cancellation reaches uvicorn only as should_exit, so it shuts down in order.
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])
            tg.cancel_scope.cancel()


def connection_cap(wanted: int) -> int:
    """``wanted``, or fewer if the descriptor limit would run out first (then the cap answers
    503 before accept fails)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = max(8, soft - FD_HEADROOM if soft > 2 * FD_HEADROOM else soft // 2)
    if room < wanted:
        logger.warning(
            "the descriptor limit (%d) leaves room for %d connections, not %d: raise it (ulimit -n) for more",
            soft,
            room,
            wanted,
        )
    return min(wanted, room)


def _authority(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
