"""Issue 8, items 1-2: retention never makes a call that may have run executable again.

- A live lease is never taken over, whatever the retention says; and the loader refuses a
  retention shorter than the tool's timeout plus the lease (``check`` and ``serve``, exit 1).
- An unknown key does not expire: neither the end of its retention nor ``purge`` lets a retry
  run it again; ``audit://keys/{key}`` shows it with no expiry.

Retention is made to end by moving the record's ``expires_at`` (integer microseconds since the
epoch) into the past in the store itself, which is what the passing of time does to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.never_twice.kit import (
    WAIT,
    launcher_manifest,
    now_us,
    record,
    sql,
    sqlite_path,
    starts,
)
from tests.support import REPO, Setup, error_code, new_key, resource_text, wait_for


async def _run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(WAIT):
        return await anyio.run_process(
            [sys.executable, "-m", "gateway", *argv], check=False, cwd=str(REPO), stdin=subprocess.DEVNULL
        )


async def _retention_ends(store: str, key: str) -> None:
    await sql(
        store,
        "UPDATE idempotency_records SET expires_at = :past WHERE key = :k",
        {"past": now_us() - 1_000_000, "k": key},
    )


# ---- the loader's rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "defaults", "tools", "named"),
    [
        ({"timeout": "30s"}, {}, {"slow_op": {"retention": "5s"}}, "payments.toml: tools.slow_op.retention"),
        ({"timeout": "15s"}, {"retention": "20s"}, {}, "payments.toml: defaults.retention"),
    ],
)
async def test_check_refuses_a_retention_shorter_than_timeout_plus_lease(
    tmp_path: Path,
    server: dict[str, str],
    defaults: dict[str, str],
    tools: dict[str, dict[str, str]],
    named: str,
) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest(server=server, defaults=defaults, tools=tools)
    done = await _run("check", "--manifests", str(setup.manifests))
    assert done.returncode == 1, done.stdout.decode()
    assert named in done.stderr.decode()


async def test_serve_refuses_a_retention_shorter_than_timeout_plus_lease_before_starting_anything(
    tmp_path: Path,
) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    marker = tmp_path / "downstream-started"
    # 12 s covers timeout 1 s + the default lease 10 s, not timeout 1 s + a lease of 20 s.
    launcher_manifest(
        setup,
        marker=marker,
        block=tmp_path / "never",
        gate=tmp_path / "never",
        server={"timeout": "1s"},
        defaults={"retention": "12s"},
    )
    serve = ("serve", "--manifests", str(setup.manifests), "--store", setup.store)
    refused = await _run(*serve, "--lease-ttl", "20")
    assert refused.returncode == 1, refused.stderr.decode()
    assert "payments.toml: defaults.retention" in refused.stderr.decode()
    assert starts(marker) == 0  # no downstream started
    assert not sqlite_path(setup.store).exists()  # no store opened


# ---- a live lease, past its retention ---------------------------------------------------------------


async def test_a_live_lease_is_never_taken_over_when_its_retention_has_ended(setup: Setup) -> None:
    setup.manifest(tools={"slow_op": {"in_flight": "reject"}})
    gate = setup.tmp / "gate"
    key = new_key()
    args = {"label": "long", "gate_file": str(gate), "idempotency_key": key}
    answers: list[object] = []
    async with setup.client() as client:
        with anyio.fail_after(WAIT * 2):
            async with anyio.create_task_group() as tg:

                async def first() -> None:
                    answers.append(await client.call_tool("slow_op", args))

                tg.start_soon(first)
                await wait_for(lambda: len(setup.executions("slow_op")) == 1)
                await _retention_ends(setup.store, key)  # the call outlives its retention
                retry: list[object] = []

                async def again() -> None:
                    retry.append(await client.call_tool("slow_op", args))

                tg.start_soon(again)
                # Either the retry answers (as it must: in progress) or it ran the tool a second time.
                await wait_for(lambda: retry or len(setup.executions("slow_op")) > 1)
                gate.touch()
    assert len(setup.executions("slow_op")) == 1
    assert error_code(retry[0]) == "idempotency_key_in_progress"


# ---- an unknown key does not expire -----------------------------------------------------------------

# Deaf to the cancellation the timeout sends: the call the gateway gave up on is known to run.
UNKNOWN_SETUP = {"server": {"timeout": "1s"}, "defaults": {"retention": "12s"}, "deaf": True}


async def test_an_unknown_key_never_runs_again_after_retention_or_purge(setup: Setup) -> None:
    setup.manifest(**UNKNOWN_SETUP)
    key = new_key()
    args = {"label": "lost", "gate_file": str(setup.tmp / "never"), "idempotency_key": key}
    async with setup.client("--lease-ttl", "2") as client:
        first = await client.call_tool("slow_op", args)
        await wait_for(lambda: len(setup.executions("slow_op")) == 1)
        retry = await client.call_tool("slow_op", args)
        assert (error_code(first), error_code(retry)) == ("outcome_unknown", "outcome_unknown")
        await _retention_ends(setup.store, key)
        after_retention = await client.call_tool("slow_op", args)
        runs_after_retention = len(setup.executions("slow_op"))
        purged = await _run("purge", "--store", setup.store)
        after_purge_record = await record(setup.store, key)
        after_purge = await client.call_tool("slow_op", args)
    assert runs_after_retention == 1, "the retry after retention ran the tool again"
    assert error_code(after_retention) == "outcome_unknown"
    assert purged.returncode == 0, purged.stderr.decode()
    assert after_purge_record is not None, "purge deleted an unknown key"
    assert after_purge_record["state"] == "unknown"
    assert error_code(after_purge) == "outcome_unknown"
    assert len(setup.executions("slow_op")) == 1


async def test_an_unknown_key_reads_as_never_expiring(setup: Setup) -> None:
    setup.manifest(**UNKNOWN_SETUP)
    key = new_key()
    args = {"label": "lost", "gate_file": str(setup.tmp / "never"), "idempotency_key": key}
    async with setup.client("--lease-ttl", "2") as client:
        first = await client.call_tool("slow_op", args)
        read = await client.read_resource(f"audit://keys/{key}")
    assert error_code(first) == "outcome_unknown"
    body = json.loads(resource_text(read))
    assert body["record"]["state"] == "unknown"
    assert body["record"]["expires_at"] is None
