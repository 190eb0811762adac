"""The Batch API's file formats and states (OpenAI's; vLLM's ``run-batch`` reads the same)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENDPOINT = "/v1/chat/completions"
ENDED = ("completed", "expired", "failed", "cancelled")  # a batch's final states


@dataclass(frozen=True)
class Outcome:
    """One line of a batch's output or error file."""

    key: str
    response: dict[str, Any] | None   # the chat completion body when answered
    retry: bool = False               # unanswered for a reason that says nothing of the request
    reason: str = ""
    status_code: int | None = None


def read_line(line: dict[str, Any]) -> Outcome:
    """Read one output / error file line (the OpenAI batch output format)."""
    key = line["custom_id"]
    response = line.get("response") or {}
    error = line.get("error")
    status = response.get("status_code")
    if status == 200 and not error:
        return Outcome(key, response.get("body") or {})
    body_error = (response.get("body") or {}).get("error") or {}
    reason = (error or {}).get("message") or body_error.get("message") or f"status {status}"
    code = (error or {}).get("code") or ""
    # not run (expired, cancelled) or a transient failure: resubmit; a refused request: not
    retry = code in ("batch_expired", "batch_cancelled") or (
        status is not None and (status == 429 or status >= 500)) or (status is None and not error)
    return Outcome(key, None, retry=retry, reason=f"batch line {code or status}: {reason}",
                    status_code=status)


def batch_reason(batch: Any) -> str:
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    detail = "; ".join(f"{e.code}: {e.message}" for e in errors)
    return f"batch {batch.id} {batch.status} without answering it" + (
        f" ({detail})" if detail else "")
