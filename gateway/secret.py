"""The store's secret: the key fingerprints are made with, kept in a file apart from the database.

A fingerprint is shown in the audit trail next to redacted arguments; keyed (HMAC), it reveals
nothing of them to someone who has the database but not this file. Every gateway on one store
must use the same secret (the same arguments must fingerprint alike on every replica), so the
store keeps a check value derived from it (never the secret) and a gateway with another secret
refuses to start instead of refusing every retry as a conflict.

The file holds 32 random bytes in hex. It is created on first start (0600, in a 0700
directory) at ``--secret-file`` (``IDEM_GATEWAY_SECRET_FILE``), by default
``$XDG_STATE_HOME/idem-gateway/secret.key``; replicas on other machines need a copy of it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

KEY_BYTES = 32
_CHECK_LABEL = b"idem-gateway/fingerprint-key-check"


class SecretError(Exception):
    """The secret file cannot be read, made, or does not hold a key (the message says why)."""


def state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "idem-gateway"


def default_secret_file() -> Path:
    return state_dir() / "secret.key"


def load_or_create(path: Path) -> bytes:
    """The key in ``path``; a new random one written there (atomically, 0600) if it is missing."""
    path = path.expanduser()
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)  # another gateway created it at the same moment: use theirs
    except OSError as exc:
        raise SecretError(f"cannot create the secret file {path}: {exc.strerror or exc}") from None
    key = os.urandom(KEY_BYTES)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    logger.info("created the fingerprint secret %s (replicas on other machines need a copy)", path)
    return key


def _read(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"cannot read the secret file {path}: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise SecretError(f"the secret file {path} does not hold a key (hex, at least 16 bytes)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("the secret file %s is readable by other users: chmod 600 it", path)
    return key


def check_value(key: bytes) -> str:
    """What the store keeps to tell a gateway with another secret: reveals nothing of the key."""
    return hmac.new(key, _CHECK_LABEL, hashlib.sha256).hexdigest()[:32]
