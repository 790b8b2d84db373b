"""The MCP conformance suite's server scenarios, run against a URL, parsed per scenario.

The suite is the npm package ``@modelcontextprotocol/conformance`` (its command ``conformance``,
run with Node 22). ``conformance server --url URL --suite all -o DIR`` runs every server scenario
one after the other, each with a fresh client connection, and writes one directory per scenario,
``DIR/server-<scenario>-<timestamp>/checks.json``: the list of checks, each with an ``id``, a
``status`` (``SUCCESS``, ``FAILURE``, ``WARNING``, ``INFO``) and an ``errorMessage``. A scenario
passes when none of its checks failed (the suite's own rule for its summary). A scenario that
crashed writes no file; the suite then prints ``✗ <scenario>`` in its summary, and here it counts
as failed with the suite's output as the reason.

Also here: the fixture server over HTTP, and a manifest that puts it behind the gateway.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from tests import node
from tests.support import REPO, toml_value

SUITE = "@modelcontextprotocol/conformance@0.1.16"
FIXTURE = REPO / "examples" / "everything_server.py"
RUN_TIMEOUT = 240.0  # the whole suite; a healthy run takes seconds, a hung request 60 s (the TS default)
START_TIMEOUT = 30.0

# The tools each tool-calling scenario calls (read from the suite's scenario sources, 0.1.16).
SCENARIO_TOOLS: dict[str, frozenset[str]] = {
    "tools-call-simple-text": frozenset({"test_simple_text"}),
    "tools-call-image": frozenset({"test_image_content"}),
    "tools-call-audio": frozenset({"test_audio_content"}),
    "tools-call-embedded-resource": frozenset({"test_embedded_resource"}),
    "tools-call-mixed-content": frozenset({"test_multiple_content_types"}),
    "tools-call-with-logging": frozenset({"test_tool_with_logging"}),
    "tools-call-error": frozenset({"test_error_handling"}),
    "tools-call-with-progress": frozenset({"test_tool_with_progress"}),
    "tools-call-sampling": frozenset({"test_sampling"}),
    "tools-call-elicitation": frozenset({"test_elicitation"}),
    "elicitation-sep1034-defaults": frozenset({"test_elicitation_sep1034_defaults"}),
    "elicitation-sep1330-enums": frozenset({"test_elicitation_sep1330_enums"}),
    "server-sse-polling": frozenset({"test_reconnection"}),
}


@dataclass(frozen=True)
class Scenario:
    """One scenario's outcome: its checks as the suite wrote them."""

    name: str
    checks: tuple[dict[str, Any], ...] = ()
    crash: str | None = None

    @property
    def passed(self) -> bool:
        return self.crash is None and not any(c.get("status") == "FAILURE" for c in self.checks)

    @property
    def warnings(self) -> int:
        return sum(c.get("status") == "WARNING" for c in self.checks)

    @property
    def reason(self) -> str:
        """Why it failed, in the suite's words (empty when it passed)."""
        if self.crash is not None:
            return self.crash
        failures = [c for c in self.checks if c.get("status") == "FAILURE"]
        return "; ".join(f"{c.get('id')}: {c.get('errorMessage') or c.get('description')}" for c in failures)


@dataclass
class Run:
    """Every scenario of one suite run against one URL."""

    url: str
    scenarios: dict[str, Scenario] = field(default_factory=dict)
    output: str = ""

    @property
    def passing(self) -> set[str]:
        return {name for name, s in self.scenarios.items() if s.passed}

    @property
    def failing(self) -> set[str]:
        return set(self.scenarios) - self.passing


def suite_command() -> tuple[Path, Path]:
    """(Node 22, the suite's script), installing both into the cache when missing."""
    return node.node22(), node.package_bin(SUITE, "conformance")


async def list_scenarios() -> list[str]:
    """The server scenario names the installed suite knows, in its order."""
    binary, script = suite_command()
    done = await node.run_node(binary, script, "list", "--server", timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return re.findall(r"^\s+- (\S+)", done.stdout.decode(), flags=re.MULTILINE)


async def run_suite(url: str, out: Path, *, timeout: float = RUN_TIMEOUT) -> Run:
    """Run every server scenario (``--suite all``, pending ones included) against ``url``."""
    names = await list_scenarios()
    binary, script = suite_command()
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    done = await node.run_node(
        binary, script, "server", "--url", url, "--suite", "all", "-o", str(out), timeout=timeout
    )
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    return collect(url, names, out, output)


def collect(url: str, names: list[str], out: Path, output: str) -> Run:
    """Read each scenario's ``checks.json`` from the suite's output directory."""
    run = Run(url, output=output)
    for name in names:
        found = sorted(out.glob(f"server-{name}-2*/checks.json"))
        if found:
            checks = tuple(json.loads(found[-1].read_text()))
            run.scenarios[name] = Scenario(name, checks)
        else:
            run.scenarios[name] = Scenario(name, crash=crash_reason(output, name))
    return run


def crash_reason(output: str, name: str) -> str:
    """The suite's own words for a scenario that wrote no checks (it threw, or never ran)."""
    marker = f"Failed to run scenario {name}:"
    at = output.find(marker)
    if at < 0:
        return f"the suite wrote no checks for {name}"
    return output[at + len(marker) :].strip().splitlines()[0][:300]


def table(columns: Mapping[str, Run]) -> str:
    """A text table: one row per scenario, one column per run (``pass``/``FAIL``)."""
    names = list(next(iter(columns.values())).scenarios)
    width = max(len(n) for n in names)
    header = "scenario".ljust(width) + "".join(f"  {title:>16}" for title in columns)
    rows = [header, "-" * len(header)]
    for name in names:
        cells = []
        for run in columns.values():
            scenario = run.scenarios.get(name)
            cells.append("-" if scenario is None else "pass" if scenario.passed else "FAIL")
        rows.append(name.ljust(width) + "".join(f"  {cell:>16}" for cell in cells))
    for title, run in columns.items():
        rows.append(f"{title}: {len(run.passing)}/{len(run.scenarios)} pass")
    return "\n".join(rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fixture:
    """``examples/everything_server.py --http PORT``, running."""

    process: Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@asynccontextmanager
async def fixture_over_http(log_dir: Path) -> AsyncIterator[Fixture]:
    """Start the fixture on a free port, wait until it accepts connections, stop it afterwards."""
    port = free_port()
    log = log_dir / f"everything-{port}.log"
    with log.open("wb") as errlog:
        process = await anyio.open_process(
            [sys.executable, str(FIXTURE), "--http", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=errlog,
            env=dict(os.environ),
        )
        try:
            await wait_listening(process, port, log)
            yield Fixture(process, port, log)
        finally:
            await stop(process)


async def wait_listening(process: Process, port: int, log: Path) -> None:
    with anyio.fail_after(START_TIMEOUT):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"the fixture exited early:\n{await anyio.Path(log).read_text()}")
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return


async def stop(process: Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        with anyio.fail_after(START_TIMEOUT):
            await process.wait()
    except TimeoutError:
        process.kill()
        raise


def fixture_manifest(folder: Path, *, side_effects: bool | str, name: str = "everything") -> Path:
    """A manifest that puts the fixture behind the gateway over stdio.

    ``side_effects = false`` declares every tool read-only (keys are out of the picture);
    ``"auto"`` keys the tools the fixture does not annotate ``readOnlyHint``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(
        "[server]\n"
        f"name = {toml_value(name)}\n"
        'transport = "stdio"\n'
        f"command = {toml_value(sys.executable)}\n"
        f"args = {toml_value([str(FIXTURE)])}\n"
        "\n[defaults]\n"
        f"side_effects = {toml_value(side_effects)}\n"
    )
    return path
