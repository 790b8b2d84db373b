"""Settling an unknown key by hand (``idem-gateway resolve``, the audit page's button): which
result may be stored as the call's answer.

Both faces check with these, so a later replay never hands an agent what the tool could not
have returned. Each returns the sentence that says what is wrong, or ``None``; the caller wraps
it in its own error (a CLI message, an HTTP 400).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mcp_types as types
from jsonschema import exceptions as jsonschema_exceptions
from jsonschema import validators
from pydantic import ValidationError


def shape_problem(result: object) -> str | None:
    """Why ``result`` is not a ``CallToolResult``, or ``None``."""
    if not isinstance(result, dict):
        return "a CallToolResult is a JSON object"
    try:
        types.CallToolResult.model_validate(result)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        return f"not a CallToolResult at {where}: {first['msg']}"
    return None


def output_problem(result: Mapping[str, Any], schema: dict[str, Any] | None) -> str | None:
    """Why ``result`` breaks the tool's ``outputSchema``, or ``None``: no schema, or an error
    result (which need not carry structuredContent), is nothing to check."""
    if schema is None or result.get("isError"):
        return None
    structured = result.get("structuredContent")
    if structured is None:
        return "the tool declares an outputSchema: the result needs structuredContent"
    validator = validators.validator_for(schema)(schema)
    error = jsonschema_exceptions.best_match(validator.iter_errors(structured))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(structuredContent)"
    return f"the result does not match the tool's outputSchema at {where}: {error.message}"
