"""How a failed LLM call is classified: retryable or not, and after how long."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime

import openai

from tasks.redact import scrub

# Failures that say nothing about the request itself: retried by the client, and when they
# outlast its retries, they abort the stage (Prefect retries it) instead of becoming a verdict.
RETRYABLE_KINDS = frozenset({"rate_limit", "server_error", "timeout", "connection"})


class LLMCallError(RuntimeError):
    """A call that failed for good: not retryable, or out of retries."""

    def __init__(self, reason: str, *, kind: str, attempts: int, request_hash: str,
                 status_code: int | None = None):
        super().__init__(f"{kind} after {attempts} attempt(s): {reason}")
        self.reason = reason
        self.kind = kind
        self.attempts = attempts
        self.request_hash = request_hash
        self.status_code = status_code


class BatchPending(Exception):
    """A call whose batch is still running when the stage hands the wait over
    (``batch_wait = "handover"``): neither a verdict nor a failure. The batch stays recorded as
    open in ``llm_batches``; the next run collects it instead of submitting the call again."""

    def __init__(self, batch_id: str, request_hash: str):
        super().__init__(f"batch {batch_id} is still running: handed over to the next run")
        self.batch_id = batch_id
        self.request_hash = request_hash


def classify(exc: BaseException) -> tuple[str, int | None, float | None]:
    """(kind, HTTP status, Retry-After seconds) of a failed attempt."""
    if isinstance(exc, TimeoutError | openai.APITimeoutError):
        return "timeout", None, None
    if isinstance(exc, openai.APIConnectionError):
        return "connection", None, None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = retry_after_seconds(exc.response.headers)
        if status == 429:
            return "rate_limit", status, retry_after
        if status >= 500 or status in (408, 409):
            return "server_error", status, retry_after
        return "client_error", status, None
    return "api_error", None, None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date."""
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def reason_of(exc: BaseException) -> str:
    """A readable reason to store: never the API key an endpoint may echo in its error."""
    if isinstance(exc, TimeoutError):
        return "no answer within the request timeout"
    return scrub(str(exc))[:500] or type(exc).__name__
