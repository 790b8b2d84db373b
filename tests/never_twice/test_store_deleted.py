"""Issue 8, item 14: a SQLite store deleted under a running gateway fails closed.

Deleting the file (and its ``-wal``/``-shm``) leaves the gateway writing to an unlinked file:
every claim it makes is lost the moment it restarts, so every key would run again. The next
keyed call must be ``store_unavailable``, and nothing runs.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from tests.never_twice.kit import gateway, sqlite_path
from tests.support import Setup, error_code, new_key, outcome


async def test_a_deleted_store_file_is_store_unavailable_and_nothing_runs(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest()
    db = sqlite_path(setup.store)
    async with gateway(setup) as gw:
        before = await gw.client.call_tool(
            "create_invoice", {"customer": "before", "amount": 5, "idempotency_key": new_key()}
        )
        for suffix in ("", "-wal", "-shm"):
            await anyio.Path(f"{db}{suffix}").unlink(missing_ok=True)
        after = await gw.client.call_tool(
            "create_invoice", {"customer": "after", "amount": 5, "idempotency_key": new_key()}
        )
    assert outcome(before) == "executed"
    assert error_code(after) == "store_unavailable"
    assert [x["args"]["customer"] for x in setup.executions("create_invoice")] == ["before"]
