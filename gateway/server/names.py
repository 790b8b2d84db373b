"""One namespace for prompts and resources across downstreams, as tools have with ``tool_prefix``.

Prompts: a server's prompts are exposed as ``tool_prefix + name``, like its tools. Two
servers (or a server and the gateway's own prompt) that still expose the same name are both
exposed as ``<server>/<name>``, so neither shadows the other; a name that is unique stays as
the server gave it.

Resources: a URI names a thing, and tool results link to it by that URI (``resource_link``,
embedded resources), so URIs are passed through unchanged by default and a read is routed by
asking: the server that lists the URI, then servers whose templates match it, then every
server that serves resources, until one has it. Two servers that serve the same URIs can be
told apart with ``resource_prefix``: that server's URIs and templates are exposed with the
prefix, and a URI with the prefix is that server's alone (links in its tool results are not
rewritten).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.manifests.models import ServerSpec

COLLISION_SEPARATOR: Final = "/"
_VARIABLE = re.compile(r"\{[^}]*\}")


@dataclass(frozen=True, slots=True)
class PromptRef:
    server: str
    name: str  # the downstream's own name


def prompt_names(
    listings: Iterable[tuple[ServerSpec, Sequence[Mapping[str, Any]]]], reserved: Iterable[str] = ()
) -> dict[str, PromptRef]:
    """Exposed prompt name → the server and its own name (see the module docstring)."""
    claims: dict[str, list[PromptRef]] = {name: [] for name in reserved}
    for spec, prompts in listings:
        for prompt in prompts:
            name = prompt.get("name")
            if isinstance(name, str):
                claims.setdefault(spec.exposed_name(name), []).append(PromptRef(spec.name, name))
    out: dict[str, PromptRef] = {}
    for exposed, refs in claims.items():
        if len(refs) == 1 and exposed not in reserved:
            out[exposed] = refs[0]
            continue
        for ref in refs:
            out[f"{ref.server}{COLLISION_SEPARATOR}{exposed}"] = ref
    return out


def exposed_prompts(
    listings: Iterable[tuple[ServerSpec, Sequence[Mapping[str, Any]]]], reserved: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The prompts as listed, renamed by ``prompt_names``."""
    listings = list(listings)
    names = {(ref.server, ref.name): exposed for exposed, ref in prompt_names(listings, reserved).items()}
    out: list[dict[str, Any]] = []
    for spec, prompts in listings:
        for prompt in prompts:
            exposed = names.get((spec.name, str(prompt.get("name"))))
            if exposed is not None:
                out.append({**prompt, "name": exposed})
    return out


def expose_uri(spec: ServerSpec, uri: str) -> str:
    return spec.resource_prefix + uri


def expose_resource(spec: ServerSpec, resource: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(resource)
    if spec.resource_prefix:
        if isinstance(out.get("uri"), str):
            out["uri"] = spec.resource_prefix + out["uri"]
        if isinstance(out.get("uriTemplate"), str):
            out["uriTemplate"] = spec.resource_prefix + out["uriTemplate"]
    return out


def claimed_by_prefix(specs: Iterable[ServerSpec], uri: str) -> tuple[ServerSpec, str] | None:
    """The server whose ``resource_prefix`` this URI carries, and the URI it knows."""
    for spec in specs:
        if spec.resource_prefix and uri.startswith(spec.resource_prefix):
            return spec, uri[len(spec.resource_prefix) :]
    return None


def template_matches(template: str, uri: str) -> bool:
    """Whether ``uri`` fits an RFC 6570 template's literal parts (each expression matches any text)."""
    pattern = "".join(".*" if part.startswith("{") else re.escape(part) for part in _split(template) if part)
    return re.fullmatch(pattern, uri, flags=re.DOTALL) is not None


def _split(template: str) -> list[str]:
    parts: list[str] = []
    last = 0
    for match in _VARIABLE.finditer(template):
        parts.append(template[last : match.start()])
        parts.append(match.group(0))
        last = match.end()
    parts.append(template[last:])
    return parts
