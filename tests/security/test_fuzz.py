"""Fuzzing the gateway's inputs: JSON-RPC lines, keys and arguments, manifests.

The first two speak to a real gateway process over stdio (one process per test, every
example through it), with the example payments server behind it:

- any line (bytes, JSON, message-shaped JSON with wrong types) never crashes the gateway: a
  ping after each is answered, and everything it writes is a JSON-RPC message;
- any ``create_invoice`` call (keys of any type and content, in the argument, in ``_meta`` or
  both; arguments of any shape) gets an outcome or a refusal with a contract code, and a
  refused call never runs downstream: the example server's ledger grows by exactly one line
  for ``executed`` and by none otherwise; a malformed key is always refused.

The third loads generated manifests in-process: ``ManifestErrors`` or specs whose every
duration, cost and name is sane, never another exception.

``IDEM_FUZZ_EXAMPLES`` bounds the examples per test (default 40: CI stays quick); no example
database is written.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import ALL_ERRORS
from gateway.manifests import ManifestErrors, load_manifests
from tests.security.kit import RawGateway
from tests.support import Setup, executions

EXAMPLES = int(os.environ.get("IDEM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
CONTRACT_CODES = {error.code for error in ALL_ERRORS}
KEY = re.compile(r"[A-Za-z0-9_.:-]{16,255}")
META_KEY = "idem-gateway/idempotency-key"
OTHER_KEY = "0123456789abcdef-other"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    made.manifest()
    return made


# ---- strategies ------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
METHODS = [
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/cancelled",
    "notifications/initialized",
]
SAFE_TOOLS = ["create_invoice", "list_invoices", "get_invoice", "send_email", "native_charge", "whoami"]
message_shaped = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", ""]) | json_scalars,
        "id": st.integers() | st.text(max_size=20) | json_values,
        "method": st.sampled_from(METHODS) | st.text(max_size=20) | json_scalars,
        "params": st.fixed_dictionaries(
            {},
            optional={
                "name": st.sampled_from(SAFE_TOOLS) | st.text(max_size=20),
                "arguments": json_values,
                "uri": st.text(max_size=40) | st.just("audit://keys/\x00"),
                "_meta": json_values,
            },
        )
        | json_values,
        "result": json_values,
        "error": json_values,
    },
)
lines = (
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" "))
    | json_values.map(lambda v: json.dumps(v).encode())
    | message_shaped.map(lambda m: json.dumps(m).encode())
    | st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth)
)


def _probe(gateway: RawGateway) -> None:
    """Ping with a fresh id; every line before its reply must be a JSON-RPC message."""
    probe = f"probe-{uuid.uuid4()}"
    gateway.send_json({"jsonrpc": "2.0", "id": probe, "method": "ping"})
    for _ in range(100):
        message = gateway.read_message()
        assert message.get("jsonrpc") == "2.0", message
        assert {"result", "error", "method"} & set(message), message
        if message.get("id") == probe:
            assert message.get("result") == {}, message
            return
    raise AssertionError("no answer to the probe among 100 messages")


def test_any_line_never_crashes_the_gateway(setup: Setup) -> None:
    with RawGateway(setup, "--rate-limit", "off") as gateway:
        gateway.handshake()

        @FUZZ
        @given(line=lines)
        def send_one(line: bytes) -> None:
            gateway.send(line + b"\n")
            _probe(gateway)

        send_one()
        assert gateway.process.poll() is None
    assert "Traceback" not in gateway.log.read_text()


keys = (
    st.uuids().map(str)
    | st.from_regex(KEY, fullmatch=True)
    | st.text(max_size=300)
    | st.text(alphabet=st.characters(codec="utf-8"), min_size=16, max_size=20).map(lambda k: k + "\n")
    | st.sampled_from(["\x00" * 20, "k" * 256, "k" * 15, " " + "k" * 20])
    | st.integers()
    | st.none()
    | json_values
)
arguments = st.fixed_dictionaries(
    {},
    optional={
        "customer": st.text(max_size=30) | json_scalars,
        "amount": st.integers(-(10**30), 10**30)
        | st.floats(allow_nan=False, allow_infinity=False)
        | json_scalars,
        "currency": st.text(max_size=5),
        "trace_id": st.text(max_size=20) | st.none(),
        "card_number": st.text(max_size=20),
        "unexpected": json_values,
    },
)


def _expected_key_refusal(key: Any, where: str) -> str | None:
    """What the contract says about the key alone (None: the key decides nothing)."""
    in_argument = key if where in ("argument", "both", "both-differ") else None  # null = absent
    in_meta = key if where in ("meta", "both") else (OTHER_KEY if where == "both-differ" else None)
    if in_argument is None and in_meta is None:
        return "idempotency_key_missing"
    if in_argument is not None and in_meta is not None and in_argument != in_meta:
        return "idempotency_key_invalid"
    present = in_argument if in_argument is not None else in_meta
    if not (isinstance(present, str) and KEY.fullmatch(present)):
        return "idempotency_key_invalid"
    return None


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_any_key_and_arguments_get_a_contract_code_and_a_refusal_never_runs(setup: Setup) -> None:
    with RawGateway(setup, "--rate-limit", "off") as gateway:
        gateway.handshake()

        @FUZZ
        @given(
            args=arguments,
            key=keys,
            where=st.sampled_from(["argument", "meta", "both", "both-differ", "none"]),
        )
        def call_one(args: dict[str, Any], key: Any, where: str) -> None:
            call = dict(args)
            meta: dict[str, Any] | None = None
            if where in ("argument", "both", "both-differ"):
                call["idempotency_key"] = key
            if where in ("meta", "both"):
                meta = {META_KEY: key}
            if where == "both-differ":
                meta = {META_KEY: OTHER_KEY}
            before = len(executions(setup.ledger, "create_invoice"))
            reply = gateway.call_tool("create_invoice", call, meta=meta)
            ran = len(executions(setup.ledger, "create_invoice")) - before
            if "error" in reply:  # a JSON-RPC error: the request itself was malformed
                assert reply["error"]["code"] in (-32602, -32600), reply
                assert ran == 0
                return
            result = reply["result"]
            meta_out = result.get("_meta") or {}
            error = meta_out.get("idem-gateway/error")
            if error is not None:
                assert error["code"] in CONTRACT_CODES, error
                assert isinstance(error["http_status"], int) and error["message"]
                assert result["isError"] is True and ran == 0, (error, ran)
            else:
                assert meta_out.get("idem-gateway/outcome") in ("executed", "replayed"), result
                assert ran == (1 if meta_out["idem-gateway/outcome"] == "executed" else 0), (result, ran)
            expected = _expected_key_refusal(key, where)
            if expected is not None:
                assert error is not None and error["code"] == expected, (key, where, error)

        call_one()
        assert gateway.alive()
    assert "Traceback" not in gateway.log.read_text()


# ---- manifests -------------------------------------------------------------------------------------

durations = (
    st.from_regex(r"[0-9]{1,25}(ms|s|m|h|d)", fullmatch=True)
    | st.integers()
    | st.text(max_size=10)
    | st.floats()
)
costs = st.floats() | st.integers() | st.text(max_size=5) | st.booleans()
tool_names = st.text(max_size=40) | st.sampled_from(["create_invoice", " ", "a\x1bb", "t" * 200, ""])
policy = st.fixed_dictionaries(
    {},
    optional={
        "side_effects": st.sampled_from(["auto", True, False, "yes", 1]),
        "retention": durations,
        "wait": durations,
        "cost": costs,
        "in_flight": st.sampled_from(["wait", "reject", "maybe"]),
        "forward_key": st.text(max_size=30) | st.sampled_from(["header:Idem Key", "meta:k", "argument:a"]),
        "redact": st.lists(st.text(max_size=10), max_size=3) | json_scalars,
        "key_from": st.text(max_size=10) | json_scalars,
    },
)
manifests = st.fixed_dictionaries(
    {
        "server": st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-z0-9_-]{1,10}", fullmatch=True) | st.text(max_size=70)},
            optional={
                "transport": st.sampled_from(["stdio", "http", "carrier-pigeon"]),
                "command": st.sampled_from(["python", "${HOME}/x", "${UNSET_VAR}"]) | st.text(max_size=20),
                "args": st.lists(st.text(max_size=20), max_size=3) | json_scalars,
                "url": st.sampled_from(["http://127.0.0.1:1/mcp", "http://${H}/mcp", "http://[::1"])
                | st.text(max_size=20),
                "headers": st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=2),
                "timeout": durations,
                "tool_prefix": st.text(max_size=70),
            },
        )
    },
    optional={"defaults": policy, "tools": st.dictionaries(tool_names, policy, max_size=3)},
)


def _sane(tmp: Path) -> None:
    from gateway.manifests.loader import MAX_COST, MAX_DURATION

    try:
        specs = load_manifests(tmp, {"HOME": "/home/x", "H": "bad host"})
    except ManifestErrors as errors:
        assert errors.errors and all(str(e) for e in errors.errors)
        return
    now = datetime.now(UTC)
    for spec in specs:
        for p in (spec.defaults, *spec.tools.values()):
            for seconds in (p.retention, p.wait):
                assert math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION
            assert now + timedelta(seconds=p.retention) > now  # never overflows
            if p.side_effects is not False:  # a read-only tool keeps no record
                assert p.retention >= spec.timeout
            assert p.cost is None or (math.isfinite(p.cost) and 0 <= p.cost <= MAX_COST)
        assert 0 < spec.timeout <= MAX_DURATION
        for name in spec.tools:
            assert name and name == name.strip() and name.isprintable() and len(name) <= 128


@FUZZ
@given(manifest=manifests)
def test_any_manifest_loads_sane_or_fails_with_manifest_errors(
    tmp_path_factory: Any, manifest: dict[str, Any]
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "p.json").write_text(json.dumps(manifest))
    _sane(tmp)


@FUZZ
@given(text=st.text(max_size=400))
def test_any_toml_text_loads_sane_or_fails_with_manifest_errors(tmp_path_factory: Any, text: str) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "p.toml").write_text(
        "[server]\nname = 'p'\ncommand = 'python'\n" + text, encoding="utf-8", errors="surrogatepass"
    )
    _sane(tmp)
