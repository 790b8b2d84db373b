"""The pure parts of transparency, row by row: capability checks, names, task ids, results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from gateway.downstream import relay, tasks
from gateway.downstream.relay import Caller
from gateway.downstream.session import own_meta
from gateway.manifests.models import ServerSpec
from gateway.server import names
from gateway.server.results import is_final

FORM = types.ElicitationCapability(form=types.FormElicitationCapability())
URL = types.ElicitationCapability(url=types.UrlElicitationCapability())
SAMPLING = types.SamplingCapability()


@pytest.mark.parametrize(
    ("capabilities", "method", "params", "answerable"),
    [
        (None, relay.SAMPLING, {}, False),
        (types.ClientCapabilities(), relay.SAMPLING, {}, False),
        (types.ClientCapabilities(sampling=SAMPLING), relay.SAMPLING, {}, True),
        (types.ClientCapabilities(sampling=SAMPLING), relay.SAMPLING, {"tools": [{"name": "t"}]}, False),
        (
            types.ClientCapabilities(sampling=SAMPLING),
            relay.SAMPLING,
            {"includeContext": "thisServer"},
            False,
        ),
        (types.ClientCapabilities(sampling=SAMPLING), relay.SAMPLING, {"includeContext": "none"}, True),
        (types.ClientCapabilities(elicitation=types.ElicitationCapability()), relay.ELICITATION, {}, True),
        (types.ClientCapabilities(elicitation=FORM), relay.ELICITATION, {"mode": "url"}, False),
        (types.ClientCapabilities(elicitation=URL), relay.ELICITATION, {"mode": "url"}, True),
        (types.ClientCapabilities(elicitation=URL), relay.ELICITATION, {"mode": "form"}, False),
        (types.ClientCapabilities(roots=types.RootsCapability()), relay.ROOTS, {}, True),
        (types.ClientCapabilities(sampling=SAMPLING), relay.ROOTS, {}, False),
        (types.ClientCapabilities(sampling=SAMPLING), "ping", {}, False),
    ],
)
def test_a_server_may_ask_only_what_the_client_declared(
    capabilities: types.ClientCapabilities | None, method: str, params: dict[str, Any], answerable: bool
) -> None:
    assert relay.can_answer(capabilities, method, params) is answerable


def test_a_question_is_never_relayed_across_principals() -> None:
    alice, alice_again, bob = Caller("alice"), Caller("alice"), Caller("bob")
    assert relay.pick([]) is None
    assert relay.pick([alice, alice_again]) is alice
    assert relay.pick([alice, bob]) is None


async def test_a_caller_without_a_channel_is_answered_method_not_found() -> None:
    with pytest.raises(MCPError) as raised:
        await Caller("alice").ask(relay.SAMPLING, {})
    assert raised.value.code == types.METHOD_NOT_FOUND


def spec(name: str, **kwargs: Any) -> ServerSpec:
    return ServerSpec(name=name, source=Path(f"{name}.toml"), **kwargs)


def test_prompt_names_stay_unless_two_servers_claim_one() -> None:
    listings = [
        (spec("a"), [{"name": "greet"}, {"name": "only_a"}]),
        (spec("b"), [{"name": "greet"}]),
        (spec("c", tool_prefix="c_"), [{"name": "greet"}]),
    ]
    mapped = names.prompt_names(listings, reserved=["idempotency-policy"])
    assert mapped == {
        "a/greet": names.PromptRef("a", "greet"),
        "b/greet": names.PromptRef("b", "greet"),
        "only_a": names.PromptRef("a", "only_a"),
        "c_greet": names.PromptRef("c", "greet"),
    }


def test_a_server_prompt_named_like_the_gateways_own_is_prefixed() -> None:
    mapped = names.prompt_names(
        [(spec("a"), [{"name": "idempotency-policy"}])], reserved=["idempotency-policy"]
    )
    assert mapped == {"a/idempotency-policy": names.PromptRef("a", "idempotency-policy")}


@pytest.mark.parametrize(
    ("template", "uri", "matches"),
    [
        ("demo://resource/dynamic/text/{index}", "demo://resource/dynamic/text/12", True),
        ("demo://resource/dynamic/text/{index}", "demo://resource/dynamic/blob/12", False),
        ("file:///{+path}", "file:///etc/hosts", True),
        ("relay://item/{id}.json", "relay://item/7.txt", False),
        ("x://{a}/{b}", "x://1/2", True),
    ],
)
def test_a_template_matches_on_its_literal_parts(template: str, uri: str, matches: bool) -> None:
    assert names.template_matches(template, uri) is matches


def test_a_resource_prefix_claims_its_uris() -> None:
    one, two = spec("one"), spec("two", resource_prefix="two+")
    assert names.claimed_by_prefix([one, two], "two+relay://x") == (two, "relay://x")
    assert names.claimed_by_prefix([one, two], "relay://x") is None
    assert names.expose_resource(two, {"uriTemplate": "relay://{id}"}) == {"uriTemplate": "two+relay://{id}"}


def test_task_ids_are_namespaced_in_every_shape_and_routed_back() -> None:
    task = {"taskId": "t1", "status": "working"}
    assert tasks.expose("s", {"task": dict(task)})["task"]["taskId"] == "s/t1"  # 2025 handle
    assert tasks.expose("s", {"resultType": "task", **task})["taskId"] == "s/t1"  # 2026 handle
    assert tasks.expose("s", dict(task))["taskId"] == "s/t1"  # tasks/get
    assert tasks.expose("s", {"tasks": [dict(task)]})["tasks"][0]["taskId"] == "s/t1"
    assert tasks.owner("s/t1/with/slashes") == ("s", "t1/with/slashes")
    with pytest.raises(MCPError):
        tasks.owner("no-server")


def test_only_an_input_required_result_is_not_final() -> None:
    assert is_final({"content": []})
    assert is_final({"resultType": "complete", "content": []})
    assert is_final({"resultType": "task", "taskId": "x"})
    assert not is_final({"resultType": "input_required", "requestState": "s"})


def test_a_downstream_result_keeps_its_meta_but_not_the_gateways_keys() -> None:
    result = {
        "content": [],
        "_meta": {"vendor/k": 1, "idem-gateway/outcome": "forged", types.SERVER_INFO_META_KEY: {"name": "x"}},
    }
    assert own_meta(result) == {"content": [], "_meta": {"vendor/k": 1}}
    assert own_meta({"content": [], "_meta": {"idem-gateway/x": 1}}) == {"content": []}


class _Silent:
    """A client that never answers."""

    def __init__(self) -> None:
        self.asked = anyio.Event()

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.asked.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        return None

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        return None


async def test_a_question_still_open_when_its_request_ends_is_abandoned() -> None:
    channel = _Silent()
    caller = Caller(
        "alice", channel=channel, capabilities=types.ClientCapabilities(roots=types.RootsCapability())
    )
    errors: list[MCPError] = []

    async def ask() -> None:
        try:
            await caller.ask(relay.ROOTS, {})
        except MCPError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await channel.asked.wait()
            caller.close()
    assert [e.code for e in errors] == [types.REQUEST_TIMEOUT]
