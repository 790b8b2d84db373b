"""Encryption at rest for what a store keeps in clear otherwise: stored results and event arguments.

``redact`` masks arguments the manifest names, but a downstream can echo a secret back in its
result (or its error text), and the result is stored and replayed. With encryption keys
configured, every stored result and every event's arguments are sealed with AES-256-GCM before
they reach the database, and opened when read:

    enc:v1:<key id>:<base64url(12-byte nonce + ciphertext + tag)>

The associated data binds a value to its row (principal and key for a result, principal for an
event), so a sealed value copied onto another row fails to open. Each value names its key, so
keys rotate: the first configured key seals, every configured key opens. A value that fails to
open (tampered, or its key was removed) makes the read fail closed (``StoreUnavailable``); a
value without the prefix was written before encryption was turned on and reads as it is.

Keys: ``IDEM_GATEWAY_ENCRYPTION_KEYS`` = ``id:base64url-of-32-bytes[,id:...]`` (newest first),
e.g. ``k2:$(head -c32 /dev/urandom | base64 | tr '+/' '-_'),k1:...``. Needs the ``[encryption]``
extra (the ``cryptography`` package).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from typing import Any

PREFIX = "enc:v1:"
ENV = "IDEM_GATEWAY_ENCRYPTION_KEYS"
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class CipherError(Exception):
    """Bad key configuration, or a stored value that cannot be opened (the message says which)."""


class Cipher:
    """Seals and opens stored values; the first key seals, any configured key opens."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise CipherError(
                "encryption at rest needs the cryptography package: "
                "pip install 'mcp-idempotency-gateway[encryption]'"
            ) from None
        if not keys:
            raise CipherError(f"{ENV}: no keys")
        self._aead: dict[str, Any] = {}
        for kid, key in keys:
            if not _KEY_ID.fullmatch(kid):
                raise CipherError(f"{ENV}: a key id is 1 to 32 letters, digits, _ or -")
            if len(key) != 32:
                raise CipherError(f"{ENV}: key {kid!r} must be 32 bytes (base64url-encoded)")
            if kid in self._aead:
                raise CipherError(f"{ENV}: key id {kid!r} appears twice")
            self._aead[kid] = AESGCM(key)
        self.current = keys[0][0]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Cipher | None:
        """The cipher ``IDEM_GATEWAY_ENCRYPTION_KEYS`` configures, or None (no encryption)."""
        value = (os.environ if environ is None else environ).get(ENV, "").strip()
        if not value:
            return None
        keys: list[tuple[str, bytes]] = []
        for item in value.split(","):
            kid, sep, encoded = item.strip().partition(":")
            if not sep:
                raise CipherError(f"{ENV}: expected id:base64url-key entries separated by commas")
            try:
                padded = encoded.rstrip("=") + "=" * (-len(encoded.rstrip("=")) % 4)
                key = base64.b64decode(padded, altchars=b"-_", validate=True)
            except (binascii.Error, ValueError):
                raise CipherError(f"{ENV}: key {kid!r} is not base64url") from None
            keys.append((kid, key))
        return cls(keys)

    def seal(self, plaintext: str, aad: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead[self.current].encrypt(nonce, plaintext.encode("utf-8"), aad.encode("utf-8"))
        return f"{PREFIX}{self.current}:{base64.urlsafe_b64encode(nonce + sealed).decode('ascii')}"

    def open(self, stored: str, aad: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # written before encryption was turned on
        kid, _, body = stored[len(PREFIX) :].partition(":")
        aead = self._aead.get(kid)
        if aead is None:
            raise CipherError(f"a stored value was sealed with key {kid!r}, which is not configured")
        try:
            raw = base64.urlsafe_b64decode(body)
            return str(aead.decrypt(raw[:12], raw[12:], aad.encode("utf-8")).decode("utf-8"))
        except Exception:
            raise CipherError("a stored value failed its integrity check (tampered, or moved)") from None


def sealed(value: str | None) -> bool:
    """Whether a stored value is encrypted (for readers without the keys)."""
    return value is not None and value.startswith(PREFIX)
