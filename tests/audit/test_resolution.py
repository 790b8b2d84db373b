"""What an operator may store as an unknown key's result: the one check the CLI's ``resolve``
and the audit page both use (end to end in ``test_resolve.py`` and ``tests/http/test_audit_api.py``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.audit.resolution import output_problem, shape_problem

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"result": {"type": "string"}},
    "required": ["result"],
}
TEXT = [{"type": "text", "text": "done"}]


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"content": TEXT}, None),
        ([], "a CallToolResult is a JSON object"),
        ({"content": 3}, "not a CallToolResult at content: "),
    ],
)
def test_a_result_that_is_not_a_call_tool_result_is_named_where_it_breaks(
    result: object, problem: str | None
) -> None:
    found = shape_problem(result)
    if problem is None:
        assert found is None
    else:  # the rest is pydantic's own sentence
        assert found is not None and found.startswith(problem)


@pytest.mark.parametrize(
    ("result", "schema", "problem"),
    [
        ({"content": TEXT, "structuredContent": {"result": "done"}}, SCHEMA, None),
        ({"content": TEXT}, None, None),
        ({"content": TEXT, "isError": True}, SCHEMA, None),
        ({"content": TEXT}, SCHEMA, "the tool declares an outputSchema: the result needs structuredContent"),
        (
            {"content": TEXT, "structuredContent": {"result": 5}},
            SCHEMA,
            "the result does not match the tool's outputSchema at result: 5 is not of type 'string'",
        ),
    ],
)
def test_a_result_is_held_to_the_tools_output_schema_unless_it_is_an_error(
    result: dict[str, Any], schema: dict[str, Any] | None, problem: str | None
) -> None:
    assert output_problem(result, schema) == problem
