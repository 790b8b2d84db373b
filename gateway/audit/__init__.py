"""The audit trail, readable by the agent (MCP resources) and by the operator (the CLI).

``views`` shapes events and records as JSON, ``stats`` counts them, ``resources`` serves them
at the ``uris`` (with the ``idempotency-policy`` prompt), ``subscriptions`` tells subscribers when
a key's record changes, ``redaction`` keeps manifest secrets out of logs, ``commands`` is the CLI,
``resolution`` checks the result an operator stores for an unknown key (the CLI and the audit page).
"""

from gateway.audit.stats import compute_stats
from gateway.audit.views import event_view, record_view

__all__ = ["compute_stats", "event_view", "record_view"]
