"""The state machine's decision, one row per state, lease, retention, payload and forwarding.

Each row is written out by hand: the table is the specification, ``decide`` is checked against
it (a generator that restated the rules would prove nothing). Issue 8's items 1 and 2 are rows
here: a live lease past its retention waits (never TAKE_OVER), and an UNKNOWN key past its
retention stays UNKNOWN (never executable again).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.idempotency.decide import Call, Verdict, decide
from gateway.store.records import Record, RecordState

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

# state        lease  retention  payload  forwards  →  verdict        (policy: wait / execute)
TABLE = """
in_progress    alive  live       same     no           wait
in_progress    alive  live       same     yes          wait
in_progress    alive  live       other    no           conflict
in_progress    alive  live       other    yes          conflict
in_progress    alive  over       same     no           wait
in_progress    alive  over       same     yes          wait
in_progress    alive  over       other    no           conflict
in_progress    alive  over       other    yes          conflict
in_progress    dead   live       same     no           mark_unknown
in_progress    dead   live       same     yes          resend
in_progress    dead   live       other    no           conflict
in_progress    dead   live       other    yes          conflict
in_progress    dead   over       same     no           mark_unknown
in_progress    dead   over       same     yes          resend
in_progress    dead   over       other    no           conflict
in_progress    dead   over       other    yes          conflict
unknown        none   live       same     no           unknown
unknown        none   live       same     yes          resend
unknown        none   live       other    no           conflict
unknown        none   live       other    yes          conflict
unknown        none   over       same     no           unknown
unknown        none   over       same     yes          resend
unknown        none   over       other    no           conflict
unknown        none   over       other    yes          conflict
completed      none   live       same     no           replay
completed      none   live       same     yes          replay
completed      none   live       other    no           conflict
completed      none   live       other    yes          conflict
completed      none   over       same     no           take_over
completed      none   over       same     yes          take_over
completed      none   over       other    no           take_over
completed      none   over       other    yes          take_over
expired        none   over       same     no           take_over
expired        none   over       other    yes          take_over
"""

# Rows whose verdict changes with the policy: (row, policy) → verdict.
POLICY_TABLE = """
in_progress    alive  live       same     no     in_flight=reject     in_progress
in_progress    alive  over       same     no     in_flight=reject     in_progress
in_progress    alive  live       same     no     wait_over            in_progress
in_progress    alive  live       other    no     in_flight=reject     conflict
in_progress    dead   live       same     no     in_flight=reject     mark_unknown
completed      none   over       same     no     expired=reject       expired
completed      none   over       other    no     expired=reject       expired
completed      none   live       same     no     expired=reject       replay
expired        none   over       same     no     expired=reject       expired
unknown        none   over       same     no     expired=reject       unknown
in_progress    alive  over       same     no     expired=reject       wait
"""


def record(state: str, lease: str, retention: str, payload: str) -> Record:
    return Record(
        principal="p",
        key="k" * 16,
        server="s",
        tool="tool" if payload != "other_tool" else "another",
        fingerprint="f" * 64 if payload == "same" else "0" * 64,
        state=RecordState(state),
        fence=7,
        lease_owner="owner",
        lease_expires_at={"alive": NOW + timedelta(seconds=1), "dead": NOW, "none": None}[lease],
        created_at=NOW - timedelta(hours=1),
        expires_at=NOW + timedelta(seconds=1) if retention == "live" else NOW,
    )


def rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.strip().splitlines()]


@pytest.mark.parametrize("row", rows(TABLE), ids=lambda r: "-".join(r))
def test_the_verdict_for_every_state(row: list[str]) -> None:
    state, lease, retention, payload, forwards, expected = row
    call = Call(tool="tool", fingerprint="f" * 64, forwards_key=forwards == "yes")

    assert decide(record(state, lease, retention, payload), call, NOW) is Verdict(expected)


@pytest.mark.parametrize("row", rows(POLICY_TABLE), ids=lambda r: "-".join(r))
def test_the_verdict_under_each_policy(row: list[str]) -> None:
    state, lease, retention, payload, forwards, policy, expected = row
    assert policy in {"in_flight=reject", "expired=reject", "wait_over"}, policy  # each one spelled out below
    call = Call(
        tool="tool",
        fingerprint="f" * 64,
        forwards_key=forwards == "yes",
        expired="reject" if policy == "expired=reject" else "execute",
        in_flight="reject" if policy == "in_flight=reject" else "wait",
        wait_over=policy == "wait_over",
    )

    assert decide(record(state, lease, retention, payload), call, NOW) is Verdict(expected)


def test_no_record_is_claimed() -> None:
    assert decide(None, Call(tool="tool", fingerprint="f" * 64), NOW) is Verdict.CLAIM


def test_another_tool_with_the_same_arguments_is_a_conflict() -> None:
    found = record("completed", "none", "live", "other_tool")
    found = Record(**{**{f: getattr(found, f) for f in found.__slots__}, "fingerprint": "f" * 64})

    assert decide(found, Call(tool="tool", fingerprint="f" * 64), NOW) is Verdict.CONFLICT


def test_a_lease_that_ends_exactly_now_is_dead() -> None:
    found = record("in_progress", "dead", "live", "same")
    assert found.lease_expires_at == NOW
    assert decide(found, Call(tool="tool", fingerprint="f" * 64), NOW) is Verdict.MARK_UNKNOWN


def test_only_claim_take_over_and_resend_may_run_the_call() -> None:
    assert {v for v in Verdict if v.runs} == {Verdict.CLAIM, Verdict.TAKE_OVER, Verdict.RESEND}
