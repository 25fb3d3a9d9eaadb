"""What a failed write becomes: a condition reason, whether to tell people again, when to retry.

Every API error reaches a condition (`Ready=False`, a reason from the HTTP
status and the API server's own message) and ONE Event: a reconcile that
fails the same way every 30 s must not bury the namespace's Events, so an
Event goes out only when the failure's signature (reason and message)
differs from the last one recorded. Retries back off: doubling from the
first delay up to a ceiling, so a Campus the API server keeps refusing costs
one request every few minutes, not one a second.
"""

from __future__ import annotations

from enum import StrEnum


class FailureReason(StrEnum):
    INVALID = "Invalid"  # 400, 422: the API server refused what we built from the spec
    CONFLICT = "Conflict"  # 409: someone else wrote first, or the object exists
    FORBIDDEN = "Forbidden"  # 401, 403: the operator's RBAC does not allow it
    NOT_FOUND = "NotFound"  # 404 where the object was expected
    UNAVAILABLE = "ApiUnavailable"  # 429, 5xx, no answer: the API server is struggling
    API_ERROR = "ApiError"  # any other status
    INVALID_SPEC = "InvalidSpec"  # the operator itself could not build objects from the spec


def reason_for_status(status: int | None) -> FailureReason:
    """The condition reason for an HTTP status from the API server."""
    if status in (400, 422):
        return FailureReason.INVALID
    if status == 409:
        return FailureReason.CONFLICT
    if status in (401, 403):
        return FailureReason.FORBIDDEN
    if status == 404:
        return FailureReason.NOT_FOUND
    if status is None or status == 0 or status == 429 or status >= 500:
        return FailureReason.UNAVAILABLE
    return FailureReason.API_ERROR


def signature(reason: str, message: str) -> str:
    """What must change for a failure to be worth another Event."""
    return f"{reason}: {message}"


def should_emit(previous: str | None, current: str) -> bool:
    """An Event only when the failure differs from the one last told."""
    return previous != current


def backoff_delay(failures: int, first: float = 30.0, ceiling: float = 300.0) -> float:
    """Seconds to wait after `failures` consecutive failures (1 -> first, doubling, capped)."""
    if failures <= 0:
        return 0.0
    return float(min(ceiling, first * 2 ** min(failures - 1, 30)))
