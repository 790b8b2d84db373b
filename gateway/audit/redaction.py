"""Keep manifest secrets (env values, headers) out of every log line.

``redact`` arguments never reach a log line because nothing logs arguments: they are masked
by the call path before the audit event is built. Secrets are different: a downstream's error,
a command line or a URL may quote them anywhere, so every handler gets a filter that masks them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "***"
MIN_SECRET = 4  # shorter values ("1", "on") would garble every line without hiding anything


class SecretFilter(logging.Filter):
    """Replace each secret value in the rendered message (and traceback) with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first: a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        return True


def install_secret_filter(secrets: Iterable[str], logger: logging.Logger | None = None) -> SecretFilter:
    """Attach the filter to every handler of ``logger`` (the root): handlers see every
    propagated record, where a filter on a logger would only see that logger's own."""
    target = logger or logging.getLogger()
    secret_filter = SecretFilter(secrets)
    for handler in target.handlers:
        handler.addFilter(secret_filter)
    return secret_filter
