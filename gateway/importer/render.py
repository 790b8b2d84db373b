"""A plan and the tools its server listed → manifest TOML text.

Deterministic: the same plan and listing always give the same bytes (tools sorted by name, no
dates), so importing twice writes identical files. Every tool gets a ``[tools.NAME]`` table whose
``side_effects`` states the decision and whose comment says where it came from, so a person
reviews each class instead of trusting a default they cannot see.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.importer.plan import Plan
from gateway.manifests.models import KEY_ARGUMENT

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, except that TOML also escapes DEL)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else toml_string(key)


def _inline(table: Mapping[str, str]) -> str:
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_string(v)}" for k, v in table.items()) + " }"


def _array(items: Sequence[str]) -> str:
    return "[" + ", ".join(toml_string(i) for i in items) + "]"


def classify(tool: Mapping[str, Any]) -> tuple[bool, str]:
    """(side-effecting, why) from the tool's annotations, as ``side_effects = "auto"`` decides."""
    annotations = tool.get("annotations") or {}
    hint = annotations.get("readOnlyHint") if isinstance(annotations, dict) else None
    if hint is True:
        return False, "readOnlyHint = true"
    if hint is False:
        return True, "readOnlyHint = false"
    return True, "no readOnlyHint: side-effecting by default"


def unannotated(tool: Mapping[str, Any]) -> bool:
    """Side-effecting only because nothing says otherwise: what a person should look at."""
    annotations = tool.get("annotations") or {}
    return not isinstance(annotations, dict) or "readOnlyHint" not in annotations


def render(
    plan: Plan,
    *,
    source: str,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_prefix: str = "",
    relative_to: Path | None = None,
) -> str:
    """The manifest. ``tools`` None: the server did not start. ``relative_to``: the folder the
    file goes in (``cwd`` is written relative to it); None writes ``cwd`` absolute."""
    lines = [
        f"# {plan.name}: imported by `idem-gateway import` from {source}.",
        "# Review the class of every tool below: side_effects = true makes the tool take an",
        "# idempotency_key and run once per key; false passes it through unguarded.",
    ]
    if tools is None:
        lines += [
            "#",
            "# NOT STARTED: the server did not start during the import, so its tools are not listed",
            '# here and [defaults] decides (side_effects = "auto": only readOnlyHint = true is',
            "# read-only). Fix it, then run `idem-gateway check` and review the classes.",
        ]
    lines += [
        "",
        "[server]",
        f"name = {toml_string(plan.name)}",
        f"transport = {toml_string(plan.transport)}",
    ]
    if plan.transport == "stdio":
        assert plan.command is not None
        lines.append(f"command = {toml_string(plan.command)}")
        if plan.args:
            lines.append(f"args = {_array(plan.args)}")
        if plan.env:
            lines.append(f"env = {_inline(plan.env)}")
        if plan.cwd is not None:
            lines.append(f"cwd = {toml_string(_cwd_text(plan.cwd, relative_to))}")
    else:
        assert plan.url is not None
        lines.append(f"url = {toml_string(plan.url)}")
        if plan.headers:
            lines.append(f"headers = {_inline(plan.headers)}")
    if tool_prefix:
        lines.append(
            f"tool_prefix = {toml_string(tool_prefix)}  # another imported server has the same tool names"
        )
    lines += [
        "",
        "[defaults]",
        'side_effects = "auto"  # a tool not listed below: read-only only if readOnlyHint = true',
    ]
    for tool in sorted(tools or [], key=lambda t: str(t.get("name"))):
        side_effects, why = classify(tool)
        schema = tool.get("inputSchema") or {}
        properties = schema.get("properties") if isinstance(schema, dict) else None
        if side_effects and isinstance(properties, dict) and KEY_ARGUMENT in properties:
            why += f"; takes {KEY_ARGUMENT} itself (forwarded)"
        lines += ["", f"[tools.{toml_key(str(tool.get('name')))}]"]
        lines.append(f"side_effects = {'true' if side_effects else 'false'}  # {why}")
    return "\n".join(lines) + "\n"


def _cwd_text(cwd: Path | str, relative_to: Path | None) -> str:
    if isinstance(cwd, str):
        return cwd  # a template with references: as the client wrote it
    text = str(cwd)
    if relative_to is not None:
        try:
            text = os.path.relpath(cwd, relative_to)
        except ValueError:  # another drive (Windows): keep it absolute
            pass
    return text.replace("${", "$${")
