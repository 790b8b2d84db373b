"""Issue 8, item 15: a "lost the lease" warning means something; a normal run has none.

With ``--lease-ttl 2`` leases are renewed every two thirds of a second (a call has 1.5 s from
its claim to its send: a loaded machine never makes a normal run refuse one). Many quick calls (each held
for a few milliseconds, so renewals race their completions) run alongside one call that spans
several renewals (gated: its gate opens once the store shows its lease renewed several times).
Nothing was lost, so the gateway's log has no line about a lost lease.
"""

from __future__ import annotations

from typing import Any

import anyio

from tests.never_twice.kit import WAIT, gateway, record
from tests.support import Setup, new_key, outcome, wait_for

RENEWALS = 9  # about six seconds of renewals at --lease-ttl 2
QUICK_CALLS = 20
WORKERS = 4


async def test_a_normal_run_logs_no_lost_lease(setup: Setup) -> None:
    setup.manifest()
    gate, key = setup.tmp / "gate", new_key()
    long_args = {"label": "long", "gate_file": str(gate), "idempotency_key": key}
    answers: list[Any] = []
    answers_quick: list[Any] = []
    leases: set[int] = set()
    async with gateway(setup, "--lease-ttl", "2") as gw:
        with anyio.fail_after(WAIT * 3):
            async with anyio.create_task_group() as tg:

                async def long_call() -> None:
                    answers.append(await gw.client.call_tool("slow_op", long_args))

                async def quick_calls(worker: int) -> None:
                    n = 0
                    while not answers:
                        args = {"customer": f"w{worker}-{n}", "amount": 1, "idempotency_key": new_key()}
                        answers_quick.append(await gw.client.call_tool("create_invoice", args))
                        n += 1

                tg.start_soon(long_call)
                await wait_for(lambda: len(setup.executions("slow_op")) == 1)
                for worker in range(WORKERS):
                    tg.start_soon(quick_calls, worker)
                # Both counted, not timed: a slow machine makes fewer quick calls per renewal.
                while len(leases) < RENEWALS or len(answers_quick) <= QUICK_CALLS:
                    held = await record(setup.store, key)
                    assert held is not None and held["lease_expires_at"] is not None
                    leases.add(held["lease_expires_at"])
                    await anyio.sleep(0.05)
                gate.touch()
        log = gw.log_text()
    assert outcome(answers[0]) == "executed"
    assert {outcome(a) for a in answers_quick} == {"executed"}
    assert len(answers_quick) > QUICK_CALLS
    lost = [line for line in log.splitlines() if "lost the lease" in line]
    assert lost == [], "\n".join(lost)
