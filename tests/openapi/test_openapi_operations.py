"""An OpenAPI document → tools: names, input and output schemas, skips; and arguments → requests.

Pure functions over small documents written here; the real API and gateway are in
``test_openapi_gateway.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest

from gateway.downstream.errors import DownstreamLost, DownstreamRejected
from gateway.downstream.openapi.document import Document, DocumentError, load
from gateway.downstream.openapi.operations import operations_of
from gateway.downstream.openapi.wire import HTTP_STATUS_META, build_request, result_of
from gateway.errors import IdempotencyKeyConflict
from gateway.meta import ERROR as ERROR_META
from gateway.server.errors import refusal_result

REPO = Path(__file__).resolve().parents[2]
URI = "file:///api/openapi.json"
ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def document(
    paths: dict[str, Any], *, version: str = "3.1.0", components: dict[str, Any] | None = None
) -> Document:
    root = {"openapi": version, "info": {"title": "t", "version": "1"}, "paths": paths}
    if components:
        root["components"] = components
    return load(json.dumps(root), URI)


def ok(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"200": {"description": "ok"}}
    return {"200": {"description": "ok", "content": {"application/json": {"schema": schema}}}}


def tools(doc: Document, **kwargs: Any) -> dict[str, dict[str, Any]]:
    return {name: op.tool for name, op in operations_of(doc, **kwargs).operations.items()}


# ---------------------------------------------------------------------------------- documents


def test_the_example_document_is_valid_yaml_and_names_every_operation() -> None:
    path = REPO / "examples" / "invoices_api.yaml"
    listing = operations_of(load(path.read_text(), path.as_uri()), set_headers=["Idempotency-Key"])
    assert sorted(listing.operations) == [
        "createInvoice",
        "getInvoice",
        "health",
        "listInvoices",
        "post_invoices_invoice_id_send",
        "voidInvoice",
    ]
    assert listing.warnings == [
        "POST /invoices/{invoice_id}/attachments (uploadAttachment): skipped: "
        "its request body is not JSON (multipart/form-data)"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not: [valid", "neither JSON nor YAML"),
        ('{"swagger": "2.0"}', "Swagger 2.0 is not supported"),
        ('{"openapi": "4.0.0"}', "not an OpenAPI 3.0 or 3.1 document"),
        ('{"openapi": "3.1.0", "info": {"title": "t"}, "paths": {}}', "invalid OpenAPI 3.1 document: info"),
    ],
)
def test_an_unusable_document_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        load(text, URI)


# ------------------------------------------------------------------------------------- naming


def test_an_operation_without_operation_id_is_named_from_its_method_and_path() -> None:
    doc = document(
        {
            "/invoices/{id}/send": {"post": {"parameters": [ID], "responses": ok()}},
            "/a b": {"get": {"operationId": "list things!", "responses": ok()}},
        }
    )
    assert sorted(tools(doc)) == ["list_things", "post_invoices_id_send"]


def test_a_derived_name_that_clashes_with_an_operation_id_is_skipped_with_a_warning() -> None:
    doc = document(
        {
            "/x": {"get": {"responses": ok()}},
            "/y": {"get": {"operationId": "get_x", "responses": ok()}},
        }
    )
    listing = operations_of(doc)
    assert list(listing.operations) == ["get_x"]
    assert listing.operations["get_x"].path == "/y"
    assert listing.warnings == ["GET /x: skipped: its tool name 'get_x' is taken by GET /y"]


# ------------------------------------------------------------------------------ input schemas


def test_parameters_and_a_flat_json_body_are_one_argument_each() -> None:
    doc = document(
        {
            "/orders/{order_id}": {
                "parameters": [
                    {"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "patch": {
                    "operationId": "updateOrder",
                    "parameters": [
                        {"name": "dry_run", "in": "query", "schema": {"type": "boolean"}},
                        {"name": "X-Trace", "in": "header", "schema": {"type": "string"}},
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {"name": "Authorization", "in": "header", "schema": {"type": "string"}},
                        {"name": "X-Api-Key", "in": "header", "schema": {"type": "string"}},
                        {"name": "session", "in": "cookie", "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "quantity": {"type": "integer"},
                                        "note": {"type": "string"},
                                    },
                                    "required": ["quantity"],
                                }
                            }
                        },
                    },
                    "responses": ok(),
                },
            }
        }
    )
    schema = tools(doc, set_headers=["Idempotency-Key", "x-api-key"])["updateOrder"]["inputSchema"]
    assert schema == {
        "type": "object",
        "properties": {
            "order_id": {"type": "string"},
            "dry_run": {"type": "boolean"},
            "X-Trace": {"type": "string"},
            "quantity": {"type": "integer"},
            "note": {"type": "string"},
        },
        "required": ["order_id", "quantity"],
    }


def test_a_body_that_is_not_a_plain_object_is_the_body_argument() -> None:
    doc = document(
        {
            "/batch": {
                "post": {
                    "operationId": "batch",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"type": "array", "items": {"type": "integer"}}}
                        },
                    },
                    "responses": ok(),
                }
            }
        }
    )
    schema = tools(doc)["batch"]["inputSchema"]
    assert schema["properties"] == {"body": {"type": "array", "items": {"type": "integer"}}}
    assert schema["required"] == ["body"]
    assert schema["additionalProperties"] is False


def test_openapi_3_0_nullable_and_boolean_exclusive_bounds_become_json_schema() -> None:
    amount = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "nullable": True}
    kind = {"type": "string", "enum": ["a", "b"], "nullable": True}
    ref_nullable = {"allOf": [{"$ref": "#/components/schemas/Thing"}], "nullable": True}
    body = {"type": "object", "properties": {"amount": amount, "kind": kind, "thing": ref_nullable}}
    doc = document(
        {
            "/p": {
                "post": {
                    "operationId": "p",
                    "requestBody": {"content": {"application/json": {"schema": body}}},
                    "responses": ok(),
                }
            }
        },
        version="3.0.3",
        components={"schemas": {"Thing": {"type": "object", "properties": {"x": {"type": "string"}}}}},
    )
    props = tools(doc)["p"]["inputSchema"]["properties"]
    assert props["amount"] == {"type": ["number", "null"], "exclusiveMinimum": 0}
    assert props["kind"] == {"type": ["string", "null"], "enum": ["a", "b", None]}
    assert props["thing"] == {
        "anyOf": [{"allOf": [{"type": "object", "properties": {"x": {"type": "string"}}}]}, {"type": "null"}]
    }
    validator = jsonschema.Draft202012Validator(tools(doc)["p"]["inputSchema"])
    assert validator.is_valid({"amount": None, "kind": None, "thing": None})
    assert not validator.is_valid({"amount": 0})


def test_a_recursive_schema_is_a_local_definition_and_validates() -> None:
    node = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
        },
        "required": ["name"],
    }
    doc = document(
        {
            "/trees": {
                "post": {
                    "operationId": "plant",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}},
                    },
                    "responses": ok({"$ref": "#/components/schemas/Node"}),
                }
            }
        },
        components={"schemas": {"Node": node}},
    )
    tool = tools(doc)["plant"]
    schema = tool["inputSchema"]
    assert schema["properties"]["body"] == {"$ref": "#/$defs/Node"}
    assert schema["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"body": {"name": "a", "children": [{"name": "b", "children": []}]}})
    assert not validator.is_valid({"body": {"name": "a", "children": [{"children": []}]}})
    output = tool["outputSchema"]
    assert output["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    assert jsonschema.Draft202012Validator(output).is_valid({"name": "a", "children": [{"name": "b"}]})


def test_read_only_properties_leave_the_request_and_write_only_ones_the_response() -> None:
    user = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "readOnly": True},
            "password": {"type": "string", "writeOnly": True},
            "name": {"type": "string"},
        },
        "required": ["id", "password", "name"],
    }
    doc = document(
        {
            "/users": {
                "post": {
                    "operationId": "createUser",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": user}}},
                    "responses": {
                        "201": {"description": "c", "content": {"application/json": {"schema": user}}}
                    },
                }
            }
        }
    )
    tool = tools(doc)["createUser"]
    assert set(tool["inputSchema"]["properties"]) == {"password", "name"}
    assert tool["inputSchema"]["required"] == ["password", "name"]
    assert set(tool["outputSchema"]["properties"]) == {"id", "name"}
    assert tool["outputSchema"]["required"] == ["id", "name"]


def test_an_operation_the_gateway_cannot_call_is_skipped_with_the_reason() -> None:
    doc = document(
        {
            "/upload": {
                "post": {
                    "operationId": "upload",
                    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {}}}},
                    "responses": ok(),
                }
            },
            "/session": {
                "get": {
                    "operationId": "whoami",
                    "parameters": [
                        {"name": "sid", "in": "cookie", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": ok(),
                }
            },
            "/clash/{id}": {
                "get": {
                    "operationId": "clash",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "id", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": ok(),
                }
            },
        }
    )
    listing = operations_of(doc)
    assert listing.operations == {}
    assert sorted(listing.warnings) == [
        "GET /clash/{id} (clash): skipped: two parameters are both called 'id'",
        "GET /session (whoami): skipped: the cookie parameter 'sid' is required, and cookies are not sent",
        "POST /upload (upload): skipped: its request body is not JSON (multipart/form-data)",
    ]


# ----------------------------------------------------------------------------- output schemas


@pytest.mark.parametrize(
    ("responses", "declared"),
    [
        (ok({"type": "object", "properties": {"a": {"type": "string"}}}), True),
        (ok({"type": "array", "items": {"type": "string"}}), False),  # structuredContent is an object
        (ok({"type": ["object", "null"], "properties": {}}), False),
        ({**ok({"type": "object", "properties": {}}), "204": {"description": "none"}}, False),
        (ok(), False),
    ],
)
def test_an_output_schema_is_declared_only_when_every_2xx_answer_is_one_json_object(
    responses: dict[str, Any], declared: bool
) -> None:
    doc = document({"/r": {"get": {"operationId": "r", "responses": responses}}})
    assert ("outputSchema" in tools(doc)["r"]) is declared


def test_get_and_head_are_read_only_and_the_others_are_not() -> None:
    paths = {
        "/r": {
            m: {"operationId": m, "responses": ok()}
            for m in ("get", "head", "post", "put", "patch", "delete")
        }
    }
    listed = tools(document(paths))
    assert {m: t["annotations"]["readOnlyHint"] for m, t in listed.items()} == {
        "get": True,
        "head": True,
        "post": False,
        "put": False,
        "patch": False,
        "delete": False,
    }
    assert listed["delete"]["annotations"]["destructiveHint"] is True


# ----------------------------------------------------------------------------------- requests


def request_for(paths: dict[str, Any], name: str, arguments: dict[str, Any]) -> httpx2.Request:
    op = operations_of(document(paths)).operations[name]
    return build_request(httpx2.AsyncClient(), op, arguments, base_url="http://api.test/v1/")


def test_arguments_are_serialized_by_their_parameter_styles() -> None:
    params = [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "tags", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
        {
            "name": "ids",
            "in": "query",
            "explode": False,
            "schema": {"type": "array", "items": {"type": "integer"}},
        },
        {"name": "filter", "in": "query", "style": "deepObject", "schema": {"type": "object"}},
        {"name": "flag", "in": "query", "schema": {"type": "boolean"}},
        {"name": "X-Ids", "in": "header", "schema": {"type": "array", "items": {"type": "integer"}}},
    ]
    paths = {"/things/{id}": {"get": {"operationId": "things", "parameters": params, "responses": ok()}}}
    request = request_for(
        paths,
        "things",
        {
            "id": "a/b c",
            "tags": ["x", "y"],
            "ids": [1, 2],
            "filter": {"k": "v"},
            "flag": False,
            "X-Ids": [3, 4],
        },
    )
    assert request.method == "GET"
    assert request.url.raw_path.decode() == (
        "/v1/things/a%2Fb%20c?tags=x&tags=y&ids=1%2C2&filter%5Bk%5D=v&flag=false"
    )
    assert request.headers["X-Ids"] == "3,4"


def test_a_flat_body_carries_the_arguments_that_are_no_parameter() -> None:
    paths = {
        "/orders/{id}": {
            "put": {
                "operationId": "put",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/merge-patch+json": {
                            "schema": {"type": "object", "properties": {"n": {}}}
                        }
                    },
                },
                "responses": ok(),
            }
        }
    }
    request = request_for(paths, "put", {"id": "7", "n": 1, "extra": None})
    assert request.url.path == "/v1/orders/7"
    assert request.headers["Content-Type"] == "application/merge-patch+json"
    assert json.loads(request.content) == {"n": 1, "extra": None}


def test_a_header_argument_with_a_line_break_is_refused_before_sending() -> None:
    params = [{"name": "X-Note", "in": "header", "schema": {"type": "string"}}]
    paths = {"/n": {"get": {"operationId": "n", "parameters": params, "responses": ok()}}}
    with pytest.raises(DownstreamRejected, match="line break"):
        request_for(paths, "n", {"X-Note": "a\r\nX-Evil: 1"})


# ---------------------------------------------------------------------------------- responses

POST = {"/r": {"post": {"operationId": "r", "responses": ok()}}}


def answer(
    status: int, body: Any = None, *, key_sent: bool = True, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    op = operations_of(document(POST)).operations["r"]
    request = httpx2.Request("POST", "http://api.test/r")
    if isinstance(body, dict | list):
        response = httpx2.Response(status, json=body, headers=headers, request=request)
    else:
        response = httpx2.Response(status, text=body or "", headers=headers, request=request)
    return result_of(
        op, response, server="api", key_header="Idempotency-Key" if key_sent else None, scrub=str
    )


def test_a_json_object_answer_is_structured_content_and_its_text() -> None:
    result = answer(201, {"id": "x", "n": 1})
    assert result["structuredContent"] == {"id": "x", "n": 1}
    assert json.loads(result["content"][0]["text"]) == {"id": "x", "n": 1}
    assert result["isError"] is False
    assert result["_meta"] == {HTTP_STATUS_META: 201}


def test_a_4xx_is_the_apis_answer_as_a_tool_error() -> None:
    result = answer(404, {"title": "Not Found"})
    assert result["isError"] is True
    assert "structuredContent" not in result
    assert result["content"][0]["text"].startswith("HTTP 404 Not Found: ")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_a_5xx_408_or_429_leaves_the_outcome_unknown(status: int) -> None:
    with pytest.raises(DownstreamLost):
        answer(status, "busy", headers={"Retry-After": "1"})


def test_a_409_about_the_key_means_the_first_request_still_runs_there() -> None:
    body = {"type": "https://x/idempotency", "title": "A request is outstanding for this Idempotency-Key"}
    with pytest.raises(DownstreamLost):
        answer(409, body)
    plain = answer(409, {"title": "Conflict", "detail": "already void"})  # not about the key: an answer
    assert plain["isError"] is True


def test_a_422_about_the_key_is_relayed_as_the_gateways_own_conflict_refusal() -> None:
    result = answer(422, {"title": "Idempotency-Key is already used"})
    ours = refusal_result(IdempotencyKeyConflict("x"))
    assert result["isError"] is True
    assert (
        result["_meta"][ERROR_META]["code"] == ours["_meta"][ERROR_META]["code"] == "idempotency_key_conflict"
    )
    assert result["_meta"][ERROR_META]["http_status"] == 422
    # Without a key sent, a 422 is a validation answer like any 4xx.
    unkeyed = answer(422, {"title": "Idempotency-Key is already used"}, key_sent=False)
    assert ERROR_META not in unkeyed["_meta"]
