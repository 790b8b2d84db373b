"""The operations of an OpenAPI document as MCP tools, and how each one's arguments go on the wire.

Naming: a tool is named by the operation's ``operationId``, with characters MCP does not allow
in a tool name (``[A-Za-z0-9_.-]``, up to 128) replaced by ``_``. An operation without one gets
a name derived from its method and path, stable as long as the path is: ``POST
/invoices/{invoice_id}/send`` → ``post_invoices_invoice_id_send``. Two operations that end up
with one name: the first (operationIds before derived names, then document order) keeps it,
the other is skipped with a warning.

Arguments: every path, query and header parameter is an argument of its own name. A JSON
request body whose schema is a plain object (``properties``, no ``allOf``/``oneOf``/...)
is flattened: its properties are arguments too, so ``redact``, ``fingerprint_exclude`` and
``key_from`` can name them; any other body is the one argument ``body``. An argument name
claimed twice (a query and a header parameter both called ``id``) skips the operation.

Not made into tools, each with a warning: a required cookie parameter, a required body that is
not JSON, a parameter style this module does not serialize. Header parameters the gateway
sets itself (the manifest's ``headers``, the key header, ``Accept``, ``Content-Type``,
``Authorization``) are not arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gateway.downstream.openapi.document import Document
from gateway.downstream.openapi.schema import Converter

METHODS: Final = ("get", "put", "post", "delete", "patch", "head")  # OPTIONS and TRACE are no tools
READ_ONLY: Final = frozenset({"GET", "HEAD"})
BODY_ARGUMENT: Final = "body"
_TOOL_NAME: Final = re.compile(r"[^A-Za-z0-9_.-]+")
_JSON_MEDIA: Final = re.compile(r"^application/(?:[\w.-]+\+)?json$", re.IGNORECASE)
_IGNORED_HEADERS: Final = frozenset({"accept", "content-type", "authorization"})  # OpenAPI says so
_STYLES: Final = {
    "path": frozenset({"simple"}),
    "query": frozenset({"form", "spaceDelimited", "pipeDelimited", "deepObject"}),
    "header": frozenset({"simple"}),
}
_DEFAULT_STYLE: Final = {"path": "simple", "query": "form", "header": "simple"}

Location = Literal["path", "query", "header"]


class Skip(Exception):
    """This operation cannot be a tool; the message says why."""


@dataclass(frozen=True, slots=True)
class Parameter:
    """One path, query or header parameter: its argument and how it is serialized."""

    name: str  # on the wire, and the argument's name
    location: Location
    style: str
    explode: bool
    as_json: bool = False  # declared with `content: application/json`: sent as JSON text


@dataclass(frozen=True, slots=True)
class Operation:
    """One tool: its MCP listing and the HTTP request its arguments make."""

    name: str
    method: str  # upper case
    path: str  # the template, e.g. /invoices/{invoice_id}
    parameters: tuple[Parameter, ...]
    body: Literal["none", "flat", "nested"]
    body_required: bool
    media_type: str | None
    tool: dict[str, Any]

    @property
    def read_only(self) -> bool:
        return self.method in READ_ONLY


@dataclass
class Listing:
    """What a document offers: the tools, and the operations left out (with why)."""

    operations: dict[str, Operation] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def operations_of(document: Document, *, set_headers: Iterable[str] = ()) -> Listing:
    """Every operation that can be a tool. ``set_headers``: header names the gateway sends itself."""
    omitted = _IGNORED_HEADERS | {h.lower() for h in set_headers}
    found: list[tuple[bool, str, str, str, dict[str, Any], list[Any]]] = []
    for path, item in (document.root.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("$ref"), str):
            _, _, item = document.resolve(document.uri, item["$ref"])
        for method in METHODS:
            op = item.get(method)
            if isinstance(op, dict):
                op_id = op.get("operationId")
                derived = not isinstance(op_id, str) or not op_id
                name = _tool_name(f"{method} {path}" if derived else str(op_id))
                found.append((derived, name, method.upper(), path, op, list(item.get("parameters") or [])))

    listing = Listing()
    taken: dict[str, str] = {}
    for _, name, method, path, op, shared in sorted(found, key=lambda f: f[0]):  # stable: ids first
        where = f"{method} {path}"
        if not name:
            listing.warnings.append(f"{where}: skipped: no usable tool name")
            continue
        if name in taken:
            listing.warnings.append(f"{where}: skipped: its tool name {name!r} is taken by {taken[name]}")
            continue
        try:
            listing.operations[name] = _operation(document, name, method, path, op, shared, omitted)
        except Skip as why:
            listing.warnings.append(f"{where} ({name}): skipped: {why}")
            continue
        taken[name] = where
    return listing


def _tool_name(raw: str) -> str:
    return _TOOL_NAME.sub("_", raw.replace("{", "").replace("}", "")).strip("_")[:128]


def _operation(
    document: Document,
    name: str,
    method: str,
    path: str,
    op: dict[str, Any],
    shared: list[Any],
    omitted: frozenset[str],
) -> Operation:
    request = Converter(document, "request")
    properties: dict[str, Any] = {}
    required: list[str] = []
    parameters: list[Parameter] = []
    for raw in _merged_parameters(document, shared, op.get("parameters") or []):
        param = _parameter(request, raw, omitted)
        if param is None:
            continue
        parameter, schema = param
        if parameter.name in properties:
            raise Skip(f"two parameters are both called {parameter.name!r}")
        properties[parameter.name] = schema
        if raw.get("required") is True or parameter.location == "path":
            required.append(parameter.name)
        parameters.append(parameter)

    body: Literal["none", "flat", "nested"] = "none"
    body_required, media_type = False, None
    request_body = _resolved(document, op.get("requestBody"))
    additional: Any = False  # a typo in an argument is an error, not a silently dropped value
    if request_body:
        body_required = request_body.get("required") is True
        media_type, media = _json_media(request_body.get("content") or {})
        if media_type is None:
            if body_required:
                kinds = ", ".join(sorted(request_body.get("content") or {})) or "no media type"
                raise Skip(f"its request body is not JSON ({kinds})")
        else:
            schema = request.convert(media.get("schema", {}))
            if _flattenable(schema, properties):
                body = "flat"
                properties.update(schema.get("properties") or {})
                if body_required:
                    required.extend(r for r in schema.get("required") or [] if r not in required)
                additional = schema.get("additionalProperties", True)
            else:
                if BODY_ARGUMENT in properties:
                    raise Skip(f"a parameter is called {BODY_ARGUMENT!r}, the name of its body argument")
                body = "nested"
                properties[BODY_ARGUMENT] = schema
                if body_required:
                    required.append(BODY_ARGUMENT)

    input_schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        input_schema["required"] = required
    if additional is not True:
        input_schema["additionalProperties"] = additional
    if request.defs:
        input_schema["$defs"] = request.defs

    tool: dict[str, Any] = {"name": name}
    summary = op.get("summary") if isinstance(op.get("summary"), str) else None
    if summary:
        tool["title"] = summary
    parts = [summary, op.get("description") if isinstance(op.get("description"), str) else None]
    if op.get("deprecated") is True:
        parts.insert(0, "Deprecated.")
    tool["description"] = "\n\n".join([p.strip() for p in parts if p and p.strip()] + [f"{method} {path}"])
    tool["inputSchema"] = input_schema
    output = _output_schema(document, op)
    if output is not None:
        tool["outputSchema"] = output
    read_only = method in READ_ONLY
    annotations: dict[str, Any] = {"readOnlyHint": read_only, "openWorldHint": True}
    if not read_only:
        annotations["destructiveHint"] = method == "DELETE"
    annotations["idempotentHint"] = method in ("GET", "HEAD", "PUT", "DELETE")
    tool["annotations"] = annotations
    return Operation(name, method, path, tuple(parameters), body, body_required, media_type, tool)


def _merged_parameters(document: Document, shared: list[Any], own: list[Any]) -> list[dict[str, Any]]:
    """Path-level parameters, overridden by the operation's own of the same name and location."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*shared, *own]:
        param = _resolved(document, raw)
        if param and isinstance(param.get("name"), str) and isinstance(param.get("in"), str):
            merged[(param["name"], param["in"])] = param
    return list(merged.values())


def _parameter(
    request: Converter, raw: dict[str, Any], omitted: frozenset[str]
) -> tuple[Parameter, Any] | None:
    name, location = raw["name"], raw["in"]
    if location == "cookie":
        if raw.get("required") is True:
            raise Skip(f"the cookie parameter {name!r} is required, and cookies are not sent")
        return None
    if location == "header" and name.lower() in omitted:
        return None
    if location not in _STYLES:
        raise Skip(f"parameter {name!r} is in {location!r}")
    as_json = False
    if "schema" in raw:
        schema = request.convert(raw["schema"])
    else:
        media_type, media = _json_media(raw.get("content") or {})
        if media_type is None:
            raise Skip(f"parameter {name!r} has neither a schema nor JSON content")
        schema, as_json = request.convert(media.get("schema", {})), True
    style = str(raw.get("style") or _DEFAULT_STYLE[location])
    if style not in _STYLES[location]:
        raise Skip(f"parameter {name!r} has style {style!r}, which is not supported in {location}")
    explode = raw.get("explode")
    if not isinstance(explode, bool):
        explode = style == "form"
    if isinstance(raw.get("description"), str) and isinstance(schema, dict) and "description" not in schema:
        schema = {**schema, "description": raw["description"]}
    if raw.get("deprecated") is True and isinstance(schema, dict):
        schema = {**schema, "deprecated": True}
    return Parameter(name, location, style, explode, as_json), schema


def _resolved(document: Document, value: Any) -> dict[str, Any] | None:
    """A parameter, request body or response, following ``$ref``s (to components) to the object."""
    base = document.uri
    for _ in range(32):  # a chain of $refs to $refs ends, or it is a cycle
        if not isinstance(value, dict):
            return None
        if not isinstance(value.get("$ref"), str):
            return value
        _, base, value = document.resolve(base, value["$ref"])
    return None


def _json_media(content: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The JSON media type of a ``content`` map (``application/json`` first), and its object."""
    ranked = sorted(content, key=lambda m: m.split(";")[0].strip().lower() != "application/json")
    for media_type in ranked:
        if _JSON_MEDIA.match(media_type.split(";")[0].strip()):
            media = content[media_type]
            return media_type.split(";")[0].strip(), media if isinstance(media, dict) else {}
    return None, {}


def _flattenable(schema: Any, taken: dict[str, Any]) -> bool:
    """A plain object schema whose properties clash with no parameter."""
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return False
    if schema.get("type", "object") != "object":
        return False
    plain = {"type", "properties", "required", "additionalProperties", "title", "description", "examples"}
    if set(schema) - plain:
        return False
    return not set(schema["properties"]) & set(taken)


def _output_schema(document: Document, op: dict[str, Any]) -> dict[str, Any] | None:
    """The outputSchema: only when every 2xx answer is JSON of one object schema.

    MCP clients check ``structuredContent`` against it, so a tool whose 201 and 204 differ, or
    whose answer is an array, declares none (and its answers are text).
    """
    responses = op.get("responses") or {}
    shapes: list[str] = []
    chosen: dict[str, Any] | None = None
    for status, raw in responses.items():
        if not str(status).startswith("2"):
            continue
        response = _resolved(document, raw) or {}
        _, media = _json_media(response.get("content") or {})
        if "schema" not in media:
            return None
        converter = Converter(document, "response")
        schema = converter.convert(media["schema"])
        if isinstance(schema, dict) and set(schema) == {"$ref"}:  # a recursive schema: its definition
            schema = dict(converter.defs[schema["$ref"].removeprefix("#/$defs/")])
        if not isinstance(schema, dict) or not _is_object(schema):
            return None
        schema = {"type": "object", **schema}
        if converter.defs:
            schema["$defs"] = converter.defs
        shapes.append(json.dumps(schema, sort_keys=True))
        chosen = schema
    if chosen is None or len(set(shapes)) != 1:
        return None
    return chosen


def _is_object(schema: dict[str, Any]) -> bool:
    """Declared an object (``null`` not admitted: MCP's structuredContent is always an object)."""
    kind = schema.get("type")
    return kind == "object" or (kind is None and isinstance(schema.get("properties"), dict))
