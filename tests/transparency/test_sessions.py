"""Downstream sessions: one per principal by default, so what one principal made in a stateful
server's session is not another's; the client's roots reach a server started without
directories; only the environment a manifest passes through reaches a server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError
from pydantic import FileUrl

from tests.http.kit import http_gateway
from tests.support import Setup, new_key, outcome
from tests.transparency.kit import (
    MODES,
    WAIT,
    everything_manifest,
    filesystem_server,
    manifest,
    over_http,
    text_of,
    through,
)

pytestmark = pytest.mark.node

DATA = "data:text/plain;base64,aGVsbG8="
SECRET_URI = "demo://resource/session/alice-only.gz"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifests.mkdir(parents=True)
    return made


@pytest.mark.parametrize("mode", MODES)
async def test_a_principal_does_not_see_what_another_made_in_its_session(setup: Setup, mode: str) -> None:
    everything_manifest(setup)
    async with (
        http_gateway(setup) as gateway,
        over_http(gateway, "alice", mode) as alice,
        over_http(gateway, "bob", mode) as bob,
    ):
        await alice.call_tool("gzip-file-as-resource", {"name": "alice-only.gz", "data": DATA})
        alice_sees = {str(r.uri) for r in (await alice.list_resources()).resources}
        bob_sees = {str(r.uri) for r in (await bob.list_resources()).resources}
        read = await alice.read_resource(SECRET_URI)
        with pytest.raises(MCPError):
            await bob.read_resource(SECRET_URI)
    assert SECRET_URI in alice_sees
    assert SECRET_URI not in bob_sees
    assert [str(c.uri) for c in read.contents] == [SECRET_URI]


async def test_a_shared_session_is_everybodys(setup: Setup) -> None:
    """``sessions = "shared"`` is the operator's choice for a server without per-client state."""
    everything_manifest(setup, sessions="shared")
    async with (
        http_gateway(setup) as gateway,
        over_http(gateway, "alice", "auto") as alice,
        over_http(gateway, "bob", "auto") as bob,
    ):
        await alice.call_tool("gzip-file-as-resource", {"name": "alice-only.gz", "data": DATA})
        read = await bob.read_resource(SECRET_URI)
    assert [str(c.uri) for c in read.contents] == [SECRET_URI]


async def test_a_filesystem_server_without_directories_serves_the_clients_roots(
    setup: Setup, tmp_path: Path
) -> None:
    """As Claude Code runs server-filesystem: no directories on its command line, the client's roots."""
    shared = tmp_path / "project"
    shared.mkdir()
    (shared / "notes.txt").write_text("from the root")
    entry = filesystem_server()
    manifest(
        setup.manifests, "files", {"command": "node", "args": [str(entry)]}, defaults={"side_effects": False}
    )
    asked = anyio.Event()

    async def roots(context: object) -> types.ListRootsResult:
        asked.set()
        return types.ListRootsResult(roots=[types.Root(uri=FileUrl(shared.as_uri()), name="project")])

    async with through(setup, "legacy", list_roots_callback=roots) as client:
        with anyio.fail_after(WAIT):
            await asked.wait()  # the server asks once the client has connected
            # ... and takes the answer in a moment; directly it races its first call the same way.
            while str(shared) not in text_of(await client.call_tool("list_allowed_directories", {})):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        read = await client.call_tool("read_text_file", {"path": str(shared / "notes.txt")})
    assert text_of(read) == "from the root"


async def test_only_the_environment_a_manifest_passes_reaches_a_server(setup: Setup) -> None:
    everything_manifest(setup, env_passthrough=["IDEM_TEST_PASSED", "IDEM_TEST_UNSET"])
    env = {"IDEM_TEST_PASSED": "passed-value", "IDEM_TEST_KEPT_BACK": "kept-value"}
    env_before = dict(os.environ)
    async with through(setup, "auto", env=env) as client:
        result = await client.call_tool("get-env", {})
    seen = json.loads(text_of(result))
    assert seen.get("IDEM_TEST_PASSED") is not None  # its value is a secret: masked wherever the gateway logs
    assert "IDEM_TEST_KEPT_BACK" not in seen and "IDEM_TEST_UNSET" not in seen
    assert dict(os.environ) == env_before


@pytest.mark.parametrize("mode", MODES)
async def test_concurrent_retries_on_a_new_principals_session_execute_once(setup: Setup, mode: str) -> None:
    """Bob's first calls start his session; five copies of one keyed call, sent at once, get one
    execution and four replays, whether or not they met in one open exchange."""
    everything_manifest(setup, tools={"get-sum": {"side_effects": True}})
    arguments = {"a": 2, "b": 3, "idempotency_key": new_key()}
    outcomes: list[str | None] = []
    async with http_gateway(setup) as gateway, over_http(gateway, "bob", mode) as bob:

        async def call() -> None:
            outcomes.append(outcome(await bob.call_tool("get-sum", arguments)))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(call)
    assert sorted(o or "" for o in outcomes) == ["executed"] + ["replayed"] * 4
