"""Issue 8, item 4: the claim is on stable storage before the call goes downstream (SQLite).

The gateway runs under ``strace -f -y``; the trace shows, in order, the claim written to the
store's ``-wal`` file, an ``fsync``/``fdatasync`` of that file, and only then the ``tools/call``
request written to the downstream's stdin pipe (found among the child's open pipes, by the
``tools/call`` text and the call's unique label). Without that sync a power loss after sending
can erase the claim, and the retry runs the tool a second time.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.never_twice.kit import children, gateway, parse_strace, pipes_of, sqlite_path
from tests.support import Setup, new_key, outcome, system_tool

SYNCS = ("fsync", "fdatasync")
WRITES = ("write", "pwrite64", "pwritev", "pwritev2", "writev")


async def test_the_claim_is_fsynced_before_the_call_is_written_downstream(tmp_path: Path) -> None:
    strace = system_tool("strace")
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest()
    trace = tmp_path / "strace.txt"
    wrap = [
        strace,
        "-f",
        "-y",
        "-s",
        "4096",
        "-e",
        "trace=write,pwrite64,writev,fsync,fdatasync",
        "-o",
        str(trace),
    ]
    label = f"durable-{uuid.uuid4().hex}"
    async with gateway(setup, wrap=wrap) as gw:
        await gw.client.list_tools()
        (child,) = children(gw.pid)
        child_pipes = pipes_of(child)  # its stdin (and stdout): the gateway writes only to stdin
        result = await gw.client.call_tool(
            "create_invoice", {"customer": label, "amount": 7, "idempotency_key": new_key()}
        )
    assert outcome(result) == "executed"

    calls = parse_strace(trace.read_text())
    wal = str(sqlite_path(setup.store)) + "-wal"
    sends = [
        c
        for c in calls
        if c.pid != child
        and c.name in WRITES
        and c.path in child_pipes
        and "tools/call" in c.text
        and label in c.text
    ]
    assert len(sends) == 1, "the tools/call write to the downstream's stdin was not found in the trace"
    send = sends[0]
    claim_writes = [c for c in calls if c.path == wal and c.name in WRITES and c.index < send.index]
    assert claim_writes, "no write to the store's -wal file before the call was sent"
    claimed = claim_writes[-1]
    synced = [
        c
        for c in calls
        if c.path == wal and c.name in SYNCS and claimed.index < c.index and c.done < send.index
    ]
    assert synced, (
        f"the claim was written to {wal} (trace line {claimed.index + 1}) but not fsynced before the "
        f"tools/call went downstream (trace line {send.index + 1})"
    )
