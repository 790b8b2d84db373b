"""Fingerprints: keyed, canonical (RFC 8785 with exact integers), so a re-serialised retry is the
same call and a payload the downstream receives differently is another one."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.idempotency.fingerprint import Fingerprinter, canonical_json

KEY = b"k" * 32
fingerprint = Fingerprinter(KEY)


def test_key_order_does_not_change_the_fingerprint() -> None:
    a = fingerprint("create_invoice", {"customer": "acme", "amount": 10, "meta": {"x": 1, "y": 2}})
    b = fingerprint("create_invoice", {"meta": {"y": 2, "x": 1}, "amount": 10, "customer": "acme"})
    assert a == b


def test_one_and_one_point_zero_are_the_same_number() -> None:
    assert fingerprint("t", {"amount": 1}) == fingerprint("t", {"amount": 1.0})
    assert fingerprint("t", {"amount": 1}) != fingerprint("t", {"amount": 1.5})


def test_integers_past_two_to_the_53_keep_every_digit() -> None:
    # As doubles both are 9007199254740992; the downstream receives two different integers.
    assert fingerprint("t", {"amount": 9007199254740993}) != fingerprint("t", {"amount": 9007199254740992})
    assert canonical_json(9007199254740993) == "9007199254740993"
    assert canonical_json(-(10**30) - 1) == "-1000000000000000000000000000001"


def test_string_escapes_do_not_matter_once_parsed() -> None:
    escaped = json.loads('{"name": "caf\\u00e9 \\"x\\""}')
    plain = {"name": 'café "x"'}
    assert fingerprint("t", escaped) == fingerprint("t", plain)


def test_null_and_absent_are_different() -> None:
    assert fingerprint("t", {"a": 1, "b": None}) != fingerprint("t", {"a": 1})


def test_excluded_fields_never_change_the_fingerprint() -> None:
    a = fingerprint("t", {"amount": 5, "trace_id": "abc"}, exclude=["trace_id"])
    b = fingerprint("t", {"amount": 5, "trace_id": "zzz"}, exclude=["trace_id"])
    c = fingerprint("t", {"amount": 5}, exclude=["trace_id"])
    assert a == b == c


def test_the_tool_name_is_part_of_the_fingerprint() -> None:
    assert fingerprint("a", {"x": 1}) != fingerprint("b", {"x": 1})


def test_the_same_arguments_under_two_secrets_give_two_fingerprints() -> None:
    other = Fingerprinter(b"o" * 32)
    card = {"card_number": "4242424242424242"}
    assert fingerprint("charge", card) != other("charge", card)
    assert len(fingerprint("charge", card)) == 64


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        Fingerprinter(b"short")


# RFC 8785 appendix B: IEEE 754 doubles (hex) and the text JCS prescribes (checked against
# ECMAScript's Number.prototype.toString in Node).
RFC_8785_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("ieee", "expected"), RFC_8785_NUMBERS)
def test_numbers_serialise_as_rfc_8785_appendix_b_says(ieee: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(ieee))
    assert canonical_json(value) == expected


def test_rfc_8785_section_3_2_2_example_gives_the_rfcs_bytes() -> None:
    data = json.loads(
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], '
        '"string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", '
        '"literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(data) == expected


def test_rfc_8785_section_3_2_3_property_order_is_by_utf16_code_units() -> None:
    data = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With '
        'Diaeresis","\u20ac":"Euro Sign","\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter '
        'Dalet With Dagesh"}'
    )
    assert canonical_json(data) == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": bad})


# ---- properties -------------------------------------------------------------------------------

SAFE = 2**53
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    # Floats that are not integral beyond 2**53: there an integral double and the integer of the
    # same digits print alike by design (JCS), which is not what this property is about.
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer() or abs(f) <= SAFE)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=5)


def received(value: Any) -> Any:
    """What the downstream gets, as a comparable model: integers exact, an integral float within
    2**53 the integer it equals (1 vs 1.0), other floats themselves; objects unordered."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int):
        return ("number", value)
    if isinstance(value, float):
        return ("number", int(value)) if value.is_integer() and abs(value) <= SAFE else ("float", value)
    if isinstance(value, list):
        return ("array", tuple(received(v) for v in value))
    return ("object", frozenset((k, received(v)) for k, v in value.items()))


@settings(max_examples=300, deadline=None)
@given(arguments)
def test_the_same_payload_however_reserialised_has_the_same_fingerprint(args: dict[str, Any]) -> None:
    for text in (
        json.dumps(args),
        json.dumps(args, sort_keys=True, indent=2),
        json.dumps(dict(reversed(list(args.items()))), ensure_ascii=True, separators=(",", ":")),
    ):
        assert fingerprint("t", json.loads(text)) == fingerprint("t", args)


@settings(max_examples=500, deadline=None)
@given(arguments, arguments)
def test_payloads_the_downstream_receives_differently_never_share_a_fingerprint(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    if received(a) != received(b):
        assert fingerprint("t", a) != fingerprint("t", b)
    else:
        assert fingerprint("t", a) == fingerprint("t", b)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**40), max_value=10**40), st.integers(min_value=1, max_value=10**6))
def test_two_different_integers_never_share_a_fingerprint(n: int, delta: int) -> None:
    assert fingerprint("t", {"amount": n}) != fingerprint("t", {"amount": n + delta})
