"""One client entry → the manifest to write, with every literal secret lifted into a variable.

What is lifted (the value leaves the file; a ``${NAME}`` reference takes its place):

- every ``env`` value and every header value that is a literal (a header's auth scheme, e.g.
  ``Bearer``, stays in the file: only the credential after it is lifted);
- in a URL (the ``url``, or an argument that is a URL): a password in the authority and the
  value of a query parameter whose name says it is a credential (``key``, ``token``, ``secret``,
  ``password``, ``auth``, ``signature``...);
- in ``args``: the value of a credential-named flag (``--api-key X``, ``--token=X``).

A value that already is a reference in the client's own syntax (Claude Code ``${VAR}``, VS
Code ``${env:VAR}`` / ``${input:ID}``) stays a reference, translated to the manifest's syntax.
Literal text that a manifest would expand (``${``) is escaped as ``$${``.

Variable names: an env entry's own key (``GITHUB_TOKEN``); otherwise, or when that name is taken
by another value, the server's name and the field (``GITHUB_AUTHORIZATION``). Names the gateway
itself reads (``PATH``, ``HOME``, ``IDEM_GATEWAY_*``, ``OTEL_*``...) are always prefixed.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from gateway.importer.clients import Client, ClientConfig, Entry

NAME_RE = re.compile(r"^[a-z0-9_-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEME = re.compile(r"^(Bearer|Basic|Token|Bot|Digest)\s+(\S.*)$", re.IGNORECASE)
_CREDENTIAL_WORDS = ("key", "token", "secret", "passw", "pwd", "auth", "credential", "signature", "cookie")
_CREDENTIAL_NAMES = frozenset({"sig", "pass", "session", "sessionid", "code"})
_RESERVED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "TMPDIR", "PWD"})
_RESERVED_PREFIXES = ("IDEM_GATEWAY_", "OTEL_", "LC_")
_HTTP_TYPES = frozenset({"http", "streamable-http", "streamablehttp", "streamable_http"})


def is_credential_name(name: str) -> bool:
    """A parameter, flag or header name that says its value is a credential."""
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    return flat in _CREDENTIAL_NAMES or any(word in flat for word in _CREDENTIAL_WORDS)


def env_name(text: str) -> str:
    """``github-token`` → ``GITHUB_TOKEN``: a valid, upper-case environment variable name."""
    name = re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_") or "VALUE"
    return f"_{name}" if name[0].isdigit() else name


def manifest_name(text: str) -> str:
    """A client's server name as a manifest's ``[a-z0-9_-]+`` name."""
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "server"


@dataclass(slots=True)
class Variable:
    """One ``${NAME}`` the written manifests refer to; its value is never written nor printed."""

    name: str
    origins: list[str] = field(default_factory=list)  # "github: env GITHUB_TOKEN"
    value: str | None = None  # the literal the config had; None: it was a reference already
    client_ref: str | None = None  # how the client itself referred to it: "${input:tok}", "${env:X}"
    input: dict[str, Any] | None = None  # VS Code: the input definition that supplies it


class Variables:
    """Every variable of one import, named so that two different values never share a name."""

    def __init__(self) -> None:
        self.by_name: dict[str, Variable] = {}

    def lift(self, preferred: str, value: str, origin: str, server: str) -> str:
        """A literal becomes a variable; the same literal under the same name shares it."""
        for name in self._candidates(preferred, server):
            var = self.by_name.get(name)
            if var is None:
                self.by_name[name] = Variable(name, [origin], value=value)
                return name
            if var.value == value and var.value is not None:
                var.origins.append(origin)
                return name
        raise AssertionError("unreachable: candidates never run out")

    def reference(
        self,
        name: str,
        origin: str,
        *,
        client_ref: str | None = None,
        input: dict[str, Any] | None = None,
        server: str = "",
    ) -> str:
        """A value that was a reference in the client already: the same variable, if free."""
        for candidate in [name] if input is None else self._candidates(name, server):
            var = self.by_name.get(candidate)
            if var is None:
                self.by_name[candidate] = Variable(candidate, [origin], client_ref=client_ref, input=input)
                return candidate
            if var.value is None and var.client_ref == client_ref:
                if origin not in var.origins:
                    var.origins.append(origin)
                return candidate
        # A plain reference keeps its name even if a lifted literal took it: both mean that variable.
        self.by_name[name].origins.append(origin)
        return name

    def _candidates(self, preferred: str, server: str) -> Any:
        base = env_name(preferred)
        prefixed = env_name(f"{server}_{preferred}")
        if base not in _RESERVED and not base.startswith(_RESERVED_PREFIXES):
            yield base
        if prefixed != base:
            yield prefixed
        n = 2
        while True:
            yield f"{prefixed}_{n}"
            n += 1

    def secrets(self) -> list[str]:
        """The literal values, to mask in anything printed or logged."""
        return [v.value for v in self.by_name.values() if v.value]


@dataclass(slots=True)
class Plan:
    """One manifest to write. Strings are in manifest syntax (``${NAME}`` references)."""

    source_name: str  # the name in the client's file
    name: str  # the manifest's server name
    transport: Literal["stdio", "http"] = "stdio"
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | str | None = None  # a Path is literal (absolute); a str is a template with references
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    variables: list[str] = field(default_factory=list)  # names, in order of first use
    notes: list[str] = field(default_factory=list)  # things the user should know about this server
    problem: str | None = None  # set: the entry cannot be imported at all

    def uses(self, name: str) -> str:
        if name not in self.variables:
            self.variables.append(name)
        return "${" + name + "}"


# ---- references in the client's syntax → the manifest's ---------------------------------------

_CLAUDE_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
_VSCODE_REF = re.compile(r"\$\{([^}]*)\}")


class _Translator:
    """Rewrites one client's ``${...}`` into manifest syntax, recording the variables it names."""

    def __init__(self, config: ClientConfig, variables: Variables, plan: Plan) -> None:
        self.config = config
        self.variables = variables
        self.plan = plan

    def __call__(self, text: str, where: str) -> tuple[str, bool]:
        """(manifest text, whether it contains a reference)."""
        client = self.config.client
        if client is Client.CLAUDE_DESKTOP:
            return _escape(text), False
        pattern = _CLAUDE_REF if client is Client.CLAUDE_CODE else _VSCODE_REF
        out: list[str] = []
        found = False
        last = 0
        for match in pattern.finditer(text):
            out.append(_escape(text[last : match.start()]))
            last = match.end()
            replaced = self._replace(match, where)
            found = found or "${" in replaced
            out.append(replaced)
        out.append(_escape(text[last:]))
        return "".join(out), found

    def _replace(self, match: re.Match[str], where: str) -> str:
        plan, origin = self.plan, f"{self.plan.source_name}: {where}"
        if self.config.client is Client.CLAUDE_CODE:
            name = self.variables.reference(match.group(1), origin, client_ref="${" + match.group(1) + "}")
            plan.uses(name)
            return "${" + name + (match.group(2) or "") + "}"
        body = match.group(1)
        kind, _, arg = body.partition(":")
        if kind == "env" and _ENV_NAME.match(arg):
            return plan.uses(self.variables.reference(arg, origin, client_ref="${env:" + arg + "}"))
        if kind == "input" and arg:
            definition = self.config.inputs.get(arg) or {"type": "promptString", "id": arg}
            name = self.variables.reference(
                env_name(arg), origin, client_ref="${input:" + arg + "}", input=definition, server=plan.name
            )
            return plan.uses(name)
        if body in ("workspaceFolder", "workspaceRoot"):
            workspace = self.config.workspace
            if workspace is None:
                workspace = self.config.path.parent
                plan.notes.append(f"${{{body}}} has no workspace here; used {workspace}")
            return _escape(str(workspace))
        if body == "userHome":
            return "${HOME}"
        if body in ("pathSeparator", "/"):
            return "/"
        name = self.variables.reference(env_name(body), origin, client_ref=match.group(0))
        plan.notes.append(f"VS Code's ${{{body}}} cannot be resolved outside VS Code: set {name} instead")
        return plan.uses(name)


def _escape(text: str) -> str:
    """Literal text in a field the manifest expands: ``${`` must not read as a reference."""
    return text.replace("${", "$${")


def _unescape(text: str) -> str:
    return text.replace("$${", "${")


# ---- planning ------------------------------------------------------------------------------------


def plan_all(config: ClientConfig, variables: Variables) -> list[Plan]:
    """A plan for every entry, in the file's order; names made unique."""
    taken: set[str] = set()
    plans: list[Plan] = []
    for entry in config.entries:
        name = manifest_name(entry.name)
        unique, n = name, 2
        while unique in taken:
            unique, n = f"{name}-{n}", n + 1
        taken.add(unique)
        plan = Plan(entry.name, unique)
        if unique != entry.name:
            plan.notes.append(f"named {unique!r} (a manifest name is lower-case letters, digits, _ and -)")
        _plan_entry(plan, entry, config, variables)
        plans.append(plan)
    return plans


def _plan_entry(plan: Plan, entry: Entry, config: ClientConfig, variables: Variables) -> None:
    raw = entry.raw
    translate = _Translator(config, variables, plan)
    kind = str(raw.get("type") or ("http" if raw.get("url") else "stdio")).lower()
    if kind == "sse":
        plan.notes.append(
            "uses the SSE transport (deprecated); the gateway speaks streamable HTTP to it: "
            "if the server offers only SSE it will not start"
        )
    elif kind not in _HTTP_TYPES and kind != "stdio":
        plan.problem = f"transport type {raw.get('type')!r} is not supported (stdio, http or sse)"
        return
    for unsupported in ("envFile", "headersHelper", "oauth"):
        if unsupported in raw:
            plan.notes.append(f"{unsupported!r} is not imported: set what it provides by hand")

    if kind == "stdio":
        command = raw.get("command")
        if not isinstance(command, str) or not command.strip():
            plan.problem = "no command (a stdio server needs one)"
            return
        plan.transport = "stdio"
        plan.command = _command(plan, translate(command, "command")[0])
        args = raw.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            plan.problem = "args must be a list of strings"
            return
        plan.args = _args(plan, args, translate, variables)
        env = raw.get("env") or {}
        if not isinstance(env, dict):
            plan.problem = "env must be an object"
            return
        for key, value in env.items():
            plan.env[str(key)] = _lift_whole(plan, str(key), str(value), f"env {key}", translate, variables)
        plan.cwd = _cwd(raw.get("cwd"), config, translate)
        return

    url = raw.get("url")
    if not isinstance(url, str) or not url.strip():
        plan.problem = "no url (an http server needs one)"
        return
    plan.transport = "http"
    plan.url = _url(plan, translate(url, "url")[0], "url", variables)
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict):
        plan.problem = "headers must be an object"
        return
    for header, value in headers.items():
        plan.headers[str(header)] = _header(plan, str(header), str(value), translate, variables)


def _command(plan: Plan, command: str) -> str:
    """A manifest's ``python`` means the gateway's interpreter; the client meant the one on PATH."""
    if command in ("python", "python3"):
        found = shutil.which(command)
        if found:
            plan.notes.append(f"command {command!r} is written as {found} (a manifest's {command!r} is "
                              "the gateway's own interpreter)")  # fmt: skip
            return _escape(found)
    return command


def _lift_whole(
    plan: Plan, preferred: str, value: str, where: str, translate: _Translator, variables: Variables
) -> str:
    text, has_ref = translate(value, where)
    if has_ref or not value:
        return text  # a reference already, or empty: nothing to hide
    literal = _unescape(text)  # VS Code's ${workspaceFolder} resolved, say
    return plan.uses(variables.lift(preferred, literal, f"{plan.source_name}: {where}", plan.name))


def _header(plan: Plan, header: str, value: str, translate: _Translator, variables: Variables) -> str:
    text, has_ref = translate(value, f"header {header}")
    if has_ref or not value:
        return text
    origin = f"{plan.source_name}: header {header}"
    scheme = _SCHEME.match(value)
    if scheme:
        preferred = f"{plan.name}_TOKEN" if header.lower() == "authorization" else f"{plan.name}_{header}"
        return f"{scheme.group(1)} " + plan.uses(
            variables.lift(preferred, scheme.group(2), origin, plan.name)
        )
    return plan.uses(variables.lift(f"{plan.name}_{header}", value, origin, plan.name))


def _url(plan: Plan, url: str, where: str, variables: Variables) -> str:
    """Lift the password and credential-named query values out of a URL (already translated)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    origin = f"{plan.source_name}: {where}"
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, password = userinfo.partition(":")
        if sep and password and "${" not in password:
            name = variables.lift(f"{plan.name}_PASSWORD", password, f"{origin} password", plan.name)
            netloc = f"{user}:{plan.uses(name)}@{hostport}"
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            key, sep, value = pair.partition("=")
            if sep and value and "${" not in value and is_credential_name(key):
                name = variables.lift(f"{plan.name}_{key}", value, f"{origin} query {key}", plan.name)
                pair = f"{key}={plan.uses(name)}"
            pairs.append(pair)
        query = "&".join(pairs)
    lifted = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if lifted == url:
        return url
    return lifted


def _args(plan: Plan, args: list[str], translate: _Translator, variables: Variables) -> list[str]:
    out: list[str] = []
    secret_flag: str | None = None  # the previous argument was a credential-named flag
    for i, arg in enumerate(args):
        where = f"args[{i}]"
        text, has_ref = translate(arg, where)
        after_flag, secret_flag = secret_flag, None
        if has_ref:
            out.append(text)
            continue
        literal = _unescape(text)
        origin = f"{plan.source_name}: {where}"
        if after_flag is not None and literal and not literal.startswith("-"):
            out.append(plan.uses(variables.lift(f"{plan.name}_{after_flag}", literal, origin, plan.name)))
            continue
        flag, eq, value = literal.partition("=")
        if literal.startswith("-") and is_credential_name(flag):
            if eq and value:
                name = variables.lift(f"{plan.name}_{flag.lstrip('-')}", value, origin, plan.name)
                out.append(f"{_escape(flag)}={plan.uses(name)}")
                continue
            if not eq:
                secret_flag = flag.lstrip("-")
        elif "://" in literal:
            text = _url(plan, text, where, variables)
        out.append(text)
    return out


def _cwd(raw: Any, config: ClientConfig, translate: _Translator) -> Path | str | None:
    """Where the client would run the server: its ``cwd``, else the project folder, if any."""
    if isinstance(raw, str) and raw.strip():
        text, has_ref = translate(raw, "cwd")
        if has_ref:
            return text
        path = Path(_unescape(text))
        if not path.is_absolute():
            path = (config.workspace or config.path.parent) / path
        return path
    return config.workspace
