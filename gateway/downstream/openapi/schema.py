"""OpenAPI Schema Objects → self-contained JSON Schema (2020-12), the dialect MCP tools speak.

- ``$ref``s are inlined, so a client sees the whole shape in one place. A ``$ref`` met again
  while it is being inlined (a recursive schema) becomes ``{"$ref": "#/$defs/NAME"}``, and
  the definition goes into ``defs`` once; later uses of it point there too.
- OpenAPI 3.0 dialect: ``nullable: true`` admits ``null``; boolean ``exclusiveMinimum`` /
  ``exclusiveMaximum`` become the numeric 2020-12 keywords; ``example`` becomes ``examples``.
  OpenAPI 3.1 schemas are JSON Schema 2020-12 already; ``$ref`` siblings are kept.
- A request's schema drops ``readOnly`` properties and a response's drops ``writeOnly`` ones
  (OpenAPI: they are sent in one direction only), from ``properties`` and ``required``.
- OpenAPI-only keywords (``discriminator``, ``xml``, ``externalDocs``, ``x-*``) are dropped.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

from gateway.downstream.openapi.document import Document

Direction = Literal["request", "response"]

_DROPPED: Final = frozenset({"discriminator", "xml", "externalDocs", "$id", "$schema", "$anchor", "nullable"})
_ONE_SCHEMA: Final = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_ONE_SCHEMA_MORE: Final = ("propertyNames", "unevaluatedProperties", "unevaluatedItems", "contentSchema")
_SCHEMA_LISTS: Final = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAPS: Final = ("properties", "patternProperties", "dependentSchemas")
# Keywords that only describe; a 3.1 `$ref` with nothing else beside it is merged, not wrapped.
_ANNOTATIONS: Final = frozenset(
    {"title", "description", "default", "examples", "example", "deprecated", "readOnly", "writeOnly"}
)


class Converter:
    """Converts the schemas of one tool's input or output; ``defs`` collects recursive ones."""

    def __init__(self, document: Document, direction: Direction) -> None:
        self.document = document
        self.direction = direction
        self.defs: dict[str, Any] = {}
        self._def_of: dict[str, str] = {}  # absolute $ref URI → its name in defs
        self._open: list[str] = []  # the $refs being inlined, outermost first
        self._recursive: set[str] = set()

    def convert(self, schema: Any, base: str | None = None) -> Any:
        """``schema`` (found in the document at ``base``) as JSON Schema 2020-12."""
        base = base or self.document.uri
        if not isinstance(schema, dict):
            return schema  # a boolean schema (3.1), or something the validator already refused
        if isinstance(schema.get("$ref"), str):
            return self._ref(schema, base)
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in _DROPPED or key.startswith("x-"):
                continue
            if key in _ONE_SCHEMA or key in _ONE_SCHEMA_MORE:
                out[key] = self.convert(value, base)
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                out[key] = [self.convert(v, base) for v in value]
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {k: self.convert(v, base) for k, v in value.items()}
            elif key == "example":
                out.setdefault("examples", [value])
            else:
                out[key] = value
        if self.document.version == "3.0":
            _exclusive_bounds(out)
        self._one_direction(out)
        if self.document.version == "3.0" and schema.get("nullable") is True:
            return _nullable(out)
        return out

    def _ref(self, schema: dict[str, Any], base: str) -> Any:
        uri, where, target = self.document.resolve(base, schema["$ref"])
        if uri in self._def_of:
            inlined: Any = {"$ref": f"#/$defs/{self._def_of[uri]}"}
        elif uri in self._open:  # recursion: refer to a definition, filled in when the outer one ends
            self._recursive.add(uri)
            inlined = {"$ref": f"#/$defs/{self._name_def(uri)}"}
        else:
            self._open.append(uri)
            try:
                inlined = self.convert(target, where)
            finally:
                self._open.pop()
            if uri in self._recursive:
                self.defs[self._def_of[uri]] = inlined
                inlined = {"$ref": f"#/$defs/{self._def_of[uri]}"}
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        if not siblings or self.document.version == "3.0":  # 3.0: siblings of a $ref are ignored
            return inlined
        rest = self.convert(siblings, base)
        if isinstance(inlined, dict) and "$ref" not in inlined and set(rest) <= _ANNOTATIONS:
            return {**inlined, **rest}
        return {"allOf": [inlined], **rest}

    def _name_def(self, uri: str) -> str:
        if uri not in self._def_of:
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", uri.rsplit("/", 1)[-1]) or "schema"
            name, n = stem, 2
            while name in self._def_of.values():
                name, n = f"{stem}_{n}", n + 1
            self._def_of[uri] = name
        return self._def_of[uri]

    def _one_direction(self, out: dict[str, Any]) -> None:
        """Drop the properties that only travel the other way."""
        props = out.get("properties")
        if not isinstance(props, dict):
            return
        other = "readOnly" if self.direction == "request" else "writeOnly"
        gone = {k for k, v in props.items() if isinstance(v, dict) and v.get(other) is True}
        if not gone:
            return
        out["properties"] = {k: v for k, v in props.items() if k not in gone}
        if isinstance(out.get("required"), list):
            out["required"] = [r for r in out["required"] if r not in gone]
            if not out["required"]:
                del out["required"]


def _exclusive_bounds(out: dict[str, Any]) -> None:
    """3.0's ``exclusiveMinimum: true`` beside ``minimum`` is 2020-12's ``exclusiveMinimum: <min>``."""
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if flag in out and isinstance(out[flag], bool):
            if out.pop(flag) and bound in out:
                out[flag] = out.pop(bound)


def _nullable(out: dict[str, Any]) -> dict[str, Any]:
    """3.0's ``nullable: true``: ``null`` is one more admitted value."""
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [out, {"type": "null"}]}
