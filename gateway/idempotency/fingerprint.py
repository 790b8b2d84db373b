"""Payload fingerprints: HMAC-SHA-256, under the store's secret, of canonical JSON.

Canonical JSON is RFC 8785 (JCS), with one deliberate difference: integers keep every digit.
JCS prints every number as an IEEE double would, so 9007199254740993 and 9007199254740992
print alike, yet a downstream receives two different integers; here they differ. Floats keep
JCS's ECMAScript form, so ``1`` and ``1.0`` (and every other re-serialisation of the same
number) still match. Key order and string escaping never matter; ``null`` and an absent field
do, as they can mean different things.

The hash is keyed (HMAC under a secret kept apart from the database, see ``gateway.secret``): a
fingerprint is shown in the audit trail next to redacted arguments, and a plain hash of a card
number with a known prefix can be brute-forced in seconds. The same arguments on two stores
give two different fingerprints.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any


def canonical_json(value: Any) -> str:
    """Serialise ``value`` per RFC 8785 (JCS), integers exact (see the module doc)."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


class Fingerprinter:
    """Fingerprints, and the keys forwarded downstream, under one store's secret."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a fingerprint key needs at least 16 bytes")
        self._key = key

    def __call__(self, tool: str, arguments: Mapping[str, Any], exclude: Iterable[str] = ()) -> str:
        """The hex HMAC of the canonical ``{"arguments": ..., "tool": ...}``, less ``exclude``."""
        dropped = set(exclude)
        kept = {k: v for k, v in arguments.items() if k not in dropped}
        payload = canonical_json({"tool": tool, "arguments": kept}).encode("utf-8")
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def forwarded_key(self, principal: str, key: str) -> str:
        """The key a downstream that dedupes (``forward_key``, native ``idempotency_key``) sees.

        Derived from the principal and the key: a downstream has one credential for every
        principal, so the raw key would let principal B, sending A's key with A's payload,
        receive A's result from the downstream's own dedupe. 64 hex characters: fits every
        key format a downstream may impose (Stripe's 255, the IETF draft's opaque string).
        """
        message = f"forwarded-key\x00{principal}\x00{key}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, int):
        out.append(str(value))  # every digit: the downstream receives this exact integer
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_key)):
            if not isinstance(key, str):
                raise TypeError(f"object keys must be strings, not {type(key).__name__}")
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON")


def _utf16_key(key: str) -> bytes:
    # RFC 8785 orders properties by their UTF-16 code units, not by code points.
    return key.encode("utf-16-be")


def _number(x: float) -> str:
    """ECMAScript Number.prototype.toString, which RFC 8785 prescribes."""
    if math.isnan(x) or math.isinf(x):
        raise ValueError("NaN and Infinity are not JSON")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    # repr gives the shortest round-tripping digits, as ECMAScript does; re-lay them out.
    mantissa, _, exp_text = repr(abs(x)).partition("e")
    exp = int(exp_text) if exp_text else 0
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    # n: the position of the decimal point relative to the digits (value = 0.d1d2... * 10^n)
    n = len(whole.lstrip("0")) + exp if whole.strip("0") else exp - (len(frac) - len(frac.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        exp_str = f"e{'+' if e >= 0 else '-'}{abs(e)}"
        text = digits[0] + ("." + digits[1:] if k > 1 else "") + exp_str
    return sign + text
