"""One call on the wire: arguments → an HTTP request; the HTTP answer → a result or a failure.

The answer is classified the way the guard needs it (see ``gateway.downstream.errors``):

    2xx                        the tool's answer: JSON → structuredContent (an object) + its text
    3xx, 4xx                   the API's answer, an isError result (stored or released per store_errors)
    409 / 422 about the key    (only when the key was sent) 422: the API holds the key for another
                               payload → the ``idempotency_key_conflict`` refusal, relayed;
                               409: a request with this key is still running there →
                               DownstreamLost (unknown: the retry re-sends the key and gets its answer)
    408, 429                   DownstreamLost: the request may have been acted on (``rejected_before_
                               execution_status``); the retry re-sends the key, so the API dedupes it
    5xx                        DownstreamLost: sent, outcome unknown
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import quote

import httpx2
import mcp_types as types

from gateway import meta
from gateway.downstream.errors import DownstreamLost, DownstreamRejected, rejected_before_execution_status
from gateway.downstream.openapi.operations import BODY_ARGUMENT, Operation, Parameter
from gateway.errors import IdempotencyKeyConflict

HTTP_STATUS_META: Final = meta.HTTP_STATUS
_EXCERPT: Final = 500
_JSON: Final = re.compile(r"^application/(?:[\w.-]+\+)?json$", re.IGNORECASE)
_TEXT: Final = re.compile(
    r"^(text/|application/(?:[\w.-]+\+)?(?:xml|javascript|x-www-form-urlencoded)$)", re.I
)
_UNSHOWN_HEADERS: Final = frozenset({"set-cookie"})

Scrub = Callable[[str], str]


# ---------------------------------------------------------------------------------- request


def build_request(
    client: httpx2.AsyncClient, op: Operation, arguments: Mapping[str, Any], *, base_url: str
) -> httpx2.Request:
    """The request an operation's arguments make. Raises ``DownstreamRejected`` (nothing sent)."""
    path = op.path
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    for param in op.parameters:
        if param.name not in arguments or arguments[param.name] is None:
            continue
        value = arguments[param.name]
        if param.location == "path":
            path = path.replace("{" + param.name + "}", _simple(param, value, encode=True))
        elif param.location == "query":
            query.extend(_query(param, value))
        else:
            text = _simple(param, value, encode=False)
            if any(c in text for c in "\r\n\0"):
                raise DownstreamRejected(
                    f"header parameter {param.name!r} contains a line break", code=types.INVALID_PARAMS
                )
            headers[param.name] = text
    missing = re.findall(r"\{([^}]+)\}", path)
    if missing:
        raise DownstreamRejected(f"path parameter {missing[0]!r} is missing", code=types.INVALID_PARAMS)
    content: bytes | None = None
    body = _body(op, arguments)
    if body is not _NO_BODY:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers["Content-Type"] = op.media_type or "application/json"
    return client.build_request(
        op.method,
        base_url.rstrip("/") + path,
        params=tuple(query),
        headers=headers,
        content=content,
    )


_NO_BODY: Final = object()


def _body(op: Operation, arguments: Mapping[str, Any]) -> Any:
    if op.body == "nested":
        return arguments[BODY_ARGUMENT] if BODY_ARGUMENT in arguments else _NO_BODY
    if op.body == "flat":
        names = {p.name for p in op.parameters}
        body = {k: v for k, v in arguments.items() if k not in names}
        return body if body or op.body_required else _NO_BODY
    return _NO_BODY


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return json.dumps(value)  # true/false/null and numbers as JSON spells them
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _simple(param: Parameter, value: Any, *, encode: bool) -> str:
    """OpenAPI's ``simple`` style (path and header parameters)."""
    if param.as_json:
        text = _scalar(value) if not isinstance(value, str) else json.dumps(value)
        return quote(text, safe="") if encode else text

    def one(v: Any) -> str:
        return quote(_scalar(v), safe="") if encode else _scalar(v)

    if isinstance(value, list):
        return ",".join(one(v) for v in value)
    if isinstance(value, dict):
        if param.explode:
            return ",".join(f"{one(k)}={one(v)}" for k, v in value.items())
        return ",".join(f"{one(k)},{one(v)}" for k, v in value.items())
    return one(value)


def _query(param: Parameter, value: Any) -> list[tuple[str, str]]:
    """OpenAPI's query styles: form (exploded or not), space- and pipe-delimited, deepObject."""
    name = param.name
    if param.as_json:
        return [(name, json.dumps(value, ensure_ascii=False, separators=(",", ":")))]
    if isinstance(value, list):
        items = [_scalar(v) for v in value]
        if param.style == "form" and param.explode:
            return [(name, v) for v in items]
        separator = {"spaceDelimited": " ", "pipeDelimited": "|"}.get(param.style, ",")
        return [(name, separator.join(items))]
    if isinstance(value, dict):
        if param.style == "deepObject":
            return [(f"{name}[{k}]", _scalar(v)) for k, v in value.items()]
        if param.explode:
            return [(str(k), _scalar(v)) for k, v in value.items()]
        return [(name, ",".join(f"{k},{_scalar(v)}" for k, v in value.items()))]
    return [(name, _scalar(value))]


# --------------------------------------------------------------------------------- response


def result_of(
    op: Operation, response: httpx2.Response, *, server: str, key_header: str | None, scrub: Scrub
) -> dict[str, Any]:
    """The CallToolResult dict of an HTTP answer, or the failure it means (see the module doc).

    ``key_header``: the header the idempotency key was sent in, if one was.
    """
    status = response.status_code
    where = f"{server}: {op.method} {op.path}"
    if 200 <= status < 300:
        return _result(op, response, is_error=False)
    if key_header is not None and status in (409, 422) and _about_the_key(response, key_header):
        if status == 409:
            raise DownstreamLost(
                scrub(f"{where}: the API reports a request with this key still in progress (HTTP 409)"),
                reason="error_after_send",
            )
        return _relayed_conflict()
    if 400 <= status < 500 and not rejected_before_execution_status(status):
        retry = response.headers.get("retry-after")
        after = f"; Retry-After: {retry}" if retry else ""
        raise DownstreamLost(
            scrub(f"{where}: HTTP {status} {response.reason_phrase}{after}; it may have been acted on"),
            reason="error_after_send",
        )
    if 300 <= status < 500:
        return _result(op, response, is_error=True)
    raise DownstreamLost(
        scrub(f"{where}: HTTP {status} {response.reason_phrase}: {_excerpt(response)}"),
        reason="error_after_send",
    )


def _about_the_key(response: httpx2.Response, key_header: str) -> bool:
    """A 409/422 whose body speaks of the key (the IETF draft's problem documents do)."""
    text = response.text[:4096].lower()
    return "idempoten" in text or key_header.lower() in text


def _relayed_conflict() -> dict[str, Any]:
    error = IdempotencyKeyConflict(
        "The API refused this idempotency key: it already holds it for a request with a different "
        "payload (HTTP 422), and nothing ran. Generate a new key for this action; reuse a key only "
        "to retry exactly the same call.",
        source="downstream",
    )
    return {
        "content": [{"type": "text", "text": f"{error.message} [{error.code}]"}],
        "isError": True,
        "_meta": {meta.ERROR: error.to_meta(), HTTP_STATUS_META: 422},
    }


def _result(op: Operation, response: httpx2.Response, *, is_error: bool) -> dict[str, Any]:
    status = response.status_code
    line = f"HTTP {status} {response.reason_phrase}".rstrip()
    result: dict[str, Any] = {"isError": is_error, "_meta": {HTTP_STATUS_META: status}}
    if op.method == "HEAD" or 300 <= status < 400:  # the answer is the status and the headers
        shown = [f"{k}: {v}" for k, v in response.headers.items() if k.lower() not in _UNSHOWN_HEADERS]
        return {"content": [_text("\n".join([line, *shown]))], **result}
    if not response.content:
        return {"content": [_text(line)], **result}
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if _JSON.match(media_type):
        try:
            value = response.json()
        except ValueError:
            pass  # mislabelled: shown as the text it is
        else:
            text = json.dumps(value, ensure_ascii=False)
            result["content"] = [_text(f"{line}: {text}" if is_error else text)]
            if isinstance(value, dict) and not is_error:
                result["structuredContent"] = value
            return result
    if not media_type or _JSON.match(media_type) or _TEXT.match(media_type):
        return {"content": [_text(f"{line}: {response.text}" if is_error else response.text)], **result}
    data = base64.b64encode(response.content).decode()
    kind = media_type.split("/")[0]
    if kind in ("image", "audio"):
        blob: dict[str, Any] = {"type": kind, "data": data, "mimeType": media_type}
    else:
        uri = str(response.request.url.copy_with(query=None))
        blob = {"type": "resource", "resource": {"uri": uri, "mimeType": media_type, "blob": data}}
    return {"content": [_text(line), blob] if is_error else [blob], **result}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _excerpt(response: httpx2.Response) -> str:
    text = " ".join(response.text.split())
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "…"
