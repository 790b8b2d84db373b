"""``idem-gateway demo`` as a user runs it: a subprocess, its JSON report checked for consistency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_demo(*extra: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--json", *extra],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_demo_shows_retries_deduplicated_and_the_ledger_agrees(tmp_path: Path) -> None:
    done = run_demo(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    per_intent = report["per_intent"]
    # Each intent ran exactly once downstream, and nothing else ran.
    assert [i["executions"] for i in per_intent] == [1] * report["intents"]
    assert report["executions"] == report["intents"] == len(per_intent)
    assert report["refused_payloads_executed"] == 0
    # Every kind of flakiness the script plays happened, as often as it plays it, and was handled:
    # two retries of acme and two of batch 7 (after the client gave up), one double submit, one
    # changed amount, a downstream timeout and its retry; acme, e-mail and globex ran at once.
    assert report["intents"] == 5 and report["calls"] == 13
    assert report["duplicates_prevented"] == 5
    assert report["conflicts"] == 1
    assert report["unknowns"] == 2
    assert report["client_timeouts"] == 1
    assert report["spend_prevented"] == 2.61  # as the README shows
    # Every call is accounted for by exactly one outcome.
    by = report["by_outcome"]
    assert by == {
        "client_gave_up": 1,
        "executed": 3,
        "idempotency_key_conflict": 1,
        "outcome_unknown": 2,
        "read_only": 1,
        "replayed": 5,
    }
    assert sum(by.values()) == report["calls"]
    assert by["replayed"] == report["duplicates_prevented"]
    # The gateway's own audit stats agree with what the agent saw.
    stats = report["gateway_stats"]
    assert stats["duplicates_prevented"] == report["duplicates_prevented"]
    assert stats["spend_prevented"] == report["spend_prevented"]
    assert report["no_duplicate_side_effects"] is True


def test_the_demo_writes_nothing_outside_its_temp_dir(tmp_path: Path) -> None:
    cwd, home, state, temp = (tmp_path / name for name in ("cwd", "home", "state", "temp"))
    for folder in (cwd, home, state, temp):
        folder.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(state), "TMPDIR": str(temp)}
    env.pop("IDEM_GATEWAY_STORE", None)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "demo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "verdict: no duplicate side effects" in done.stdout
    # Not the working directory, not the default store, and its temp dir is removed afterwards.
    assert [list(folder.iterdir()) for folder in (cwd, home, state, temp)] == [[], [], [], []]


def test_the_demo_runs_on_a_given_store_twice(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'kept.db'}"
    for _ in range(2):
        done = run_demo("--store", store, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["no_duplicate_side_effects"] is True
        assert report["gateway_stats"]["duplicates_prevented"] == report["duplicates_prevented"]
    assert (tmp_path / "kept.db").exists()
