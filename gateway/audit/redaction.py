"""Keep manifest secrets and terminal escapes out of every log line.

``redact`` arguments never reach a log line because nothing logs arguments: they are masked
by the call path before the audit event is built. Secrets are different: every value a
manifest took from the environment (``ServerSpec.secrets``) may be quoted anywhere, by a
downstream's error, a command line, a URL in a library's own log line; so every handler gets a
filter that masks them in the message, its arguments and any traceback. The same filter shows
control characters as escapes (``gateway.textsafe``): a key or tool name in a log line cannot
drive the operator's terminal.

The filter is installed once, when logging is configured, before any secret is known; the
secrets are added as manifests load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from gateway.textsafe import escape

MASK = "***"
MIN_SECRET = 4  # shorter values ("1", "on") would garble every line without hiding anything


class SecretFilter(logging.Filter):
    """Mask each secret with ``***`` and escape control characters, in the rendered message
    (arguments included) and in the traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """More values to mask (longest first: a secret that contains another is masked whole)."""
        merged = set(self.secrets) | {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET}
        self.secrets = sorted(merged, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def _clean(self, text: str, *, lines: bool = False) -> str:
        """Masked and escaped; ``lines`` keeps a traceback's line breaks (a message has none)."""
        masked = self.mask(text)
        return "\n".join(escape(line) for line in masked.split("\n")) if lines else escape(masked)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed %-format: let the handler report it as logging does
            return True
        cleaned = self._clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text, lines=True)
        if record.stack_info:
            record.stack_info = self._clean(record.stack_info, lines=True)
        return True


def install_secret_filter(secrets: Iterable[str] = (), logger: logging.Logger | None = None) -> SecretFilter:
    """Attach the filter to every handler of ``logger`` (the root), or add ``secrets`` to the
    filter already there.

    Handlers see every propagated record, where a filter on a logger would only see that
    logger's own.
    """
    target = logger or logging.getLogger()
    found: SecretFilter | None = None
    for handler in target.handlers:
        for existing in handler.filters:
            if isinstance(existing, SecretFilter):
                found = existing
    secret_filter = found or SecretFilter()
    secret_filter.add(secrets)
    for handler in target.handlers:
        if secret_filter not in handler.filters:
            handler.addFilter(secret_filter)
    return secret_filter
