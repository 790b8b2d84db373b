"""The exposed tools: every ready downstream's tools, renamed, classified and with the key injected.

Rebuilt only when a downstream's tool list changes (a reconnect or list_changed), so the hot
path of a call is one dict lookup.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from jsonschema import validators
from jsonschema.protocols import Validator

from gateway.idempotency.keys import KEY_PATTERN, KEY_SENTENCE
from gateway.manifests.models import KEY_ARGUMENT, ServerSpec, ToolPolicy

logger = logging.getLogger(__name__)


class ToolSource(Protocol):
    """What the catalog needs of a downstream session."""

    @property
    def tools(self) -> Sequence[dict[str, Any]]: ...


@dataclass(slots=True)
class ExposedTool:
    name: str
    spec: ServerSpec
    downstream_name: str
    policy: ToolPolicy
    side_effects: bool
    native: bool  # the downstream takes idempotency_key itself
    listed: dict[str, Any]  # what tools/list shows
    input_schema: dict[str, Any]  # the downstream's own
    _validator: Validator | None = field(default=None, repr=False)

    @property
    def validator(self) -> Validator:
        """Compiled once per tool, on first use."""
        if self._validator is None:
            cls = validators.validator_for(self.input_schema)
            self._validator = cls(self.input_schema)
        return self._validator


def is_side_effecting(policy: ToolPolicy, tool: Mapping[str, Any]) -> bool:
    """Manifest beats annotations; unannotated means side-effecting."""
    if policy.side_effects is not None:
        return policy.side_effects
    annotations = tool.get("annotations") or {}
    return annotations.get("readOnlyHint") is not True


def expose(spec: ServerSpec, tool: Mapping[str, Any]) -> ExposedTool:
    name = str(tool["name"])
    policy = spec.policy_for(name)
    side_effects = is_side_effecting(policy, tool)
    input_schema = dict(tool.get("inputSchema") or {"type": "object"})
    native = KEY_ARGUMENT in (input_schema.get("properties") or {})
    listed = dict(tool)
    listed["name"] = spec.exposed_name(name)
    if side_effects:
        listed["inputSchema"] = _inject_key(input_schema, policy, native)
        if policy.key_from is None:
            description = (listed.get("description") or "").rstrip()
            listed["description"] = f"{description}\n\n{KEY_SENTENCE}".strip()
        annotations = dict(listed.get("annotations") or {})
        annotations["idempotentHint"] = True
        listed["annotations"] = annotations
    return ExposedTool(listed["name"], spec, name, policy, side_effects, native, listed, input_schema)


def _inject_key(schema: dict[str, Any], policy: ToolPolicy, native: bool) -> dict[str, Any]:
    if policy.key_from is not None:
        return schema
    out = copy.deepcopy(schema)
    props = out.setdefault("properties", {})
    if not native:
        props[KEY_ARGUMENT] = {
            "type": "string",
            "pattern": KEY_PATTERN,
            "minLength": 16,
            "maxLength": 255,
            "description": KEY_SENTENCE,
        }
    required = list(out.get("required") or [])
    if KEY_ARGUMENT not in required:
        required.append(KEY_ARGUMENT)
    out["required"] = required
    return out


class Catalog:
    """Exposed name → tool, across every downstream, refreshed when a tool list changes."""

    def __init__(self, sources: Mapping[str, tuple[ServerSpec, ToolSource]]) -> None:
        self._sources = sources
        # The lists last built from, held so none can be freed: a session replaces its list when
        # the tools change, and a held list's identity is never another's (an ``id`` alone can be
        # reused once its list is freed).
        self._seen: tuple[Sequence[dict[str, Any]], ...] = ()
        self._by_name: dict[str, ExposedTool] = {}

    def _refresh(self) -> None:
        seen = tuple(src.tools for _, src in self._sources.values())
        if len(seen) == len(self._seen) and all(a is b for a, b in zip(seen, self._seen, strict=True)):
            return
        by_name: dict[str, ExposedTool] = {}
        for spec, src in self._sources.values():
            for tool in src.tools:
                if not spec.exposes(str(tool["name"])):
                    continue
                exposed = expose(spec, tool)
                if exposed.name in by_name:
                    other = by_name[exposed.name].spec
                    logger.error(
                        "tool name %r is exposed by both %s (%s) and %s (%s); keeping the first",
                        exposed.name, other.name, other.source.name, spec.name, spec.source.name,
                    )  # fmt: skip
                    continue
                by_name[exposed.name] = exposed
        self._by_name = by_name
        self._seen = seen

    def get(self, name: str) -> ExposedTool | None:
        self._refresh()
        return self._by_name.get(name)

    def all(self) -> list[ExposedTool]:
        self._refresh()
        return list(self._by_name.values())

    def missing(self) -> dict[str, list[str]]:
        """Tools a manifest names that its (ready) downstream does not offer."""
        out: dict[str, list[str]] = {}
        for spec, src in self._sources.values():
            offered = {str(t["name"]) for t in src.tools}
            lacking = sorted(set(spec.tools) - offered)
            if lacking and offered:
                out[spec.name] = lacking
        return out
