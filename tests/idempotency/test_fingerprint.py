"""Fingerprints: canonical JSON per RFC 8785, so re-serialised retries are not conflicts."""

from __future__ import annotations

import pytest

from gateway.idempotency.fingerprint import canonical_json, fingerprint


def test_key_order_does_not_change_the_fingerprint() -> None:
    a = fingerprint("create_invoice", {"customer": "acme", "amount": 10, "meta": {"x": 1, "y": 2}})
    b = fingerprint("create_invoice", {"meta": {"y": 2, "x": 1}, "amount": 10, "customer": "acme"})
    assert a == b


def test_one_and_one_point_zero_are_the_same_number() -> None:
    assert fingerprint("t", {"amount": 1}) == fingerprint("t", {"amount": 1.0})
    assert fingerprint("t", {"amount": 1}) != fingerprint("t", {"amount": 1.5})


def test_string_escapes_do_not_matter_once_parsed() -> None:
    import json

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


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (-0.5, "-0.5"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (333333333.3333333, "333333333.3333333"),
        (0.0, "0"),
        (-0.0, "0"),
        (2**60, "1152921504606847000"),  # as JavaScript prints it
    ],
)
def test_numbers_serialise_as_ecmascript_does(value: float, expected: str) -> None:
    assert canonical_json(value) == expected


def test_rfc8785_example_object() -> None:
    # RFC 8785 section 3.2.3: properties sorted by UTF-16 code units (the emoji's surrogates
    # sort before U+FB33 but after U+20AC).
    data = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = [k for k in __import__("json").loads(canonical_json(data))]
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_nan_is_refused() -> None:
    with pytest.raises(ValueError):
        canonical_json(float("nan"))
