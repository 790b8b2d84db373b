"""``approve`` in manifests: the condition language (pure), the loader's errors, ``check``'s column,
and the refusal codes in the README's table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.errors import ALL_ERRORS
from gateway.manifests import ManifestError, ManifestErrors, load_manifests
from gateway.manifests.models import Condition
from gateway.server.approval import describe, needed
from tests.support import REPO, Setup

ABOVE_100 = Condition("amount", "above", 100)


@pytest.mark.parametrize(
    ("approve", "arguments", "asks"),
    [
        (False, {"amount": 10**9}, False),
        (True, {}, True),
        ((ABOVE_100,), {"amount": 100}, False),
        ((ABOVE_100,), {"amount": 100.5}, True),
        ((ABOVE_100,), {"amount": 10**30}, True),  # every digit counts
        ((ABOVE_100,), {}, False),  # absent: nothing to compare
        ((ABOVE_100,), {"amount": "1000"}, True),  # not a number: ask (the safe side)
        ((ABOVE_100,), {"amount": None}, True),
        ((ABOVE_100,), {"amount": True}, True),  # a boolean is not a number
        ((Condition("amount", "at_least", 100),), {"amount": 100}, True),
        ((Condition("amount", "at_least", 100),), {"amount": 99.99}, False),
        ((Condition("currency", "equals", "JPY"),), {"currency": "JPY"}, True),
        ((Condition("currency", "equals", "JPY"),), {"currency": "jpy"}, False),
        ((Condition("count", "equals", 1),), {"count": 1.0}, True),  # 1 and 1.0 are one JSON number
        ((Condition("count", "equals", 1),), {"count": True}, False),  # true is not 1
        ((Condition("urgent", "equals", True),), {"urgent": 1}, False),
        ((Condition("currency", "in", ["JPY", "KRW"]),), {"currency": "KRW"}, True),
        ((Condition("currency", "in", ["JPY", "KRW"]),), {"currency": "EUR"}, False),
        ((ABOVE_100, Condition("currency", "in", ["JPY"])), {"amount": 5, "currency": "JPY"}, True),  # any
        ((ABOVE_100, Condition("currency", "in", ["JPY"])), {"amount": 5, "currency": "EUR"}, False),
    ],
)
def test_which_calls_need_approval(approve: Any, arguments: dict[str, Any], asks: bool) -> None:
    assert needed(approve, arguments) is asks


def test_the_policy_reads_in_a_few_words() -> None:
    assert describe(False) == "-"
    assert describe(True) == "always"
    conditions = (
        ABOVE_100,
        Condition("n", "at_least", 2),
        Condition("c", "in", ["JPY"]),
        Condition("u", "equals", True),
    )
    assert describe(conditions) == 'amount > 100 | n >= 2 | c in ["JPY"] | u == true'


def _manifest(folder: Path, defaults: str = "", tool: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    server = '[server]\nname = "payments"\ncommand = "run"\n'
    text = f"{server}\n[defaults]\n{defaults}\n\n[tools.create_invoice]\n{tool}\n"
    path = folder / "payments.toml"
    path.write_text(text)
    return path


def test_approve_loads_as_a_boolean_or_conditions_and_a_tool_overrides_the_defaults(tmp_path: Path) -> None:
    _manifest(
        tmp_path,
        defaults='approve = true\napproval_timeout = "5m"',
        tool='approve = [{ argument = "amount", above = 100 }, '
        '{ argument = "currency", in = ["JPY", "KRW"] }]',
    )
    (spec,) = load_manifests(tmp_path, {})
    assert spec.defaults.approve is True and spec.defaults.approval_timeout == 300.0
    policy = spec.policy_for("create_invoice")
    assert policy.approve == (ABOVE_100, Condition("currency", "in", ["JPY", "KRW"]))
    assert policy.approval_timeout == 300.0  # inherited
    assert spec.policy_for("send_email").approve is True
    _manifest(tmp_path)
    (plain,) = load_manifests(tmp_path, {})
    assert plain.defaults.approve is False and plain.defaults.approval_timeout == 120.0


@pytest.mark.parametrize(
    ("tool", "path", "fragment"),
    [
        ("approve = []", "tools.create_invoice.approve", "must not be empty"),
        ('approve = "yes"', "tools.create_invoice.approve", "expected boolean or array"),
        ('approve = [{ argument = "amount" }]', "tools.create_invoice.approve[0]", "has none"),
        (
            'approve = [{ argument = "amount", above = 1, equals = 2 }]',
            "tools.create_invoice.approve[0]",
            "has 2 (above, equals)",
        ),
        ("approve = [{ above = 1 }]", "tools.create_invoice.approve[0].argument", "required"),
        (
            'approve = [{ argument = "amount", above = "100" }]',
            "tools.create_invoice.approve[0].above",
            "number",
        ),
        (
            'approve = [{ argument = "amount", below = 1 }]',
            "tools.create_invoice.approve[0].below",
            "unknown key",
        ),
        (
            'approve = [{ argument = "c", in = [] }]',
            "tools.create_invoice.approve[0].in",
            "must not be empty",
        ),
        (
            'approve = [{ argument = "idempotency_key", equals = "x" }]',
            "tools.create_invoice.approve[0].argument",
            "not an argument",
        ),
        ("side_effects = false\napprove = true", "tools.create_invoice.approve", "side_effects = false"),
        ('approval_timeout = "soon"', "tools.create_invoice.approval_timeout", "an integer and a unit"),
        ('approval_timeout = "0s"', "tools.create_invoice.approval_timeout", "greater than zero"),
    ],
)
def test_a_bad_approve_is_named_by_file_and_path(tmp_path: Path, tool: str, path: str, fragment: str) -> None:
    _manifest(tmp_path, tool=tool)
    with pytest.raises(ManifestErrors) as info:
        load_manifests(tmp_path, {})
    errors: list[ManifestError] = info.value.errors
    assert any(e.path == path and fragment in e.message for e in errors), [str(e) for e in errors]
    assert all(e.file.name == "payments.toml" for e in errors)


def test_a_read_only_tool_under_approving_defaults_is_fine(tmp_path: Path) -> None:
    _manifest(tmp_path, defaults="approve = true", tool="side_effects = false")
    (spec,) = load_manifests(tmp_path, {})
    assert spec.policy_for("create_invoice").side_effects is False


async def test_check_shows_the_approval_policy_of_each_tool(tmp_path: Path) -> None:
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    setup.manifest(
        defaults={"approve": True},
        tools={
            "create_invoice": {"approve": [{"argument": "amount", "above": 100}]},
            "send_email": {"approve": False},
        },
    )
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "gateway", "check", "--manifests", str(setup.manifests)],
            check=False,
            cwd=str(REPO),
            stdin=subprocess.DEVNULL,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert out.splitlines()[0].split()[-1] == "APPROVE"
    assert rows["create_invoice"].endswith("amount > 100")
    assert rows["native_charge"].endswith("always")
    assert rows["send_email"].split()[-1] == "-"
    assert rows["list_invoices"].split()[-1] == "-"  # read-only: never asked


def test_the_readme_table_lists_every_refusal_code_with_its_status() -> None:
    readme = (REPO / "README.md").read_text()
    table = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", readme, flags=re.MULTILINE))
    assert {error.code: str(error.http_status) for error in ALL_ERRORS} == table
