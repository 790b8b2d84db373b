"""An OpenAPI document: parsed (JSON or YAML), validated, and its ``$ref``s resolvable.

``openapi-spec-validator`` (the ``[openapi]`` extra) validates; it and PyYAML are imported
here only, when a document is read, so a gateway without REST downstreams never loads them.
Everything here is synchronous and may do blocking I/O (external ``$ref``s): the session runs
it in a worker thread.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import httpx2

INSTALL_HINT: Final = "pip install 'mcp-idempotency-gateway[openapi]'"
_FETCH_TIMEOUT: Final = 30.0
_SHOWN_ERRORS: Final = 3
_MESSAGE_CAP: Final = 300

Version = Literal["3.0", "3.1"]


class DocumentError(Exception):
    """The document cannot be used: unreadable, not JSON or YAML, not OpenAPI 3.0/3.1, or invalid."""


def is_url(source: str) -> bool:
    return re.match(r"^https?://", source) is not None


def parse(text: str, *, name: str) -> Any:
    """JSON, else YAML; YAML's extra types (timestamps, integer keys) come back as JSON would."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml
    except ImportError as exc:
        raise DocumentError(f"{name}: reading a YAML document needs PyYAML: {INSTALL_HINT}") from exc
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # a safe loader: plain data only
    except yaml.YAMLError as exc:
        raise DocumentError(f"{name}: neither JSON nor YAML: {_first_line(exc)}") from exc
    # YAML keys like `200:` are integers and dates are datetimes; JSON has neither.
    return json.loads(json.dumps(data, default=str))


@dataclass
class Document:
    """One validated OpenAPI document, and every other document its ``$ref``s point into."""

    uri: str  # what relative $refs resolve against: file:///... or http(s)://...
    root: dict[str, Any]
    version: Version
    _others: dict[str, Any] = field(default_factory=dict, repr=False)

    def resolve(self, base: str, ref: str) -> tuple[str, str, Any]:
        """A ``$ref`` met in the document at ``base`` → (its absolute URI, its document's URI, target)."""
        absolute = urljoin(base, ref)
        where, fragment = urldefrag(absolute)
        target = self._load(where or self.uri)
        for token in _pointer(fragment):
            if isinstance(target, dict) and token in target:
                target = target[token]
            elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                target = target[int(token)]
            else:
                raise DocumentError(f"$ref {ref!r} does not resolve")
        return absolute, where or self.uri, target

    def _load(self, uri: str) -> Any:
        if uri == self.uri:
            return self.root
        if uri not in self._others:
            self._others[uri] = parse(_read_uri(uri), name=uri)
        return self._others[uri]


def load(text: str, uri: str) -> Document:
    """Parse and validate; ``DocumentError`` says what is wrong and where."""
    root = parse(text, name=_shown(uri))
    if not isinstance(root, dict):
        raise DocumentError(f"{_shown(uri)}: not an OpenAPI document (expected an object at the top)")
    version = _version(root, uri)
    _validate(root, uri, version)
    return Document(uri, root, version)


def _version(root: dict[str, Any], uri: str) -> Version:
    declared = str(root.get("openapi", ""))
    if re.match(r"^3\.0\.\d+", declared):
        return "3.0"
    if re.match(r"^3\.1\.\d+", declared):
        return "3.1"
    if "swagger" in root:
        raise DocumentError(f"{_shown(uri)}: Swagger 2.0 is not supported; convert it to OpenAPI 3")
    shown = f" (openapi: {declared!r})" if declared else ""
    raise DocumentError(f"{_shown(uri)}: not an OpenAPI 3.0 or 3.1 document{shown}")


def _validate(root: dict[str, Any], uri: str, version: Version) -> None:
    try:
        from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator
    except ImportError as exc:
        raise DocumentError(f"reading OpenAPI documents needs the [openapi] extra: {INSTALL_HINT}") from exc
    cls = OpenAPIV30SpecValidator if version == "3.0" else OpenAPIV31SpecValidator
    try:
        errors = list(itertools.islice(cls(root, base_uri=uri).iter_errors(), _SHOWN_ERRORS))
    except Exception as exc:  # boundary: the validator fails on what it cannot resolve or read
        raise DocumentError(f"{_shown(uri)}: cannot be validated: {_first_line(exc)}") from exc
    if errors:
        shown = "; ".join(f"{_where(e)}: {_first_line(e.message)}" for e in errors)
        raise DocumentError(f"{_shown(uri)}: invalid OpenAPI {version} document: {shown}")


def _where(error: Any) -> str:
    return ".".join(str(p) for p in getattr(error, "absolute_path", ())) or "(document)"


def _pointer(fragment: str) -> list[str]:
    if not fragment:
        return []
    if not fragment.startswith("/"):
        raise DocumentError(f"$ref fragment {fragment!r} is not a JSON pointer")
    return [unquote(t).replace("~1", "/").replace("~0", "~") for t in fragment[1:].split("/")]


def _read_uri(uri: str) -> str:
    """Another document a ``$ref`` names: a file, or an http(s) URL (fetched without credentials)."""
    parsed = urlparse(uri)
    try:
        if parsed.scheme == "file":
            return Path(unquote(parsed.path)).read_text(encoding="utf-8")
        if parsed.scheme in ("http", "https"):
            response = httpx2.get(uri, timeout=_FETCH_TIMEOUT, follow_redirects=True)
            if response.status_code != 200:
                raise DocumentError(f"$ref to {uri}: HTTP {response.status_code}")
            return response.text
    except (OSError, httpx2.HTTPError) as exc:
        raise DocumentError(f"$ref to {_shown(uri)}: {_first_line(exc)}") from exc
    raise DocumentError(f"$ref to {uri}: only file and http(s) references are supported")


def _shown(uri: str) -> str:
    """A file URI as the path the user wrote; URLs as they are."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def _first_line(exc: object) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= _MESSAGE_CAP else line[:_MESSAGE_CAP] + "…"
