"""A REST API described by an OpenAPI document, served to the gateway like an MCP downstream.

It offers what the pool, the catalog and the call path use of ``DownstreamSession``: ``run``
(the supervisor: read the document, retrying with backoff until it can be used), ``ready``,
``wait_attempt``, ``tools``, ``call_tool`` and empty resource and prompt lists. One
``httpx2.AsyncClient`` per API, kept for the session's life.

Whether a request was sent is known exactly, not guessed from the exception: httpcore's trace
hook reports when it starts writing the request headers. Any failure before that (DNS, refused
connection, TLS, no pooled connection in time) proves nothing was sent: ``DownstreamUnavailable``.
Any failure after it (a timeout, a dropped connection) is ``DownstreamLost``. What the answer
means is ``wire.result_of``'s business.
"""

from __future__ import annotations

import http.cookiejar
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx2
import mcp_types as types

from gateway import __version__
from gateway.downstream.errors import DownstreamLost, DownstreamRejected, DownstreamUnavailable
from gateway.downstream.features import ToolsOnly
from gateway.downstream.openapi.document import DocumentError, is_url, load
from gateway.downstream.openapi.operations import Listing, Operation, operations_of
from gateway.downstream.openapi.wire import build_request, result_of
from gateway.manifests.models import ServerSpec

logger = logging.getLogger(__name__)

_SPEC_ACCEPT: Final = "application/json, application/yaml;q=0.9, */*;q=0.5"


class OpenAPISession(ToolsOnly):
    """One REST API as a downstream: its operations are the tools (see ``operations``)."""

    def __init__(
        self,
        spec: ServerSpec,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        fetch_timeout: float = 30.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        if spec.openapi_spec is None or spec.base_url is None:
            raise ValueError("an openapi downstream needs spec and base_url")
        self.spec = spec
        self.name = spec.name
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.fetch_timeout = fetch_timeout
        self._transport = transport
        self._client: httpx2.AsyncClient | None = None
        self._operations: dict[str, Operation] | None = None
        self._closed = False
        self._attempts_finished = 0
        self._changed = anyio.Event()
        self.last_error: str | None = None
        self.warnings: list[str] = []  # operations left out, and why
        self.unknown_operations: list[str] = []  # named in `operations` but not in the document
        self.tools: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self.resource_templates: list[dict[str, Any]] = []
        self.prompts: list[dict[str, Any]] = []

    # -- state -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._operations is not None and self._client is not None and not self._closed

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_attempt(self, timeout: float) -> bool:
        """Wait until ready or until an attempt to read the document failed (bounded); ``ready``."""
        seen = self._attempts_finished
        with anyio.move_on_after(timeout):
            while not self.ready and self._attempts_finished == seen and not self._closed:
                await self._changed.wait()
        return self.ready

    # -- supervisor --------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read the document (retrying with backoff until it can be used), then serve until cancelled."""
        task_status.started()
        failures = 0
        try:
            async with self._new_client() as client:
                self._client = client
                while True:
                    try:
                        listing = await self._read(client)
                    except Exception as exc:  # boundary: any failure reading the document means "retry"
                        text = str(exc) if isinstance(exc, DocumentError) else f"{type(exc).__name__}: {exc}"
                        self.last_error = self._scrub(text)
                        logger.warning("downstream %s: %s", self.name, self.last_error)
                    else:
                        self._publish(listing)
                        self._attempts_finished += 1
                        self._signal()
                        await anyio.sleep_forever()
                    self._attempts_finished += 1
                    self._signal()
                    delay = min(self.backoff_max, self.backoff_initial * 2**failures)
                    failures += 1
                    await anyio.sleep(delay)
        finally:
            self._closed = True
            self._client = None
            self._signal()

    def _new_client(self) -> httpx2.AsyncClient:
        # No cookie is ever kept: one principal's session cookie must not ride on another's call.
        no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        return httpx2.AsyncClient(
            headers={"User-Agent": f"idem-gateway/{__version__}", "Accept": "application/json, */*;q=0.5"},
            cookies=no_cookies,
            follow_redirects=False,  # a redirect could carry the manifest's headers to another host
            timeout=self.spec.timeout,
            transport=self._transport,
        )

    async def _read(self, client: httpx2.AsyncClient) -> Listing:
        source = str(self.spec.openapi_spec)
        if is_url(source):
            text, uri = await self._fetch(client, source), source
        else:
            try:
                text = await anyio.Path(source).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise DocumentError(f"{source}: cannot read: {exc}") from exc
            uri = Path(source).as_uri()
        set_headers = [*self.spec.headers, *self._key_headers()]

        def build() -> Listing:
            return operations_of(load(text, uri), set_headers=set_headers)

        return await anyio.to_thread.run_sync(build, abandon_on_cancel=True)

    async def _fetch(self, client: httpx2.AsyncClient, url: str) -> str:
        """The document at ``url``; the manifest's headers go along only to the API's own origin."""
        headers = {"Accept": _SPEC_ACCEPT}
        if _origin(url) == _origin(str(self.spec.base_url)):
            headers.update(self.spec.headers)
        try:
            response = await client.get(url, headers=headers, timeout=self.fetch_timeout)
        except httpx2.HTTPError as exc:
            raise DocumentError(f"{url}: cannot fetch: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise DocumentError(f"{url}: cannot fetch: HTTP {response.status_code} {response.reason_phrase}")
        return response.text

    def _key_headers(self) -> set[str]:
        policies = [self.spec.defaults, *self.spec.tools.values()]
        return {p.forward_key.name for p in policies if p.forward_key and p.forward_key.kind == "header"}

    def _publish(self, listing: Listing) -> None:
        operations = listing.operations
        allowed = self.spec.operations
        self.unknown_operations = []
        if allowed is not None:
            self.unknown_operations = [n for n in allowed if n not in operations]
            operations = {n: op for n, op in operations.items() if n in allowed}
        for warning in listing.warnings:
            logger.warning("downstream %s: %s", self.name, warning)
        for unknown in self.unknown_operations:
            logger.warning("%s: server.operations: %r is not in the document", self.spec.source.name, unknown)
        self.warnings = listing.warnings
        self.tools = [op.tool for op in operations.values()]
        self._operations = operations
        self.last_error = None
        logger.info("downstream %s: ready (OpenAPI, %d tools)", self.name, len(self.tools))

    # -- calls -------------------------------------------------------------------------

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        meta: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float,
        on_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """One operation, as one HTTP request; the result dict, or the failure it means.

        ``on_send`` is called when the request starts going out (its headers are written): a
        cancellation before that provably sent nothing.

        ``headers`` (the forwarded idempotency key) go on the request; ``meta`` has no place in
        a REST call and is ignored (the loader refuses a ``meta:`` forward_key for openapi).

        Raises:
            DownstreamUnavailable: nothing was sent (the document is not loaded, DNS, refused).
            DownstreamLost: sent, and no answer or an answer that leaves the outcome unknown.
            DownstreamRejected: the arguments cannot make a request; nothing was sent.
        """
        client, operations = self._client, self._operations
        if client is None or operations is None or self._closed:
            raise self._unavailable(self.last_error or "its OpenAPI document is not loaded")
        op = operations.get(name)
        if op is None:
            raise DownstreamRejected(f"{self.name}: no operation {name!r}", code=types.INVALID_PARAMS)
        request = self._request(client, op, arguments, headers or {})
        response = await self._send(client, op, request, timeout, on_send)
        key_header = next(iter(headers), None) if headers else None
        try:
            return result_of(op, response, server=self.name, key_header=key_header, scrub=self._scrub)
        except DownstreamLost as exc:
            logger.warning("%s; the outcome is unknown", exc)
            raise

    def _request(
        self,
        client: httpx2.AsyncClient,
        op: Operation,
        arguments: Mapping[str, Any],
        headers: Mapping[str, str],
    ) -> httpx2.Request:
        try:
            request = build_request(client, op, arguments, base_url=str(self.spec.base_url))
            request.headers.update(self.spec.headers)
            request.headers.update(headers)
        except (httpx2.InvalidURL, ValueError, UnicodeEncodeError) as exc:
            raise DownstreamRejected(
                self._scrub(f"{self.name}: {op.method} {op.path}: the arguments make no request: {exc}"),
                code=types.INVALID_PARAMS,
            ) from exc
        return request

    async def _send(
        self,
        client: httpx2.AsyncClient,
        op: Operation,
        request: httpx2.Request,
        timeout: float,
        on_send: Callable[[], None] | None = None,
    ) -> httpx2.Response:
        """Send, mapping transport failures to sent / not sent (the one mapping place)."""
        sent = False

        async def trace(event: str, info: Mapping[str, Any]) -> None:
            nonlocal sent
            if event.endswith(".send_request_headers.started"):
                sent = True
                if on_send is not None:
                    on_send()

        request.extensions["trace"] = trace
        request.extensions["timeout"] = httpx2.Timeout(timeout).as_dict()
        where = f"{self.name}: {op.method} {op.path}"
        try:
            with anyio.fail_after(timeout):
                return await client.send(request)
        except (TimeoutError, httpx2.TimeoutException) as exc:
            if not sent:
                raise self._unavailable(f"no connection within {timeout}s") from exc
            logger.warning("%s: no answer within %ss; the outcome is unknown", where, timeout)
            raise DownstreamLost(f"{where}: no answer within {timeout}s", reason="timeout") from exc
        except httpx2.HTTPError as exc:
            detail = self._scrub(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            if not sent:
                raise self._unavailable(detail) from exc
            logger.warning("%s: the connection failed after sending (%s); outcome unknown", where, detail)
            raise DownstreamLost(f"{where}: {detail}", reason="connection_lost") from exc

    def _unavailable(self, reason: str) -> DownstreamUnavailable:
        reason = self._scrub(reason)
        logger.warning("downstream %s: not reachable: %s", self.name, reason)
        return DownstreamUnavailable(
            f"The downstream server {self.name!r} is not reachable: {reason}. Nothing was sent; "
            "retrying later with the same key is safe.",
            server=self.name,
        )

    # -- what an MCP downstream also offers -----------------------------------------------

    async def list_resources(self) -> list[dict[str, Any]]:
        return []

    async def list_resource_templates(self) -> list[dict[str, Any]]:
        return []

    async def list_prompts(self) -> list[dict[str, Any]]:
        return []

    async def read_resource(self, uri: str, *, timeout: float | None = None) -> dict[str, Any]:
        raise DownstreamRejected(f"{self.name}: a REST API offers no resources", code=types.INVALID_PARAMS)

    async def get_prompt(
        self, name: str, arguments: dict[str, str] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        raise DownstreamRejected(f"{self.name}: a REST API offers no prompts", code=types.INVALID_PARAMS)

    def _scrub(self, text: str) -> str:
        """Never let a header value from the manifest (a token) into a message or a log."""
        for secret in self.spec.secrets:
            text = text.replace(secret, "***")
        return text


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()
