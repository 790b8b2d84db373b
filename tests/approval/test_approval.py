"""A person's approval before a key first runs, asked by MCP elicitation: real gateway processes,
the example payments server (its ledger counts executions), and the Python SDK client in both eras
(``auto``: 2026-07-28, questions as ``input_required`` rounds; ``legacy``: 2025-11-25, questions
as requests on the call's stream) with a scripted person answering.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.approval.kit import (
    MODES,
    WAIT,
    Person,
    approvals_in,
    dismissed,
    dump,
    events,
    gateway,
    no,
    outcomes,
    poll,
    record,
    retention_ends,
    unticked,
    yes,
)
from tests.http.kit import http_gateway
from tests.never_twice.kit import now_us
from tests.support import (
    NO_REPLAY_CACHE,
    Setup,
    error_code,
    meta_of,
    new_key,
    outcome,
    read_ledger,
    text_of,
    wait_for,
)
from tests.transparency.kit import RELAY_SERVER, manifest, over_http

APPROVE_ALL = {"create_invoice": {"approve": True, "redact": ["card_number"]}}
INVOICE = {"customer": "acme", "amount": 120.0, "card_number": "4242424242424242"}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")


def invoice(key: str, **changes: Any) -> dict[str, Any]:
    return {**INVOICE, **changes, "idempotency_key": key}


async def read_json(client: Any, uri: str) -> dict[str, Any]:
    result = await client.read_resource(uri)
    return dict(json.loads(result.contents[0].text))


# ---- the answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_an_approved_key_runs_once_and_its_retries_replay_without_asking(
    setup: Setup, mode: str
) -> None:
    setup.manifest(tools=APPROVE_ALL)
    person = Person([yes()])
    key = new_key()
    async with gateway(setup, mode=mode, person=person) as gw:
        first = await gw.client.call_tool("create_invoice", invoice(key))
        retries = [await gw.client.call_tool("create_invoice", invoice(key)) for _ in range(2)]
        story = await read_json(gw.client, f"audit://keys/{key}")
        stats = await read_json(gw.client, "audit://stats")
    assert outcome(first) == "executed" and not first.is_error
    assert [outcome(r) for r in retries] == ["replayed", "replayed"]
    assert len(setup.executions("create_invoice")) == 1
    assert len(person.questions) == 1
    question = person.questions[0]
    assert '"create_invoice"' in question.message and '"payments"' in question.message
    assert '"acme"' in question.message and "120.0" in question.message
    assert "4242" not in question.message and "card_number: *** (hidden)" in question.message
    assert question.requested_schema["properties"]["approve"]["type"] == "boolean"
    # The audit: who decided and when, then the one execution and the replays.
    assert [e["outcome"] for e in reversed(story["events"])] == [
        "approved",
        "executed",
        "replayed",
        "replayed",
    ]
    approved = story["events"][-1]
    assert approved["detail"]["decided_by"] == "local"
    assert approved["detail"]["asked_at"] <= approved["detail"]["decided_at"] == approved["at"]
    assert approved["arguments"]["card_number"] == "***"
    assert story["record"]["state"] == "completed"
    assert stats["by_outcome"] == {"approved": 1, "executed": 1, "replayed": 2}
    assert stats["by_tool"]["create_invoice"]["approved"] == 1 and stats["duplicates_prevented"] == 2


@pytest.mark.parametrize(("mode", "answer"), [("auto", no), ("legacy", no), ("legacy", unticked)])
async def test_a_declined_key_never_runs_and_every_retry_gets_the_same_refusal(
    setup: Setup, mode: str, answer: Any
) -> None:
    setup.manifest(tools=APPROVE_ALL)
    person = Person([answer()])
    key = new_key()
    async with gateway(setup, mode=mode, person=person) as gw:
        first = await gw.client.call_tool("create_invoice", invoice(key))
        retries = [await gw.client.call_tool("create_invoice", invoice(key)) for _ in range(2)]
        stats = await read_json(gw.client, "audit://stats")
    assert first.is_error and error_code(first) == "approval_declined"
    error = meta_of(first)["idem-gateway/error"]
    assert error["http_status"] == 403 and error["decided_at"]
    assert outcome(first) is None  # a refusal, not an execution
    assert [dump(r) for r in retries] == [dump(first)] * 2
    assert setup.executions("create_invoice") == []
    assert len(person.questions) == 1
    rows = await events(setup.store, key)
    assert [r["outcome"] for r in rows] == ["approval_declined"] * 3
    assert (
        rows[0]["detail"]["decided_by"] == "local" and rows[0]["detail"]["decided_at"] == error["decided_at"]
    )
    assert [r["detail"].get("replayed") for r in rows] == [None, True, True]
    stored = await record(setup.store, key)
    assert stored is not None and stored["state"] == "completed"
    assert stats["by_outcome"] == {"approval_declined": 3} and stats["duplicates_prevented"] == 0


async def test_after_its_retention_a_declined_key_is_asked_about_again(setup: Setup) -> None:
    setup.manifest(tools=APPROVE_ALL)
    person = Person([no(), yes()])
    key = new_key()
    async with gateway(setup, *NO_REPLAY_CACHE, mode="legacy", person=person) as gw:
        declined = await gw.client.call_tool("create_invoice", invoice(key))
        await retention_ends(setup, key)
        again = await gw.client.call_tool("create_invoice", invoice(key))
    assert error_code(declined) == "approval_declined"
    assert outcome(again) == "executed"
    assert len(person.questions) == 2
    assert len(setup.executions("create_invoice")) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_a_dismissed_question_releases_the_key_and_a_retry_asks_again(setup: Setup, mode: str) -> None:
    setup.manifest(tools=APPROVE_ALL)
    person = Person([dismissed(), yes()])
    key = new_key()
    async with gateway(setup, mode=mode, person=person) as gw:
        cancelled = await gw.client.call_tool("create_invoice", invoice(key))
        assert await record(setup.store, key) is None  # released
        retry = await gw.client.call_tool("create_invoice", invoice(key))
    error = meta_of(cancelled)["idem-gateway/error"]
    assert (
        error["code"] == "approval_unavailable"
        and error["http_status"] == 428
        and error["reason"] == "cancelled"
    )
    assert outcome(retry) == "executed"
    assert len(person.questions) == 2
    assert len(setup.executions("create_invoice")) == 1
    assert await outcomes(setup, key) == ["approval_unavailable", "approved", "executed"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_without_elicitation_gets_approval_unavailable_and_nothing_runs(
    setup: Setup, mode: str
) -> None:
    setup.manifest(tools=APPROVE_ALL)
    key = new_key()
    async with gateway(setup, mode=mode, person=None) as gw:
        refused = await gw.client.call_tool("create_invoice", invoice(key))
        again = await gw.client.call_tool("create_invoice", invoice(key))
    for result in (refused, again):
        error = meta_of(result)["idem-gateway/error"]
        assert error["code"] == "approval_unavailable" and error["reason"] == "no_elicitation"
    assert setup.executions("create_invoice") == []
    assert await record(setup.store, key) is None
    rows = await events(setup.store, key)
    assert [(r["outcome"], r["detail"]) for r in rows] == [
        ("approval_unavailable", {"reason": "no_elicitation"})
    ] * 2
    # The key was released: a client that can ask runs it.
    person = Person([yes()])
    async with gateway(setup, mode=mode, person=person, name="second") as gw:
        ran = await gw.client.call_tool("create_invoice", invoice(key))
    assert outcome(ran) == "executed" and len(setup.executions("create_invoice")) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_no_answer_in_time_is_approval_unavailable_and_a_late_answer_runs_nothing(
    setup: Setup, mode: str
) -> None:
    """The person answers only once the gateway has recorded that it gave up (on a slow machine
    the question may not even reach the client before that: the outcome is the same)."""
    setup.manifest(tools={"create_invoice": {"approve": True, "approval_timeout": "300ms"}})
    person = Person([yes()], hold=True)
    key = new_key()
    results: list[Any] = []
    async with gateway(setup, mode=mode, person=person) as gw:
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                results.append(await gw.client.call_tool("create_invoice", invoice(key)))

            tg.start_soon(call)

            async def gave_up() -> bool:
                return "approval_unavailable" in await outcomes(setup, key)

            await poll(gave_up)
            person.release.set()
    (result,) = results
    assert meta_of(result)["idem-gateway/error"]["reason"] == "timeout"
    assert setup.executions("create_invoice") == []
    assert await record(setup.store, key) is None


# ---- a retry while the question is open ---------------------------------------------------------------


@pytest.mark.parametrize("answer", [yes, no])
async def test_a_retry_while_the_question_is_open_waits_for_the_same_answer(
    setup: Setup, answer: Any
) -> None:
    """2025-era client: the retry is a concurrent duplicate of the claimed key. It is observed
    waiting (the gateway's log says so) before the person answers; it is never asked itself."""
    setup.manifest(tools={"create_invoice": {"approve": True, "wait": "2m"}})
    person = Person([answer()], hold=True)
    key = new_key()
    results: dict[str, Any] = {}
    async with gateway(setup, mode="legacy", person=person, env={"IDEM_GATEWAY_LOG_LEVEL": "DEBUG"}) as gw:

        async def call(name: str) -> None:
            results[name] = await gw.client.call_tool("create_invoice", invoice(key))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "first")
            await person.asked()
            tg.start_soon(call, "retry")
            await wait_for(
                lambda: "a duplicate waits for its key's first call" in gw.log_text(), timeout=WAIT
            )
            assert "retry" not in results
            person.release.set()
    assert len(person.questions) == 1
    if answer is yes:
        assert (outcome(results["first"]), outcome(results["retry"])) == ("executed", "replayed")
        assert len(setup.executions("create_invoice")) == 1
    else:
        assert dump(results["retry"]) == dump(results["first"])
        assert error_code(results["retry"]) == "approval_declined"
        assert setup.executions("create_invoice") == []


async def test_a_2026_retry_while_the_question_is_open_is_handed_the_same_question(setup: Setup) -> None:
    """2026-07-28 client: the retry re-attaches to the open question (its round carries the same
    question and the same requestState); one answer settles both, one execution, one approval."""
    setup.manifest(tools=APPROVE_ALL)
    person = Person([yes()], hold=True)
    key = new_key()
    results: list[Any] = []
    async with gateway(setup, mode="auto", person=person) as gw:

        async def call() -> None:
            results.append(await gw.client.call_tool("create_invoice", invoice(key)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await person.asked()
            tg.start_soon(call)
            await person.asked(2)
            person.release.set()
    assert person.questions[0].message == person.questions[1].message
    assert sorted(outcome(r) or "" for r in results) == ["executed", "replayed"]
    assert len(setup.executions("create_invoice")) == 1
    assert len(approvals_in(await events(setup.store, key))) == 1


async def test_a_retry_whose_wait_ends_before_the_answer_gets_in_progress_with_retry_after(
    setup: Setup,
) -> None:
    setup.manifest(tools={"create_invoice": {"approve": True, "wait": "200ms", "approval_timeout": "2m"}})
    person = Person([yes()], hold=True)
    key = new_key()
    async with gateway(setup, mode="legacy", person=person) as gw:
        async with anyio.create_task_group() as tg:
            tg.start_soon(gw.client.call_tool, "create_invoice", invoice(key))
            await person.asked()
            retry = await gw.client.call_tool("create_invoice", invoice(key))
            person.release.set()
    error = meta_of(retry)["idem-gateway/error"]
    assert error["code"] == "idempotency_key_in_progress" and error["http_status"] == 409
    # The first call may wait for its approval (2 min) and then run (timeout 30 s).
    assert 30 < error["retry_after_seconds"] <= 150
    assert len(setup.executions("create_invoice")) == 1 and len(person.questions) == 1


async def test_the_lease_is_renewed_while_a_person_thinks(setup: Setup) -> None:
    """Lease 2 s; the question stays open until the claim is older than its first lease. Another
    gateway process on the store then finds the lease alive (the retry is in progress, not
    unknown), and the approved call runs once."""
    setup.manifest(tools={"create_invoice": {"approve": True, "wait": "100ms"}})
    person = Person([yes()], hold=True)
    key = new_key()
    async with (
        gateway(setup, "--lease-ttl", "2", mode="legacy", person=person) as holder,
        gateway(setup, "--lease-ttl", "2", mode="legacy", person=Person(), name="other") as other,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.client.call_tool, "create_invoice", invoice(key))
            await person.asked()
            claimed = await record(setup.store, key)
            assert claimed is not None
            first_lease = claimed["lease_expires_at"]

            async def renewed_past_the_first_lease() -> bool:
                row = await record(setup.store, key)
                return row is not None and row["lease_expires_at"] > first_lease and now_us() > first_lease

            await poll(renewed_past_the_first_lease)
            retry = await other.client.call_tool("create_invoice", invoice(key))
            person.release.set()
    assert error_code(retry) == "idempotency_key_in_progress"
    assert len(setup.executions("create_invoice")) == 1
    assert await outcomes(setup, key) == ["in_progress", "approved", "executed"]


# ---- conditions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_small_amount_runs_without_asking_and_a_large_one_asks(setup: Setup, mode: str) -> None:
    setup.manifest(tools={"create_invoice": {"approve": [{"argument": "amount", "above": 100}]}})
    person = Person([yes()])
    async with gateway(setup, mode=mode, person=person) as gw:
        small = await gw.client.call_tool("create_invoice", invoice(new_key(), amount=99.5))
        assert person.questions == []
        large = await gw.client.call_tool("create_invoice", invoice(new_key(), amount=100.5))
    assert outcome(small) == outcome(large) == "executed"
    assert len(person.questions) == 1 and "100.5" in person.questions[0].message
    assert len(setup.executions("create_invoice")) == 2


# ---- a call of several rounds ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_call_whose_server_asks_too_is_approved_once_across_its_rounds(
    setup: Setup, mode: str
) -> None:
    """``keyed_ask`` (2026-07-28 behind the gateway) answers its first round with a question of its
    own. For a 2026-07-28 client the key is released between the rounds (an input_required result
    is never stored); the next round is not asked about again: the approval stands until the key
    completes. A 2025-era client's rounds are resolved by the gateway inside one claim."""
    relay = setup.tmp / "relay-ledger.jsonl"
    manifest(
        setup.manifests,
        "relay",
        {"command": sys.executable, "args": [str(RELAY_SERVER)], "env": {"RELAY_LEDGER": str(relay)}},
        tools={"keyed_ask": {"approve": True}},
    )
    asked: list[str] = []

    async def person(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert isinstance(params, types.ElicitRequestFormParams)
        if "approve" in params.requested_schema["properties"]:
            asked.append("approval")
            return yes()
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "paid"})

    key = new_key()
    arguments = {"method": "elicitation/create", "text": "pay?", "idempotency_key": key}
    async with gateway(setup, mode=mode, person=person) as gw:
        first = await gw.client.call_tool("keyed_ask", arguments)
        retry = await gw.client.call_tool("keyed_ask", arguments)
    assert asked == ["approval", "pay?"]
    assert outcome(first) == "executed" and '"paid"' in text_of(first)
    assert outcome(retry) == "replayed"
    assert len(read_ledger(relay)) == 1
    assert len(approvals_in(await events(setup.store, key))) == 1


@pytest.mark.parametrize("cancel", ["forward", "finish"])
async def test_a_client_that_cancels_while_the_question_is_open(setup: Setup, cancel: str) -> None:
    """2025-era client. ``forward``: the question is dropped and the key released (nothing was
    sent). ``finish``: the call stays, as one already running would; approved, it runs and
    stores its result, which the retry gets."""
    setup.manifest(tools={"create_invoice": {"approve": True, "cancel": cancel}})
    person = Person([yes()], hold=True)
    key = new_key()
    async with gateway(setup, mode="legacy", person=person) as gw:
        async with anyio.create_task_group() as tg:
            tg.start_soon(gw.client.call_tool, "create_invoice", invoice(key))
            await person.asked()
            tg.cancel_scope.cancel()
        if cancel == "forward":
            await poll(lambda: _released(setup, key))
            assert await outcomes(setup, key) == ["cancelled"]
            person.release.set()
            retry = await gw.client.call_tool("create_invoice", invoice(key))
            assert outcome(retry) == "executed" and len(person.questions) == 2
        else:
            person.release.set()
            await wait_for(lambda: len(setup.executions("create_invoice")) == 1, timeout=WAIT)
            await poll(lambda: _completed(setup, key))
            retry = await gw.client.call_tool("create_invoice", invoice(key))
            assert outcome(retry) == "replayed" and len(person.questions) == 1
    assert len(setup.executions("create_invoice")) == 1


async def _released(setup: Setup, key: str) -> bool:
    return await record(setup.store, key) is None and bool(await outcomes(setup, key))


async def _completed(setup: Setup, key: str) -> bool:
    row = await record(setup.store, key)
    return row is not None and row["state"] == "completed"


# ---- over HTTP, as a principal --------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_over_http_the_principal_who_approved_is_in_the_audit(setup: Setup, mode: str) -> None:
    setup.manifest(tools=APPROVE_ALL)
    person = Person([yes()])
    key = new_key()
    async with http_gateway(setup) as running:
        async with over_http(running, "alice", mode, elicitation_callback=person) as client:
            first = await client.call_tool("create_invoice", invoice(key))
            retry = await client.call_tool("create_invoice", invoice(key))
            story = await read_json(client, f"audit://keys/{key}")
        async with over_http(running, "bob", mode, elicitation_callback=Person([no()])) as client:
            bobs = await client.call_tool("create_invoice", invoice(key))  # another principal's key
    assert (outcome(first), outcome(retry)) == ("executed", "replayed")
    assert error_code(bobs) == "approval_declined"
    assert len(person.questions) == 1 and len(setup.executions("create_invoice")) == 1
    (approved,) = [e for e in story["events"] if e["outcome"] == "approved"]
    assert approved["detail"]["decided_by"] == "alice"
