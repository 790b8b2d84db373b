"""Manifest files → `ServerSpec`s.

The JSON Schema shipped next to this module (`schema.json`) is the single source of shape
validation; this module adds only what a schema cannot say (environment expansion, durations,
cross-field and cross-file rules). Every error is collected, across every file, before
`ManifestErrors` is raised: an operator fixes a folder in one pass, not one error per run.

Error messages never contain a value read from the environment, nor any value of a field that
is expanded from it: those may be secrets.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from gateway.durations import MAX_DURATION, MAX_DURATION_DAYS, parse_duration
from gateway.manifests.models import (
    KEY_ARGUMENT,
    KEY_HEADER,
    Approve,
    Condition,
    ForwardKey,
    ServerSpec,
    ToolPolicy,
)
from gateway.textsafe import escape

__all__ = [
    "ManifestError",
    "ManifestErrors",
    "check_exposed_names",
    "expand_env",
    "load_manifests",
    "parse_duration",
]

SUFFIXES = (".toml", ".json")

# Fields whose strings expand ${VAR}; their values are never echoed in a message.
_EXPANDED = ("command", "args", "env", "cwd", "url", "headers", "spec", "base_url")
# A command with one of these exact names runs under the gateway's own interpreter, so a
# manifest written as `command = "python"` works from a venv without python on PATH.
_SELF_PYTHON = frozenset({"python", "python3"})


class ManifestError(Exception):
    """One problem in one manifest file, at one path inside it."""

    def __init__(self, file: Path, path: str, message: str) -> None:
        self.file = Path(file)
        self.path = path
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        # A tool name (a TOML key) can hold anything: shown escaped, never interpreted.
        where = f"{self.file.name}: {self.path}" if self.path else self.file.name
        return escape(f"{where}: {self.message}")

    def __repr__(self) -> str:
        return f"ManifestError({self.file.name!r}, {self.path!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ManifestError):
            return NotImplemented
        return (self.file, self.path, self.message) == (other.file, other.path, other.message)

    def __hash__(self) -> int:
        return hash((self.file, self.path, self.message))


class ManifestErrors(Exception):
    """Every problem found in a manifests folder; raised once, after all files were read."""

    def __init__(self, errors: Iterable[ManifestError], warnings: Iterable[ManifestError] = ()) -> None:
        self.errors = list(errors)
        self.warnings = list(warnings)
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [str(e) for e in self.errors]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- durations

# The largest `cost`: a sum over many events stays finite, and the stats stay valid JSON.
MAX_COST = 1e12
# What an MCP tool name may be (2025-11-25: SHOULD be 1-128 characters); a name with spaces
# or control characters at either end is a typo, or worse.
MAX_TOOL_NAME = 128
# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


# ------------------------------------------------------------------------------- environment

_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


class _UnsetVariable(Exception):
    pass


def expand_env(text: str, environ: Mapping[str, str], used: list[str] | None = None) -> str:
    """Expand `${VAR}`, `${VAR:-default}` and `$${` (a literal `${`).

    Every value taken from `environ` is appended to `used`: those are secrets for output.
    Raises `KeyError(name)` for an unset `${VAR}` and `ValueError` for a malformed reference;
    neither carries a value, so both are safe to show.
    """

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name is None:
            raise ValueError("malformed ${...} reference: expected ${NAME} or ${NAME:-default}")
        value = environ.get(name)
        if default is not None and not value:
            return default
        if value is None:
            raise KeyError(name)
        if used is not None:
            used.append(value)
        return value

    return _VAR.sub(replace, text)


# ------------------------------------------------------------------------------------ schema


@cache
def _validator() -> Draft202012Validator:
    """Compiled once: the schema ships inside the package."""
    text = resources.files("gateway.manifests").joinpath("schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _dotted(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _schema_error(file: Path, error: ValidationError) -> ManifestError:
    """A jsonschema error in the manifest's words, never echoing an expandable value."""
    parts: list[str | int] = list(error.absolute_path)
    secret = len(parts) >= 2 and parts[0] == "server" and parts[1] in _EXPANDED
    shown = "" if secret else f", got {error.instance!r}"
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator
    value: Any = error.validator_value
    if kind == "additionalProperties":
        extra = sorted(set(error.instance) - set(schema.get("properties", {})))
        return ManifestError(
            file,
            _dotted([*parts, extra[0]]) if len(extra) == 1 else _dotted(parts),
            f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}",
        )
    if kind == "required":
        missing = next((n for n in value if n not in error.instance), value[0])
        why = ""
        if "then" in error.relative_schema_path and isinstance(error.instance, dict):
            why = f' (transport "{error.instance.get("transport", "stdio")}")'
        return ManifestError(file, _dotted([*parts, missing]), f"required{why}")
    if kind == "type":
        expected = " or ".join(value) if isinstance(value, list) else value
        expected = "table" if expected == "object" else expected
        return ManifestError(file, _dotted(parts), f"expected {expected}, got {_json_type(error.instance)}")
    if kind == "enum":
        choices = " | ".join(json.dumps(v) for v in value)
        return ManifestError(file, _dotted(parts), f"expected one of {choices}{shown}")
    if kind == "pattern":
        expected = schema.get("description", f"must match {value}")
        return ManifestError(file, _dotted(parts), f"{expected}{shown}")
    if kind == "not":
        return ManifestError(file, _dotted(parts), schema.get("description", "not allowed here"))
    if kind == "minimum":
        return ManifestError(file, _dotted(parts), f"must be >= {value}{shown}")
    if kind in ("minLength", "minItems"):
        return ManifestError(file, _dotted(parts), "must not be empty")
    message = "invalid value" if secret else error.message
    return ManifestError(file, _dotted(parts), message)


# ---------------------------------------------------------------------------------- building


def _read(file: Path) -> tuple[Any, list[ManifestError]]:
    """Parse one file; a syntax error is the only error reported for it."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        return None, [ManifestError(file, "", f"cannot read: {exc.strerror or exc}")]
    try:
        if file.suffix == ".toml":
            return tomllib.loads(raw.decode("utf-8")), []
        return json.loads(raw), []
    except UnicodeDecodeError as exc:
        return None, [ManifestError(file, "", f"not UTF-8 text (byte {exc.start})")]
    except tomllib.TOMLDecodeError as exc:
        return None, [ManifestError(file, "", f"invalid TOML: {exc}")]
    except json.JSONDecodeError as exc:
        return None, [
            ManifestError(file, "", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
        ]


@dataclass
class _Build:
    """One file's build: the errors are collected, never raised, so one pass finds them all."""

    file: Path
    environ: Mapping[str, str]
    errors: list[ManifestError] = field(default_factory=list)
    from_env: list[str] = field(default_factory=list)  # every value taken from the environment

    def error(self, path: str, message: str) -> None:
        self.errors.append(ManifestError(self.file, path, message))

    def expand(self, path: str, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return expand_env(value, self.environ, self.from_env)
        except KeyError as exc:
            self.error(path, f"environment variable {exc.args[0]} is not set")
        except ValueError as exc:
            self.error(path, str(exc))
        return None

    def duration(self, path: str, value: Any, *, positive: bool = False) -> float | None:
        if not isinstance(value, str):
            return None  # a wrong type is the schema's error
        try:
            seconds = parse_duration(value)
        except ValueError:
            return None  # the schema's pattern reported it, in the same words
        if positive and seconds <= 0:
            self.error(path, "must be greater than zero")
            return None
        if seconds > MAX_DURATION:
            self.error(path, f"must be at most {MAX_DURATION_DAYS}d, got {value!r}")
            return None
        return seconds


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _policy(b: _Build, where: str, table: dict[str, Any], base: ToolPolicy, transport: str) -> ToolPolicy:
    """`base` with `table` laid over it; lists (fingerprint_exclude, redact) add to the base's."""
    changes: dict[str, Any] = {}
    if "side_effects" in table and table["side_effects"] in ("auto", True, False):
        changes["side_effects"] = None if table["side_effects"] == "auto" else table["side_effects"]
    for name in ("retention", "wait", "approval_timeout"):
        if name in table:
            seconds = b.duration(f"{where}.{name}", table[name], positive=name != "wait")
            if seconds is not None:
                changes[name] = seconds
    for name, choices in (
        ("in_flight", ("wait", "reject")),
        ("expired", ("execute", "reject")),
        ("cancel", ("finish", "forward")),
    ):
        if table.get(name) in choices:
            changes[name] = table[name]
    if isinstance(table.get("store_errors"), bool):
        changes["store_errors"] = table["store_errors"]
    for name in ("fingerprint_exclude", "redact"):
        if name in table:
            merged = dict.fromkeys((*getattr(base, name), *_strings(table[name])))
            changes[name] = tuple(merged)
    if isinstance(table.get("forward_key"), str):
        kind, sep, arg = table["forward_key"].partition(":")
        if sep and arg and kind in ("argument", "meta", "header"):
            if kind == "header" and transport not in ("http", "openapi"):
                b.error(f"{where}.forward_key", 'a "header:" forward_key needs transport "http" or "openapi"')
            elif kind != "header" and transport == "openapi":
                b.error(f"{where}.forward_key", 'transport "openapi" takes only a "header:NAME" forward_key')
            elif kind == "header" and not _HEADER_NAME.match(arg):
                b.error(f"{where}.forward_key", "not a valid HTTP header name")
            else:
                changes["forward_key"] = ForwardKey(cast(Any, kind), arg)
    if isinstance(table.get("key_from"), str) and table["key_from"]:
        changes["key_from"] = table["key_from"]
    cost = table.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        if not math.isfinite(cost):
            b.error(f"{where}.cost", "must be a finite number (inf and nan are not prices)")
        elif cost > MAX_COST:
            b.error(f"{where}.cost", f"must be at most {MAX_COST:g}")
        elif cost >= 0:
            changes["cost"] = float(cost)
    if "approve" in table:
        approve = _approve(b, f"{where}.approve", table["approve"])
        if approve is not None:
            changes["approve"] = approve
    policy = replace(base, **changes)
    if "approve" in table and policy.approve and policy.side_effects is False:
        b.error(f"{where}.approve", "a tool with side_effects = false runs without a key: nothing to approve")
    if "key_from" in table and policy.key_from is not None:
        if policy.side_effects is False:
            b.error(f"{where}.key_from", "a tool with side_effects = false takes no key")
        if policy.key_from in policy.fingerprint_exclude:
            b.error(
                f"{where}.fingerprint_exclude",
                f"{policy.key_from!r} is the key_from argument; it stays in the fingerprint",
            )
    return policy


_TESTS = ("above", "at_least", "equals", "in")


def _approve(b: _Build, where: str, value: Any) -> Approve | None:
    """``approve``: a boolean, or conditions (each one argument and exactly one test)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, list) or not value:
        return None  # the schema's error
    conditions: list[Condition] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("argument"), str):
            continue  # the schema's error
        tests = [t for t in _TESTS if t in item]
        if len(tests) != 1:
            found = f"has {len(tests)} ({', '.join(tests)})" if tests else "has none"
            b.error(
                f"{where}[{i}]",
                f"a condition takes exactly one test of above, at_least, equals, in; this one {found} "
                "(list one condition per test: approval is asked when any holds)",
            )
            continue
        if item["argument"] == KEY_ARGUMENT:
            b.error(f"{where}[{i}].argument", "the idempotency key is not an argument the tool receives")
            continue
        conditions.append(Condition(item["argument"], cast(Any, tests[0]), item[tests[0]]))
    return tuple(conditions) if len(conditions) == len(value) else None


def _build(b: _Build, data: dict[str, Any]) -> ServerSpec | None:
    """The spec for one schema-checked file; `None` when anything in it was wrong."""
    server = _table(data.get("server"))
    transport = server.get("transport", "stdio")
    name = server.get("name")

    command = b.expand("server.command", server.get("command"))
    if command in _SELF_PYTHON:
        command = sys.executable
    args = tuple(b.expand(f"server.args[{i}]", a) for i, a in enumerate(_list(server.get("args"))))
    env = {k: b.expand(f"server.env.{k}", v) for k, v in _table(server.get("env")).items()}
    for variable in _strings(server.get("env_passthrough")):
        if variable not in env and variable in b.environ:
            env[variable] = b.environ[variable]  # a secret like any env value (ServerSpec.secrets)
    headers = {k: b.expand(f"server.headers.{k}", v) for k, v in _table(server.get("headers")).items()}
    url = b.expand("server.url", server.get("url"))

    cwd: Path | None = None
    if transport == "stdio":
        raw_cwd = b.expand("server.cwd", server.get("cwd", "."))
        if isinstance(raw_cwd, str):
            cwd = (b.file.parent / raw_cwd).resolve()
            if not cwd.is_dir():
                b.error("server.cwd", "not a directory")

    timeout = b.duration("server.timeout", server.get("timeout", "30s"), positive=True)
    max_timeout = b.duration("server.max_timeout", server.get("max_timeout", "10m"), positive=True)
    if timeout is not None and max_timeout is not None and "max_timeout" in server and max_timeout < timeout:
        b.error("server.max_timeout", "must not be shorter than server.timeout")
    _check_launch(b, command, args, env, cwd)
    _check_http(b, url, headers)

    openapi = _openapi(b, server) if transport == "openapi" else {}
    base = ToolPolicy()
    if transport == "openapi":
        # The API dedupes on the key itself: every operation forwards it, as key_header.
        base = ToolPolicy(forward_key=ForwardKey("header", server.get("key_header", KEY_HEADER)))
    defaults = _policy(b, "defaults", _table(data.get("defaults")), base, transport)
    tools: dict[str, ToolPolicy] = {}
    for tool, table in _table(data.get("tools")).items():
        problem = _tool_name_problem(tool)
        if problem is not None:
            b.error(f"tools.{tool}", problem)
            continue
        tools[tool] = _policy(b, f"tools.{tool}", _table(table), defaults, transport)
    if b.errors:
        return None
    return ServerSpec(
        name=cast(str, name),
        source=b.file,
        transport=transport,
        command=command,
        args=args,
        env=env,
        cwd=cwd,
        url=url,
        headers=headers,
        **openapi,
        tool_prefix=server.get("tool_prefix", ""),
        resource_prefix=server.get("resource_prefix", ""),
        timeout=cast(float, timeout),
        max_timeout=max(timeout or 0.0, max_timeout or 0.0),
        expose=server.get("expose", "all"),
        sessions=server.get("sessions", "per_principal"),
        defaults=defaults,
        tools=tools,
        env_values=tuple(dict.fromkeys(v for v in b.from_env if v)),
    )


def _openapi(b: _Build, server: dict[str, Any]) -> dict[str, Any]:
    """The `transport = "openapi"` fields: the document (a URL, or a file next to the manifest)."""
    if importlib.util.find_spec("openapi_spec_validator") is None:
        b.error(
            "server.transport",
            "transport \"openapi\" needs the [openapi] extra: pip install 'mcp-idempotency-gateway[openapi]'",
        )
    document = b.expand("server.spec", server.get("spec"))
    if isinstance(document, str) and not re.match(r"^https?://", document):
        path = (b.file.parent / document).resolve()
        if not path.is_file():
            b.error("server.spec", "no such file (a path is relative to the manifest's folder)")
        document = str(path)
    operations = server.get("operations")
    return {
        "openapi_spec": document,
        "base_url": b.expand("server.base_url", server.get("base_url")),
        "operations": tuple(_strings(operations)) if operations is not None else None,
        "key_header": server.get("key_header", KEY_HEADER),
    }


def _tool_name_problem(name: str) -> str | None:
    """Why a `[tools.NAME]` key cannot name a tool, or None. The schema refuses ""."""
    if not name:
        return None  # the schema's error ("must not be empty")
    if not name.strip():
        return "a tool name cannot be blank"
    if name != name.strip():
        return "a tool name cannot start or end with whitespace"
    if escape(name) != name or any(c.isspace() for c in name):
        return "a tool name cannot contain whitespace or control characters"
    if len(name) > MAX_TOOL_NAME:
        return f"a tool name is at most {MAX_TOOL_NAME} characters"
    return None


def _check_launch(
    b: _Build, command: Any, args: tuple[Any, ...], env: dict[str, Any], cwd: Path | None
) -> None:
    """What would only fail when the downstream is started: NUL bytes, bad variable names.
    Never echoes a value (it may have come from the environment)."""
    if isinstance(command, str) and "\x00" in command:
        b.error("server.command", "contains a NUL character")
    for i, arg in enumerate(args):
        if isinstance(arg, str) and "\x00" in arg:
            b.error(f"server.args[{i}]", "contains a NUL character")
    for name, value in env.items():
        if not name or "=" in name or "\x00" in name:
            b.error(f"server.env.{name}", 'a variable name cannot be empty or contain "=" or NUL')
        elif isinstance(value, str) and "\x00" in value:
            b.error(f"server.env.{name}", "contains a NUL character")


def _check_http(b: _Build, url: Any, headers: dict[str, Any]) -> None:
    """The expanded URL and headers must be sendable: checked here, not on every call."""
    if isinstance(url, str):
        try:
            parts = urlsplit(url)
            _ = parts.port  # a port that is not a number raises here
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid or any(c.isspace() or not c.isprintable() for c in url):
            b.error("server.url", "not a valid http:// or https:// URL (after ${VAR} expansion)")
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            b.error(f"server.headers.{name}", "not a valid HTTP header name")
        elif isinstance(value, str) and any(c in value for c in "\r\n\x00"):
            b.error(f"server.headers.{name}", "a header value cannot contain CR, LF or NUL")


def _load_file(file: Path, environ: Mapping[str, str]) -> tuple[ServerSpec | None, list[ManifestError]]:
    data, errors = _read(file)
    if errors:
        return None, errors
    schema_errors = [_schema_error(file, e) for e in _validator().iter_errors(data)]
    if not isinstance(data, dict):
        return None, schema_errors
    b = _Build(file, environ)
    spec = _build(b, data)  # still run: unset variables are worth reporting with schema errors
    errors = sorted(set(schema_errors + b.errors), key=lambda e: (e.path, e.message))
    return (spec if not errors else None), errors


DEFAULT_LEASE_TTL = 10.0


def load_manifests(
    folder: Path | str, environ: Mapping[str, str] | None = None, *, lease_ttl: float = DEFAULT_LEASE_TTL
) -> list[ServerSpec]:
    """Every `*.toml` and `*.json` manifest in `folder`, sorted by file name.

    Raises `ManifestErrors` with every error of every file: syntax, schema, durations,
    unset `${VAR}`s, duplicate server names, clashing explicitly named tools, and a retention
    shorter than a call can last (the server's timeout plus the lease, ``lease_ttl``).
    """
    folder = Path(folder).resolve()
    env = os.environ if environ is None else environ
    if not folder.is_dir():
        raise ManifestErrors([ManifestError(folder, "", "manifests folder does not exist")])
    files = sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise ManifestErrors([ManifestError(folder, "", "no manifests (*.toml, *.json) in this folder")])

    specs: list[ServerSpec] = []
    errors: list[ManifestError] = []
    owner: dict[str, Path] = {}
    for file in files:
        spec, file_errors = _load_file(file, env)
        errors += file_errors
        if spec is not None:
            errors += _retention_errors(spec, lease_ttl)
        data_name = spec.name if spec else _peek_name(file)
        if data_name is not None:
            if data_name in owner:
                errors.append(
                    ManifestError(
                        file,
                        "server.name",
                        f"server {data_name!r} is already defined in {owner[data_name].name}",
                    )
                )
                continue
            owner[data_name] = file
        if spec is not None:
            specs.append(spec)
    errors += _listed_clashes(specs)
    if errors:
        raise ManifestErrors(errors)
    return specs


def _retention_errors(spec: ServerSpec, lease_ttl: float) -> list[ManifestError]:
    """A key must outlive its call: a record whose retention ended while its call still ran
    could be taken over and run again. So retention >= timeout + lease, for every tool."""
    floor = spec.timeout + lease_ttl
    errors: list[ManifestError] = []
    tools = [(f"tools.{n}", p) for n, p in spec.tools.items() if p.retention != spec.defaults.retention]
    for where, policy in [("defaults", spec.defaults), *tools]:
        if policy.retention < floor and policy.side_effects is not False:
            errors.append(
                ManifestError(
                    spec.source,
                    f"{where}.retention",
                    f"must be at least the server's timeout plus the lease ({floor:g}s): a key must "
                    "outlive its call, or a retry after the retention could run it again",
                )
            )
    return errors


def _peek_name(file: Path) -> str | None:
    """The server name of a file that failed, so a duplicate is still reported."""
    data, errors = _read(file)
    name = _table(_table(data).get("server")).get("name") if not errors else None
    return name if isinstance(name, str) else None


def _listed_clashes(specs: list[ServerSpec]) -> list[ManifestError]:
    """Clashes visible before any downstream is asked: tools named in `[tools.*]` tables."""
    return check_exposed_names(specs, {s.name: s.tools for s in specs})


def check_exposed_names(
    specs: Iterable[ServerSpec], tools_by_server: Mapping[str, Iterable[str]]
) -> list[ManifestError]:
    """Errors for exposed names (tool_prefix + downstream name) that two servers both claim.

    `tools_by_server` is what each downstream offers; with `expose = "listed"` only the tools
    named in the manifest count. Each clash is reported once, on the later server's file.
    """
    seen: dict[str, tuple[ServerSpec, str]] = {}
    errors: list[ManifestError] = []
    for spec in specs:
        for tool in tools_by_server.get(spec.name, ()):
            if not spec.exposes(tool):
                continue
            exposed = spec.exposed_name(tool)
            first = seen.setdefault(exposed, (spec, tool))
            if first[0] is spec:
                continue
            other, other_tool = first
            path = f"tools.{tool}" if tool in spec.tools else "server.tool_prefix"
            errors.append(
                ManifestError(
                    spec.source,
                    path,
                    f"exposed tool name {exposed!r} clashes with tool {other_tool!r} of server "
                    f"{other.name!r} ({other.source.name}); set a tool_prefix",
                )
            )
    return errors
