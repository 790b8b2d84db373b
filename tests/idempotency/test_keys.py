"""Keys are found, checked and forwarded before any claim."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import IdempotencyKeyInvalid, IdempotencyKeyMissing
from gateway.idempotency.keys import META_KEY, extract_key
from gateway.manifests.models import ForwardKey, ToolPolicy

KEY = "7b0c1f6e-2d1a-4a59-9d7e-0c2b8f3e4a11"


def test_key_from_argument_is_stripped_before_forwarding() -> None:
    call = extract_key({"amount": 5, "idempotency_key": KEY}, None, ToolPolicy(), native=False)
    assert call.key == KEY
    assert call.forward_arguments == {"amount": 5}
    assert call.fingerprint_arguments == {"amount": 5}
    assert call.forward_meta is None and call.forward_headers is None


def test_key_from_meta() -> None:
    call = extract_key({"amount": 5}, {META_KEY: KEY}, ToolPolicy(), native=False)
    assert call.key == KEY
    assert call.forward_arguments == {"amount": 5}


def test_same_key_in_argument_and_meta_is_fine() -> None:
    call = extract_key({"idempotency_key": KEY}, {META_KEY: KEY}, ToolPolicy(), native=False)
    assert call.key == KEY


def test_argument_and_meta_disagreeing_is_invalid() -> None:
    with pytest.raises(IdempotencyKeyInvalid):
        extract_key({"idempotency_key": KEY}, {META_KEY: KEY + "x"}, ToolPolicy(), native=False)


def test_missing_key() -> None:
    with pytest.raises(IdempotencyKeyMissing) as info:
        extract_key({"amount": 5}, {"other": 1}, ToolPolicy(), native=False)
    assert info.value.http_status == 400


@pytest.mark.parametrize(
    "bad",
    [
        "short-key",
        "x" * 256,
        "has space in it!!!!",
        "ünïcode-key-0000000",
        12345678901234567890,
        None,
        ["a" * 20],
    ],
)
def test_malformed_keys_are_invalid(bad: Any) -> None:
    with pytest.raises((IdempotencyKeyInvalid, IdempotencyKeyMissing)) as info:
        extract_key({"idempotency_key": bad}, None, ToolPolicy(), native=False)
    # None is simply absent; everything else present but bad is invalid.
    assert isinstance(info.value, IdempotencyKeyMissing if bad is None else IdempotencyKeyInvalid)


def test_boundary_lengths() -> None:
    assert extract_key({"idempotency_key": "a" * 16}, None, ToolPolicy(), native=False).key == "a" * 16
    assert extract_key({"idempotency_key": "a" * 255}, None, ToolPolicy(), native=False).key == "a" * 255


def test_native_tool_keeps_its_key_argument() -> None:
    call = extract_key({"amount": 5, "idempotency_key": KEY}, None, ToolPolicy(), native=True)
    assert call.forward_arguments == {"amount": 5, "idempotency_key": KEY}
    assert call.fingerprint_arguments == {"amount": 5}


def test_native_tool_gets_a_meta_key_as_its_argument() -> None:
    call = extract_key({"amount": 5}, {META_KEY: KEY}, ToolPolicy(), native=True)
    assert call.forward_arguments == {"amount": 5, "idempotency_key": KEY}


@pytest.mark.parametrize(
    ("forward", "where"),
    [
        (ForwardKey("argument", "request_id"), "arguments"),
        (ForwardKey("meta", "com.example/idem"), "meta"),
        (ForwardKey("header", "Idempotency-Key"), "headers"),
    ],
)
def test_forward_key_places_the_key(forward: ForwardKey, where: str) -> None:
    call = extract_key({"idempotency_key": KEY}, None, ToolPolicy(forward_key=forward), native=False)
    if where == "arguments":
        assert call.forward_arguments == {"request_id": KEY}
    elif where == "meta":
        assert call.forward_meta == {"com.example/idem": KEY}
    else:
        assert call.forward_headers == {"Idempotency-Key": KEY}


def test_key_from_argument_stays_in_the_fingerprint() -> None:
    policy = ToolPolicy(key_from="message_id")
    call = extract_key({"message_id": "m-42", "body": "x"}, None, policy, native=False)
    assert call.key == "m-42"
    assert call.fingerprint_arguments == {"message_id": "m-42", "body": "x"}
    assert call.forward_arguments == {"message_id": "m-42", "body": "x"}


def test_key_from_accepts_integer_message_ids_and_refuses_missing_ones() -> None:
    policy = ToolPolicy(key_from="message_id")
    assert extract_key({"message_id": 42}, None, policy, native=False).key == "42"
    with pytest.raises(IdempotencyKeyMissing):
        extract_key({"body": "x"}, None, policy, native=False)
    with pytest.raises(IdempotencyKeyInvalid):
        extract_key({"message_id": "has spaces"}, None, policy, native=False)


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t", "\x00"])
def test_a_key_with_a_trailing_newline_or_space_is_invalid_not_a_second_key(suffix: str) -> None:
    with pytest.raises(IdempotencyKeyInvalid):
        extract_key({"idempotency_key": KEY + suffix}, None, ToolPolicy(), native=False)
    with pytest.raises(IdempotencyKeyInvalid):
        extract_key({}, {META_KEY: KEY + suffix}, ToolPolicy(), native=False)
    with pytest.raises(IdempotencyKeyInvalid):
        extract_key({"message_id": "m-1" + suffix}, None, ToolPolicy(key_from="message_id"), native=False)


KEY_ALPHABET = "ABCXYZabcxyz0189_.:-"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=KEY_ALPHABET, min_size=16, max_size=255))
def test_every_key_of_the_alphabet_and_length_is_accepted_as_itself(key: str) -> None:
    assert extract_key({"idempotency_key": key}, None, ToolPolicy(), native=False).key == key


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=300))
def test_a_key_is_accepted_exactly_when_it_is_16_to_255_characters_of_the_alphabet(key: str) -> None:
    valid = 16 <= len(key) <= 255 and all(c.isascii() and (c.isalnum() or c in "_.:-") for c in key)
    if valid:
        assert extract_key({"idempotency_key": key}, None, ToolPolicy(), native=False).key == key
    else:
        with pytest.raises(IdempotencyKeyInvalid):
            extract_key({"idempotency_key": key}, None, ToolPolicy(), native=False)


def test_a_forwarded_key_is_scoped_to_the_principal_wherever_it_goes() -> None:
    from gateway.idempotency.fingerprint import Fingerprinter

    fp = Fingerprinter(b"s" * 32)
    for policy, native in (
        (ToolPolicy(forward_key=ForwardKey("header", "Idempotency-Key")), False),
        (ToolPolicy(forward_key=ForwardKey("meta", "io.example/key")), False),
        (ToolPolicy(forward_key=ForwardKey("argument", "request_id")), False),
        (ToolPolicy(), True),
    ):
        seen = []
        for principal in ("alice", "bob"):
            call = extract_key(
                {"idempotency_key": KEY},
                None,
                policy,
                native=native,
                forward_as=partial(fp.forwarded_key, principal),
            )
            assert call.key == KEY  # the gateway's own key is the client's
            sent = (call.forward_headers or {}) | (call.forward_meta or {}) | call.forward_arguments
            seen.append(next(v for v in sent.values() if v != KEY and len(str(v)) == 64))
        assert seen[0] != seen[1]  # two principals' same key never meet at the downstream
