"""The gateway's refusals: one class per contract error code.

    GatewayError                       every refusal a client can see
    ├── IdempotencyKeyMissing          400  side-effecting call without a key
    ├── IdempotencyKeyInvalid          400  malformed key, or argument and _meta disagree
    ├── InvalidArguments               400  arguments fail the downstream inputSchema
    ├── IdempotencyKeyConflict         422  key used before for another tool/arguments
    ├── IdempotencyKeyInProgress       409  the first call is still running
    ├── OutcomeUnknown                 409  the call was sent and its outcome never learned
    ├── IdempotencyKeyExpired          410  retention ended, expired = "reject"
    ├── StoreUnavailable               503  fail closed: nothing ran
    ├── DownstreamUnavailable          502  not sent; the key is released
    ├── RateLimited                    429  too many new keys or refusals; nothing stored
    ├── ApprovalDeclined               403  a person declined this key; every retry gets the same
    └── ApprovalUnavailable            428  nobody could be asked or nobody answered; released

Each carries the contract's ``code``, ``http_status`` and a sentence telling the agent what
to do next. ``server.errors`` turns them into tool results, in one place. The sentence is for
the client: ``StoreUnavailable`` keeps its detail (which names the store) for ``str()``, the
operator's log and CLI, and shows the client only a fixed sentence.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gateway.outcomes import Outcome


class GatewayError(Exception):
    """A refusal: nothing ran downstream because of this call."""

    code: ClassVar[str] = "gateway_error"
    http_status: ClassVar[int] = 500
    audit_outcome: ClassVar[Outcome] = Outcome.INVALID

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_meta(self) -> dict[str, Any]:
        return {"code": self.code, "http_status": self.http_status, "message": self.message, **self.extra}


class IdempotencyKeyMissing(GatewayError):
    """A side-effecting tool was called without a key."""

    code = "idempotency_key_missing"
    http_status = 400
    audit_outcome = Outcome.MISSING_KEY


class IdempotencyKeyInvalid(GatewayError):
    """The key is malformed, or the argument and ``_meta`` disagree."""

    code = "idempotency_key_invalid"
    http_status = 400
    audit_outcome = Outcome.INVALID


class InvalidArguments(GatewayError):
    """The arguments fail the downstream tool's inputSchema."""

    code = "invalid_arguments"
    http_status = 400
    audit_outcome = Outcome.INVALID


class IdempotencyKeyConflict(GatewayError):
    """The key was used before for another tool or other arguments."""

    code = "idempotency_key_conflict"
    http_status = 422
    audit_outcome = Outcome.CONFLICT


class IdempotencyKeyInProgress(GatewayError):
    """A call with this key is still running."""

    code = "idempotency_key_in_progress"
    http_status = 409
    audit_outcome = Outcome.IN_PROGRESS


class OutcomeUnknown(GatewayError):
    """The call reached the downstream and its outcome was never learned."""

    code = "outcome_unknown"
    http_status = 409
    audit_outcome = Outcome.UNKNOWN


class IdempotencyKeyExpired(GatewayError):
    """Retention ended and the tool rejects expired keys."""

    code = "idempotency_key_expired"
    http_status = 410
    audit_outcome = Outcome.EXPIRED


class StoreUnavailable(GatewayError):
    """The store cannot be reached: fail closed. ``str()`` is the detail, ``message`` the
    client's sentence (no URL, user, host, port, path or driver text)."""

    code = "store_unavailable"
    http_status = 503
    audit_outcome = Outcome.STORE_UNAVAILABLE
    PUBLIC_MESSAGE: ClassVar[str] = (
        "The gateway's store is unavailable, so nothing was run. Retry later with the same key."
    )

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.message = self.PUBLIC_MESSAGE
        self.detail = detail


class NotExecuted(Exception):
    """Mixin: the downstream provably did not run the call, so its key can be released.

    ``DownstreamUnavailable`` (nothing was sent) and ``downstream.errors.DownstreamRejected``
    (refused before executing) are the two; ``audit_outcome`` names the release in the audit.
    """

    audit_outcome: ClassVar[Outcome]

    def audit_detail(self) -> dict[str, Any]:
        """What the release event records about why (its ``detail``)."""
        return {"reason": type(self).__name__}


class DownstreamUnavailable(GatewayError, NotExecuted):
    """The downstream could not be reached before the call was sent."""

    code = "downstream_unavailable"
    http_status = 502
    audit_outcome = Outcome.DOWNSTREAM_UNAVAILABLE


class RateLimited(GatewayError):
    """This principal sent more new keys (or refused calls) than its rate allows; nothing stored."""

    code = "rate_limited"
    http_status = 429
    audit_outcome = Outcome.INVALID  # never written: a rate-limited call leaves nothing behind


class ApprovalDeclined(GatewayError):
    """A person declined the call when asked to approve it; the key is settled with this refusal."""

    code = "approval_declined"
    http_status = 403
    audit_outcome = Outcome.APPROVAL_DECLINED


class ApprovalUnavailable(GatewayError, NotExecuted):
    """The call needs a person's approval and none was had: nothing ran, the key is released.

    ``reason`` (in ``extra``): ``no_elicitation`` (the client cannot ask its user),
    ``cancelled`` (the user dismissed the question), ``timeout`` (no answer in time),
    ``client_error`` (the client answered the question with an error), ``unreadable``.
    """

    code = "approval_unavailable"
    http_status = 428
    audit_outcome = Outcome.APPROVAL_UNAVAILABLE

    def audit_detail(self) -> dict[str, Any]:
        return {"reason": str(self.extra.get("reason", type(self).__name__))}


ALL_ERRORS: tuple[type[GatewayError], ...] = (
    IdempotencyKeyMissing,
    IdempotencyKeyInvalid,
    InvalidArguments,
    IdempotencyKeyConflict,
    IdempotencyKeyInProgress,
    OutcomeUnknown,
    IdempotencyKeyExpired,
    StoreUnavailable,
    DownstreamUnavailable,
    RateLimited,
    ApprovalDeclined,
    ApprovalUnavailable,
)

_BY_CODE: dict[str, type[GatewayError]] = {error.code: error for error in ALL_ERRORS}


def outcome_of_code(code: str) -> Outcome | None:
    """The audit outcome of a refusal, by its contract code (a stored refusal replayed)."""
    error = _BY_CODE.get(code)
    return error.audit_outcome if error is not None else None
