"""Finding, checking and forwarding the idempotency key of one call.

All of it happens before any claim: a refused call leaves no record, so a corrected retry
with the same key executes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import meta
from gateway.errors import IdempotencyKeyInvalid, IdempotencyKeyMissing
from gateway.manifests.models import KEY_ARGUMENT, ToolPolicy

META_KEY = meta.IDEMPOTENCY_KEY
# Shown to clients in the injected schema (ECMAScript regex: ``$`` is the end of the input).
KEY_PATTERN = r"^[A-Za-z0-9_.:-]{16,255}$"
# Checked here with fullmatch: Python's ``$`` also matches before a final newline, which would
# make ``K`` and ``K\n`` two keys for one action.
_KEY_RE = re.compile(r"[A-Za-z0-9_.:-]{16,255}")
# A key taken from a message id (key_from) was minted by a queue, not by the agent: it need
# not be long, only safe to store and show.
_MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,255}")

KEY_SENTENCE = (
    "Requires idempotency_key: generate one new unique key (a UUID) for each action you intend, "
    "send the same key again when retrying that same action, and never reuse a key for a different action."
)


@dataclass(frozen=True, slots=True)
class KeyedCall:
    """A call's key, the arguments to fingerprint, and what to send downstream."""

    key: str
    fingerprint_arguments: dict[str, Any]
    forward_arguments: dict[str, Any]
    forward_meta: dict[str, Any] | None
    forward_headers: dict[str, str] | None


def extract_key(
    arguments: Mapping[str, Any],
    meta: Mapping[str, Any] | None,
    policy: ToolPolicy,
    *,
    native: bool,
    forward_as: Callable[[str], str] = str,
) -> KeyedCall:
    """Read the key from the arguments or ``_meta``; raise a refusal if it is missing or bad.

    ``native``: the downstream tool takes ``idempotency_key`` itself. Wherever the key goes
    downstream (natively, or by ``forward_key``) it goes as ``forward_as(key)``: the gateway
    passes a key scoped to the caller's principal (``Fingerprinter.forwarded_key``).
    """
    args = dict(arguments)
    if policy.key_from is not None:
        value = args.get(policy.key_from)
        if value is None:
            raise IdempotencyKeyMissing(
                f"This tool takes its idempotency key from the argument '{policy.key_from}'. "
                f"Send the message id in '{policy.key_from}'."
            )
        key = _check(
            str(value) if isinstance(value, int) and not isinstance(value, bool) else value,
            _MESSAGE_ID_RE,
            policy.key_from,
        )
        return _forward(key, dict(args), args, policy, forward_as(key))

    in_args = args.pop(KEY_ARGUMENT, None) if not native else args.get(KEY_ARGUMENT)
    in_meta = meta.get(META_KEY) if meta else None
    if in_args is None and in_meta is None:
        raise IdempotencyKeyMissing(
            "This tool has side effects and needs an idempotency_key. Generate a new unique key "
            "(for example a UUID) for this action and call again; reuse that key only to retry it."
        )
    if in_args is not None and in_meta is not None and in_args != in_meta:
        raise IdempotencyKeyInvalid(
            "The idempotency_key argument and _meta['idem-gateway/idempotency-key'] differ. "
            "Send one key, in one place."
        )
    key = _check(in_args if in_args is not None else in_meta, _KEY_RE, KEY_ARGUMENT)
    fingerprint_args = {k: v for k, v in args.items() if k != KEY_ARGUMENT}
    downstream_key = forward_as(key)
    if native:
        args[KEY_ARGUMENT] = downstream_key
    return _forward(key, fingerprint_args, args, policy, downstream_key)


def _check(value: Any, pattern: re.Pattern[str], name: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = type(value).__name__ if not isinstance(value, str) else f"{len(value)} characters"
        raise IdempotencyKeyInvalid(
            f"The idempotency key in '{name}' is malformed ({shown}). A key is "
            f"{'1' if pattern is _MESSAGE_ID_RE else '16'} to 255 characters of letters, digits and "
            "_ . : - only (a UUID fits). Send a valid key and call again."
        )
    return value


def _forward(
    key: str, fingerprint_args: dict[str, Any], args: dict[str, Any], policy: ToolPolicy, downstream_key: str
) -> KeyedCall:
    meta: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    fk = policy.forward_key
    if fk is not None:
        if fk.kind == "argument":
            args[fk.name] = downstream_key
        elif fk.kind == "meta":
            meta = {fk.name: downstream_key}
        else:
            headers = {fk.name: downstream_key}
    return KeyedCall(key, fingerprint_args, args, meta, headers)


def forwards_key(policy: ToolPolicy, *, native: bool) -> bool:
    """Whether the downstream sees the key (and so dedupes a re-send itself)."""
    return native or policy.forward_key is not None
