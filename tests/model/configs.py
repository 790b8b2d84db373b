"""The bounded configurations the explorer runs, each aimed at some faults of the issue's list.

Every one has two gateways racing for one key unless it says otherwise, time that may run past
leases and (short) retentions, and ``expect``: what some schedule must show, so that a
configuration whose fault never bites (a budget too small, a bound too tight) fails instead of
passing vacuously. ``BIG`` raises the bounds (``IDEM_MODEL_BIG=1`` or ``--big``): minutes, not
seconds.
"""

from __future__ import annotations

from tests.model.world import Config

LATE = "complete:unknown->completed"  # a late result settled a key judged dead meanwhile
JUDGED_DEAD = "mark_unknown:in_progress->unknown"

CONFIGS: tuple[Config, ...] = (
    # Either gateway may crash at any point; time runs past leases and waits.
    Config(
        name="two_gateways_crash",
        crashes=1,
        ticks=3,
        expect=frozenset({"crash", JUDGED_DEAD, LATE, "answer:replayed", "answer:outcome_unknown"}),
    ),
    # A retention shorter than the call: the lease, not the retention, protects it.
    Config(
        name="retention_shorter_than_call",
        retention=1,
        ticks=3,
        expect=frozenset({"take_over:completed->in_progress", JUDGED_DEAD, LATE}),
    ),
    # The lease renewal loop racing completions, take-overs and a dead holder's judges.
    Config(
        name="lease_renewal",
        renewals=1,
        retention=1,
        ticks=2,
        answers=("result",),
        expect=frozenset({"renew:True", "renew:False", JUDGED_DEAD, LATE}),
    ),
    # The downstream dedupes the key itself: a dead holder's call is re-sent.
    Config(
        name="forwarded_key",
        forwards_key=True,
        crashes=1,
        ticks=2,
        expect=frozenset({"take_over:in_progress->in_progress", "take_over:unknown->in_progress", "crash"}),
    ),
    # The store refuses settling writes; retried in the background while leases run out.
    Config(
        name="store_stall",
        stalls=2,
        ticks=3,
        answers=("result",),
        expect=frozenset({"refused:complete", "retried:complete", LATE, "answer:store_unavailable"}),
    ),
    # The store commits a write but its answer is lost.
    Config(
        name="lost_store_answers",
        lost_acks=1,
        ticks=2,
        expect=frozenset(
            {"ack_lost:claim", "ack_lost:complete", "ack_lost:mark_unknown", "retried:complete"}
        ),
    ),
    # The store stays down longer than settle_for: the holder gives its result up.
    Config(
        name="outage_past_settle_for",
        stalls=3,
        settle_for=1,
        ticks=3,
        answers=("result",),
        expect=frozenset({"gave_up", "retried:complete"}),
    ),
    # An operator resolves the key, as failed or as completed, while the sweeper runs.
    Config(
        name="operator_failed",
        operator=("failed",),
        purges=1,
        retention=1,
        ticks=2,
        expect=frozenset({"resolve:unknown->none", "purge:completed->none"}),
    ),
    Config(
        name="operator_completed",
        operator=("completed",),
        purges=1,
        retention=1,
        ticks=2,
        expect=frozenset({"resolve:unknown->completed", "purge:completed->none"}),
    ),
    # Retention ends and the sweeper leaves tombstones (expired = "reject").
    Config(
        name="expiry_and_purge",
        expired="reject",
        retention=1,
        purges=2,
        ticks=3,
        answers=("result",),
        expect=frozenset({"purge:completed->expired", "answer:idempotency_key_expired"}),
    ),
    # The downstream is unreachable, refuses before executing, or fails (error results not
    # stored); clients cancel before or after sending (cancel = "forward").
    Config(
        name="not_executed",
        sends=("acts", "rejects", "fails", "unavailable"),
        store_errors=False,
        cancel="forward",
        cancels=1,
        ticks=1,
        expect=frozenset(
            {
                "answer:downstream_unavailable",
                "answer:rejected",
                "answer:cancelled",
                "release:in_progress->none",
                "cancel:before sending",
                "cancel:after sending",
                "sent:fails",
            }
        ),
    ),
    # Clients give up while their call waits, runs or is settled (cancel = "finish").
    Config(
        name="client_cancels",
        cancels=2,
        ticks=2,
        expect=frozenset({"answer:cancelled", "cancel:before sending", "cancel:after sending"}),
    ),
    # A duplicate is refused at once while the first call runs (in_flight = "reject").
    Config(
        name="in_flight_reject",
        in_flight="reject",
        crashes=1,
        ticks=2,
        expect=frozenset({"answer:idempotency_key_in_progress", JUDGED_DEAD}),
    ),
    # Three gateways whose clocks are corrected to within one second of each other.
    Config(
        name="skewed_clocks",
        callers=(0, 1, 2),
        skews=(-1, 0, 1),
        lease_ttl=3,
        ticks=2,
        answers=("result",),
        expect=frozenset({"judged dead by a clock ahead", LATE}),
    ),
)

BIG: tuple[Config, ...] = (
    Config(
        name="big_two_gateways",
        crashes=1,
        ticks=4,
        renewals=1,
        retention=2,
        expect=frozenset({"crash", LATE, "take_over:completed->in_progress", "renew:True", "renew:False"}),
    ),
    Config(
        name="big_stall_and_purge",
        crashes=1,
        ticks=4,
        stalls=1,
        purges=1,
        retention=2,
        expect=frozenset({"crash", LATE, "refused:complete", "purge:completed->none"}),
    ),
    Config(
        name="big_forwarded",
        forwards_key=True,
        crashes=1,
        ticks=3,
        renewals=1,
        retention=2,
        expect=frozenset({"take_over:in_progress->in_progress", "take_over:unknown->in_progress", "crash"}),
    ),
    Config(
        name="big_three_gateways",
        callers=(0, 1, 2),
        skews=(0, 0, 0),
        crashes=1,
        ticks=3,
        expect=frozenset({"crash", LATE, JUDGED_DEAD}),
    ),
    Config(
        name="big_operator",
        operator=("failed", "completed"),
        purges=1,
        ticks=3,
        retention=1,
        expect=frozenset({"resolve:unknown->none", "resolve:unknown->completed"}),
    ),
    Config(
        name="big_not_executed",
        sends=("acts", "rejects", "fails", "unavailable"),
        cancel="forward",
        cancels=2,
        crashes=1,
        ticks=2,
        expect=frozenset({"answer:downstream_unavailable", "answer:rejected", "answer:cancelled", "crash"}),
    ),
)


def configs(big: bool = False) -> tuple[Config, ...]:
    return CONFIGS + BIG if big else CONFIGS
