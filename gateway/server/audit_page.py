"""The audit trail in a browser: ``/audit`` (a static page) and its JSON under ``/audit/api/``.

Two halves, on either side of the bearer check:

- The page itself (``/audit``, ``/audit/static/audit.js``, ``audit.css``) holds no data and is
  served before authentication (``with_audit_assets``), so a browser can load it and ask for
  the token. It is plain HTML, CSS and JavaScript shipped in the package (``server/static/``).
- The JSON (``/audit/api/...``) is routed behind ``BearerAuth`` like ``/mcp``: the token names
  the principal, and every read is that principal's own, through the same code that serves the
  ``audit://`` resources (``AuditResources.body``, ``compute_stats``).

Operators: a principal named in ``IDEM_GATEWAY_OPERATORS`` (comma-separated) may view any
principal's audit (``?principal=``) and resolve unknown keys, as ``idem-gateway resolve`` does.
Everybody else sees only their own principal and cannot resolve. Operators are named, never
implied: without a tokens file the single ``--principal`` is an operator only if listed too.

The token: the page asks for it once, keeps it in ``sessionStorage`` (this tab only, gone when
it closes) and sends it as an ``Authorization`` header; it never appears in a URL, so neither
the access log nor a Referer can carry it. No cookie is set or read anywhere.

Hardening on every response: a Content-Security-Policy that allows only this origin's script,
style and fetches (no inline script or style, no framing), ``nosniff``, no referrer, no caching
of data. The page writes everything that came from agents or downstreams with ``textContent``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mcp.server.transport_security import TransportSecurityMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.audit.redaction import SecretFilter
from gateway.audit.resolution import output_problem, shape_problem
from gateway.audit.resources import AuditResources
from gateway.audit.stats import summarize
from gateway.audit.uris import STATS_URI, key_uri
from gateway.audit.views import event_view, iso, record_view
from gateway.errors import StoreUnavailable
from gateway.outcomes import Outcome
from gateway.server.app import PRINCIPAL_SCOPE_KEY
from gateway.store.records import Event, EventQuery, RecordState

if TYPE_CHECKING:
    from gateway.server.app import Gateway

logger = logging.getLogger(__name__)

OPERATORS_ENV = "IDEM_GATEWAY_OPERATORS"
PAGE_PATH = "/audit"
API_PREFIX = "/audit/api"
EVENTS_LIMIT_MAX = 500
UNKNOWN_SCAN = 500  # the newest "unknown" events searched for keys still unknown
REDACTED = "***"

SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_API_HEADERS = {**SECURITY_HEADERS, "Cache-Control": "no-store"}

# path → (file in gateway/server/static, media type)
_ASSETS: Mapping[str, tuple[str, str]] = {
    PAGE_PATH: ("audit.html", "text/html; charset=utf-8"),
    f"{PAGE_PATH}/static/audit.js": ("audit.js", "text/javascript; charset=utf-8"),
    f"{PAGE_PATH}/static/audit.css": ("audit.css", "text/css; charset=utf-8"),
}

# Buckets of the "prevented over time" chart: range → (bucket length, count).
RANGES: Mapping[str, tuple[timedelta, int]] = {
    "day": (timedelta(hours=1), 24),
    "week": (timedelta(days=1), 7),
    "month": (timedelta(days=1), 30),
}


def operators_from(environ: Mapping[str, str]) -> frozenset[str]:
    return frozenset(p.strip() for p in environ.get(OPERATORS_ENV, "").split(",") if p.strip())


# ---- the page: static, open, outside the bearer check -------------------------------------------


def _asset(name: str) -> bytes:
    return resources.files("gateway.server").joinpath("static").joinpath(name).read_bytes()


class AuditAssets:
    """Serves the page's three files itself and hands every other request to ``app``.

    The files are read once, here: a package installed without them fails at start-up.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.bodies = {path: _asset(name) for path, (name, _) in _ASSETS.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asset = _ASSETS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if asset is None:
            await self.app(scope, receive, send)
            return
        if scope.get("method") not in ("GET", "HEAD"):
            response = Response(status_code=405, headers={**SECURITY_HEADERS, "Allow": "GET, HEAD"})
        else:
            response = Response(self.bodies[scope["path"]], media_type=asset[1], headers=SECURITY_HEADERS)
        await response(scope, receive, send)


def with_audit_assets(app: ASGIApp) -> ASGIApp:
    """The hook for ``build_app``: wrap the authenticated app."""
    return AuditAssets(app)


# ---- the JSON: behind the bearer check -------------------------------------------------------------


class ApiError(Exception):
    """An answer other than 200: the status, a code and a sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


Handler = Callable[[Request, str], Awaitable[Any]]  # (request, caller's principal) → JSON body


class AuditApi:
    """The page's JSON endpoints for one gateway."""

    def __init__(
        self, gateway: Gateway, *, host_check: TransportSecurityMiddleware, operators: frozenset[str]
    ) -> None:
        self.gateway = gateway
        self.host_check = host_check
        self.operators = operators
        self.resources = AuditResources(gateway.store, gateway.clock, limit=EVENTS_LIMIT_MAX)
        self.secrets = SecretFilter(s for spec in gateway.specs for s in spec.secrets)

    def routes(self) -> list[Route]:
        def route(path: str, handler: Handler, method: str = "GET") -> Route:
            async def endpoint(request: Request) -> Response:
                return await self._answer(request, handler)

            return Route(API_PREFIX + path, endpoint, methods=[method])

        return [
            route("/me", self.me),
            route("/events", self.events),
            route("/keys/{key:path}", self.key),
            route("/stats", self.stats),
            route("/series", self.series),
            route("/unknown", self.unknown),
            route("/principals", self.principals),
            route("/resolve", self.resolve, "POST"),
        ]

    async def _answer(self, request: Request, handler: Handler) -> Response:
        """Host/Origin (and a POST's Content-Type) checks, the caller, errors as JSON, headers."""
        refusal = await self.host_check.validate_request(request, is_post=request.method == "POST")
        if refusal is not None:
            refusal.headers.update(_API_HEADERS)
            return refusal
        principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
        try:
            if not isinstance(principal, str):  # BearerAuth always sets it; never serve without
                raise ApiError(401, "unauthorized", "Send Authorization: Bearer <token>.")
            body = await handler(request, principal)
        except ApiError as error:
            content = {"error": error.code, "message": error.message}
            return JSONResponse(content, status_code=error.status, headers=_API_HEADERS)
        except StoreUnavailable:
            content = {"error": "store_unavailable", "message": "The store cannot be reached; try again."}
            return JSONResponse(content, status_code=503, headers=_API_HEADERS)
        return JSONResponse(body, headers=_API_HEADERS)

    # -- who ---------------------------------------------------------------------------------

    def _target(self, request: Request, principal: str) -> str:
        """Whose audit: the caller's own, or (operators only) the one ``?principal=`` names."""
        wanted = request.query_params.get("principal") or principal
        if wanted != principal and principal not in self.operators:
            raise ApiError(403, "forbidden", "Only an operator may read another principal's audit.")
        return wanted

    async def me(self, request: Request, principal: str) -> Any:
        return {"principal": principal, "operator": principal in self.operators}

    async def principals(self, request: Request, principal: str) -> Any:
        """Operators: the principals seen in the newest events, to pick from."""
        if principal not in self.operators:
            return {"principals": [principal]}
        events = await self.gateway.store.events(EventQuery(limit=EVENTS_LIMIT_MAX))
        return {"principals": sorted({principal, *(e.principal for e in events)})}

    # -- reading -----------------------------------------------------------------------------

    async def events(self, request: Request, principal: str) -> Any:
        target = self._target(request, principal)
        q = request.query_params
        try:
            limit = min(EVENTS_LIMIT_MAX, max(1, int(q.get("limit") or 100)))
        except ValueError:
            raise ApiError(400, "invalid_limit", "limit must be a whole number") from None
        query = EventQuery(
            principal=target,
            key=q.get("key") or None,
            tool=q.get("tool") or None,
            outcome=q.get("outcome") or None,
            limit=limit,
        )
        return {"events": [event_view(e) for e in await self.gateway.store.events(query)]}

    async def key(self, request: Request, principal: str) -> Any:
        """One key's story: the ``audit://keys/{key}`` body, its result shown redacted."""
        target = self._target(request, principal)
        key = request.path_params["key"]
        body = await self.resources.body(target, key_uri(quote(key, safe="")))
        record = body.get("record")
        if record is None and not body["events"]:
            raise ApiError(404, "not_found", "No such key.")  # another principal's reads the same
        if record is not None and record.get("result") is not None:
            record["result"] = self._redacted_result(record["tool"], record["result"])
        return body

    async def stats(self, request: Request, principal: str) -> Any:
        target = self._target(request, principal)
        return await self.resources.body(target, STATS_URI)

    async def series(self, request: Request, principal: str) -> Any:
        """Duplicates and spend prevented per bucket, exact: counts since each bucket's start,
        newest first, so a bucket is the difference of two counts (an event landing meanwhile
        can only add to the older bucket, never make one negative)."""
        target = self._target(request, principal)
        name = request.query_params.get("range") or "day"
        if name not in RANGES:
            raise ApiError(400, "invalid_range", f"range is one of {', '.join(RANGES)}")
        step, count = RANGES[name]
        now = self.gateway.clock().astimezone(UTC)
        end = _floor(now, step) + step
        starts = [end - step * i for i in range(count, 0, -1)]
        since: dict[datetime, dict[str, Any]] = {}
        for start in reversed(starts):
            since[start] = summarize(await self.gateway.store.outcome_counts(target, start))
        nothing = {"duplicates_prevented": 0, "spend_prevented": 0.0}
        buckets = []
        for i, start in enumerate(starts):
            later = since[starts[i + 1]] if i + 1 < len(starts) else nothing
            duplicates = since[start]["duplicates_prevented"] - later["duplicates_prevented"]
            spend = since[start]["spend_prevented"] - later["spend_prevented"]
            buckets.append(
                {"start": iso(start), "duplicates": max(0, duplicates), "spend": round(max(0.0, spend), 6)}
            )
        return {"range": name, "step_seconds": int(step.total_seconds()), "buckets": buckets}

    async def unknown(self, request: Request, principal: str) -> Any:
        """Keys whose outcome is unknown now (found through their ``unknown`` events)."""
        target = self._target(request, principal)
        store = self.gateway.store
        events = await store.events(
            EventQuery(principal=target, outcome=Outcome.UNKNOWN.value, limit=UNKNOWN_SCAN)
        )
        keys: list[dict[str, Any]] = []
        seen: set[str] = set()
        for event in events:
            if event.key is None or event.key in seen:
                continue
            seen.add(event.key)
            record = await store.get(target, event.key)
            if record is not None and record.state is RecordState.UNKNOWN:
                reason = (event.detail or {}).get("reason")
                keys.append(
                    {
                        "key": record.key,
                        "tool": record.tool,
                        "server": record.server,
                        "since": iso(event.at),
                        "created_at": iso(record.created_at),
                        "reason": reason,
                        "arguments": event.arguments,
                    }
                )
        return {"keys": keys, "operator": principal in self.operators}

    # -- resolving ---------------------------------------------------------------------------

    async def resolve(self, request: Request, principal: str) -> Any:
        """An operator settles an unknown key, as ``idem-gateway resolve`` does.

        CSRF-safe by construction: the request is authenticated only by its Authorization
        header, which a browser never attaches on its own (unlike a cookie; none is ever set),
        and it must be ``Content-Type: application/json`` (checked before this runs), which a
        page of another origin cannot send without a CORS preflight that this server never
        answers. A forged cross-site request therefore carries no credential, or never leaves
        the browser. The body is JSON only; nothing comes from the query string or a form.
        """
        if principal not in self.operators:
            raise ApiError(403, "forbidden", f"Only an operator ({OPERATORS_ENV}) may resolve a key.")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "The body must be a JSON object.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "The body must be a JSON object.")
        key, settle = body.get("key"), body.get("as")
        target = body.get("principal") or principal
        if not isinstance(key, str) or not key or not isinstance(target, str):
            raise ApiError(400, "invalid_request", "Give the key (and optionally the principal) as strings.")
        if settle not in ("failed", "completed"):
            raise ApiError(400, "invalid_request", 'as is "failed" (release the key) or "completed".')
        result = body.get("result")
        store = self.gateway.store
        record = await store.get(target, key)
        if record is None:
            raise ApiError(404, "not_found", "No such key.")
        if record.state is not RecordState.UNKNOWN:
            raise ApiError(
                409, "not_unknown", f"The key is {record.state.value}: only an unknown outcome is resolved."
            )
        if settle == "failed":
            if result is not None:
                raise ApiError(400, "invalid_request", 'A result goes with "completed" only.')
        else:
            self._check_result(record.tool, result)
        assert result is None or isinstance(result, dict)
        is_error = bool(result.get("isError", False)) if result else False
        event = Event(
            at=store.now(),
            principal=target,
            key=key,
            server=record.server,
            tool=record.tool,
            outcome=Outcome.RESOLVED.value,
            fingerprint=record.fingerprint,
            detail={"as": settle, "previous_state": record.state.value, "by": principal, "via": "audit page"},
        )
        # Fenced on the record as read: a key taken over meanwhile is not settled by this.
        settled = await store.resolve(
            target, key, expected=record, result=result, is_error=is_error, now=event.at, event=event
        )
        if settled is None:
            raise ApiError(409, "changed", "The key changed while it was being resolved; look at it again.")
        for listener in self.gateway.guard.listeners:  # subscribers to audit://keys/{key}
            try:
                await listener(target, key)
            except Exception:  # a subscriber must not turn a settled key into an error
                logger.exception("record-change listener failed")
        after = await store.get(target, key)
        return {"resolved": settle, "record": record_view(after)}

    def _check_result(self, tool_name: str, result: Any) -> None:
        """A CallToolResult, and against the tool's outputSchema when the downstream lists one."""
        problem = shape_problem(result)
        if problem is None:
            tool = self.gateway.catalog.get(tool_name) if self.gateway.catalog is not None else None
            schema = tool.listed.get("outputSchema") if tool is not None else None
            problem = output_problem(result, schema if isinstance(schema, dict) else None)
        if problem is not None:
            raise ApiError(400, "invalid_result", f"The result cannot be stored: {problem}.")

    def _redacted_result(self, tool_name: str, result: dict[str, Any]) -> dict[str, Any]:
        """What a person may see of a stored result: the tool's ``redact`` fields masked
        wherever they appear in it, and no manifest secret a downstream may have echoed."""
        tool = self.gateway.catalog.get(tool_name) if self.gateway.catalog is not None else None
        fields = frozenset(tool.policy.redact) if tool is not None else frozenset()
        masked = _mask_fields(result, fields)
        if self.secrets.secrets:
            masked = json.loads(self.secrets.mask(json.dumps(masked)))
        return masked


def _mask_fields(value: Any, fields: frozenset[str]) -> Any:
    """``{"card_number": "4242..."}`` → ``{"card_number": "***"}`` at any depth, and inside
    text content that is itself JSON (what most servers put next to structuredContent)."""
    if not fields:
        return value
    if isinstance(value, dict):
        out = {k: (REDACTED if k in fields else _mask_fields(v, fields)) for k, v in value.items()}
        if out.get("type") == "text" and isinstance(out.get("text"), str):
            try:
                parsed = json.loads(out["text"])
            except json.JSONDecodeError:
                return out
            if isinstance(parsed, dict | list):
                out["text"] = json.dumps(_mask_fields(parsed, fields), ensure_ascii=False)
        return out
    if isinstance(value, list):
        return [_mask_fields(v, fields) for v in value]
    return value


def _floor(at: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + step * ((at - epoch) // step)


def audit_routes(gateway: Gateway, *, security: Any, environ: Mapping[str, str] | None = None) -> list[Route]:
    """The hook for ``build_app``: the JSON routes, checked like ``/mcp`` (``security`` is the
    same ``TransportSecuritySettings``, or None where tokens are the protection)."""
    operators = operators_from(os.environ if environ is None else environ)
    api = AuditApi(gateway, host_check=TransportSecurityMiddleware(security), operators=operators)
    return api.routes()
