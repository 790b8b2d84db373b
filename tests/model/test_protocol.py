"""The claim protocol, checked exhaustively: every schedule of each bounded configuration.

The real ``Guard`` and the real ``decide`` run on ``MemoryStore`` (which passes the store
contract suite), stepped by the explorer one store operation, downstream answer, background
sleep or clock tick at a time (``tests/model/README.md``). Each configuration prints the size of
what it explored. ``IDEM_MODEL_BIG=1`` adds bigger bounds.

The explorer is only worth what it catches: each bug in ``broken`` is put back into the code for
one exploration, which must find it and print a counterexample that replays.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from tests.model import broken
from tests.model.configs import BIG, CONFIGS
from tests.model.explorer import explore, replay
from tests.model.world import Config

SELECTED = CONFIGS + (BIG if os.environ.get("IDEM_MODEL_BIG") else ())
BY_NAME = {c.name: c for c in CONFIGS}


@pytest.mark.parametrize("config", SELECTED, ids=lambda c: c.name)
def test_every_schedule_keeps_every_invariant(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    report = explore(config)
    with capsys.disabled():
        print(f"\n  model {report.line()}")
    assert not report.violations, "\n\n".join(v.report() for v in report.violations.values())
    assert report.schedules > 0
    missing = sorted(config.expect - report.seen)
    assert not missing, f"no schedule of {config.name} showed {missing}: its faults never bit"


# (bug put back, the configuration that exposes it, the invariant it breaks)
BROKEN = [
    ("decide_takes_over_a_live_call_past_its_retention", "retention_shorter_than_call", "at_most_once"),
    ("decide_takes_over_a_live_call_past_its_retention", "retention_shorter_than_call", "livelock"),
    ("decide_lets_an_unknown_key_expire", "retention_shorter_than_call", "unknown_stays"),
    ("purge_deletes_unknown_keys", "expiry_and_purge", "unknown_stays"),
    ("take_over_ignores_a_renewed_lease", "forwarded_key_renewed", "live_lease"),
    ("mark_unknown_ignores_a_renewed_lease", "lease_renewal", "live_lease"),
    ("complete_ignores_the_fence", "forwarded_key", "completed_kept"),
    ("a_late_result_is_thrown_away", "two_gateways_crash", "result_kept"),
    ("a_refused_settling_write_is_not_retried", "store_stall", "result_kept"),
    ("resolve_settles_whatever_row_is_there", "operator_failed", "completed_kept"),
    ("an_error_after_sending_releases_the_key", "two_gateways_crash", "answers"),
]
PATCHES: dict[str, Any] = {
    "decide_takes_over_a_live_call_past_its_retention": broken.DECIDE_TAKES_OVER_PAST_RETENTION,
    "decide_lets_an_unknown_key_expire": broken.DECIDE_UNKNOWN_EXPIRES,
    "purge_deletes_unknown_keys": broken.PURGE_DELETES_UNKNOWN,
    "take_over_ignores_a_renewed_lease": broken.TAKE_OVER_IGNORES_THE_LEASE,
    "mark_unknown_ignores_a_renewed_lease": broken.MARK_UNKNOWN_IGNORES_THE_LEASE,
    "complete_ignores_the_fence": broken.COMPLETE_IGNORES_THE_FENCE,
    "a_late_result_is_thrown_away": broken.LATE_RESULT_THROWN_AWAY,
    "a_refused_settling_write_is_not_retried": broken.SETTLING_NOT_RETRIED,
    "resolve_settles_whatever_row_is_there": broken.RESOLVE_UNFENCED,
    "an_error_after_sending_releases_the_key": broken.ERROR_AFTER_SEND_RELEASES,
}
EXTRA = {
    "forwarded_key_renewed": Config(
        name="forwarded_key_renewed", forwards_key=True, renewals=1, ticks=3, answers=("result",)
    ),
}


@pytest.mark.parametrize(("bug", "where", "kind"), BROKEN, ids=[f"{b}-{k}" for b, _, k in BROKEN])
def test_the_explorer_catches_a_bug_put_back(bug: str, where: str, kind: str) -> None:
    config = BY_NAME.get(where) or EXTRA[where]
    report = explore(config, patches=PATCHES[bug], stop_on=[kind])
    assert kind in report.violations, f"{bug} went unnoticed: {report.line()}"
    found = report.violations[kind]
    print(found.report())  # the counterexample (pytest -s, or shown when the test fails)
    violations, trace = replay(config, found.path, patches=PATCHES[bug])
    assert kind in {v.kind for v in violations}, "the counterexample does not replay"
    assert trace == found.trace[: len(trace)]
    clean, _ = replay(config, found.path)
    assert kind not in {v.kind for v in clean}, "the same schedule is fine without the bug"


def _small(config: Config, **bounds: Any) -> Config:
    return replace(config, **bounds)


SMALL = [
    _small(BY_NAME["two_gateways_crash"], ticks=1),
    _small(BY_NAME["forwarded_key"], ticks=1),
    _small(BY_NAME["lost_store_answers"], stalls=1, ticks=1),
    _small(BY_NAME["operator_failed"], ticks=1),
    _small(BY_NAME["not_executed"], ticks=0),
]


@pytest.mark.parametrize("config", SMALL, ids=lambda c: c.name)
def test_sleep_sets_skip_transitions_but_visit_every_state(config: Config) -> None:
    """Sleep sets are sound only if the footprints they rely on are: a search without them
    must reach exactly the same states, ends and outcomes."""
    full = explore(config, por=False)
    reduced = explore(config)
    assert (reduced.states, reduced.schedules, reduced.seen) == (full.states, full.schedules, full.seen)
    assert reduced.transitions < full.transitions


@pytest.mark.parametrize("config", SMALL[:3], ids=lambda c: c.name)
def test_interchangeable_callers_arriving_in_order_lose_no_outcome(config: Config) -> None:
    every_order = explore(replace(config, symmetric=False))
    in_order = explore(config)
    assert in_order.seen == every_order.seen
    assert in_order.states < every_order.states


def test_a_holder_never_sends_once_its_key_was_settled_without_it() -> None:
    """Found by this checker (see the report), fixed in the guard. A holder paused between its claim
    and its send outlives its lease; another gateway marks the key unknown; an operator, seeing
    nothing happened downstream, resolves it as failed, which releases the key; the holder wakes
    and sends anyway, on a lease its own clock says is over. A retry now executes a second time.
    The guard now refuses to send once its own lease has run out by its own clock, less the
    clock error it tolerates (``Guard._check_lease``)."""
    config = replace(BY_NAME["operator_failed"], strict_fencing=True)
    report = explore(config, stop_on=["at_most_once"])
    assert "at_most_once" not in report.violations, report.violations["at_most_once"].report()
