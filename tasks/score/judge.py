"""What every scorer shares: the judge interface, prompt files, delimiting, re-asking, Judgment.

A judge is anything with ``model`` and ``async chat(messages, *, temperature, top_p,
max_tokens, attempt=0) -> ChatResult``: the LLM client for an endpoint, or the offline judge.
Prompts put the static part (instructions, few-shot examples) in the system message and the
variable part (query, evidence, answer) last, so an endpoint's prefix cache serves the former.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tasks.llm.client import ChatResult
from tasks.llm.errors import RETRYABLE_KINDS, LLMCallError
from tasks.score.protocol import ProtocolError, parse_score

PROMPTS = Path(__file__).parent / "prompts"
DIMENSIONS = ("helpfulness", "logicality", "faithfulness", "completeness")

T = TypeVar("T")


class Judge(Protocol):
    model: str

    async def chat(self, messages: list[dict], *, temperature: float, top_p: float,
                   max_tokens: int, attempt: int = 0) -> ChatResult: ...


@dataclass(frozen=True)
class JudgeOptions:
    temperature: float = 0.1
    max_tokens: int = 1024
    protocol_retries: int = 2          # re-asks after an answer that breaks the protocol
    retry_temperature_step: float = 0.3


@dataclass
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    calls: int = 0

    def add(self, result: ChatResult) -> None:
        self.tokens_in += result.tokens_in or 0
        self.tokens_out += result.tokens_out or 0
        self.latency_ms += result.latency_ms
        self.calls += 1


@dataclass
class Judgment:
    """One dimension's verdict on one answer. ``score`` is None when the judgment failed."""

    dimension: str
    score: float | None
    status: str                      # ok | failed | no_statements | no_key_points
    judge_model: str
    prompt_version: str
    error: str | None = None
    rationale: str | None = None
    raw: str | None = None
    usage: Usage = field(default_factory=Usage)
    details: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=16)
def load_prompt(name: str) -> tuple[str, str]:
    """(text, version) of a prompt file; the version is a hash of its content."""
    text = (PROMPTS / f"{name}.md").read_text()
    return text, hashlib.sha256(text.encode()).hexdigest()[:10]


def delimit(tag: str, text: str, attrs: str = "") -> str:
    """Wrap data in a tag; a closing tag inside the data is neutralised so it cannot end it."""
    safe = text.replace(f"</{tag}>", f"<\\/{tag}>")
    return f"<{tag}{' ' + attrs if attrs else ''}>\n{safe}\n</{tag}>"


def messages(prompt: str, *parts: str) -> list[dict]:
    return [{"role": "system", "content": load_prompt(prompt)[0]},
            {"role": "user", "content": "\n".join(parts)}]


class AskFailed(Exception):
    def __init__(self, reason: str, raw: str | None):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


async def ask(judge: Judge, msgs: list[dict], parse: Callable[[str], T], options: JudgeOptions,
              usage: Usage) -> tuple[T, str]:
    """Call the judge and parse its answer; re-ask (bounded) when the protocol is broken.

    Each re-ask is a distinct call (``attempt``) at a higher temperature, and is cached like any
    other, so a rerun replays the same sequence without paying. Raises :class:`AskFailed` for
    a verdict that cannot be had (protocol breaks, a request the endpoint refuses), and lets
    :class:`LLMCallError` of a transient kind (outage, rate limit) through.
    """
    raw: str | None = None
    reason = ""
    for attempt in range(options.protocol_retries + 1):
        temperature = min(1.0, options.temperature + attempt * options.retry_temperature_step)
        try:
            result = await judge.chat(msgs, temperature=temperature, top_p=1.0,
                                      max_tokens=options.max_tokens, attempt=attempt)
        except LLMCallError as err:
            if err.kind in RETRYABLE_KINDS:
                raise  # an outage is not a verdict: let the stage (task) retry later
            raise AskFailed(f"judge call failed: {err}", raw) from err
        usage.add(result)
        raw = result.text
        try:
            return parse(raw), raw
        except ProtocolError as err:
            reason = f"protocol break: {err.reason}"
    raise AskFailed(f"{reason} (after {options.protocol_retries + 1} attempts)", raw)


def failed(dimension: str, prompt: str, judge: Judge, error: AskFailed | str,
           usage: Usage) -> Judgment:
    reason = error.reason if isinstance(error, AskFailed) else error
    raw = error.raw if isinstance(error, AskFailed) else None
    return Judgment(dimension, None, "failed", judge.model, load_prompt(prompt)[1], error=reason,
                    raw=raw, usage=usage)


def rationale(raw: str) -> str:
    """The judge's reasoning without the final marker."""
    head, _, _ = raw.rpartition("[[")
    return (head or raw).strip()


def query_answer_messages(prompt: str, query: str, answer: str) -> list[dict]:
    return messages(prompt, delimit("query", query), delimit("answer", answer))


async def score_query_answer(prompt: str, judge: Judge, query: str, answer: str,
                             options: JudgeOptions) -> Judgment:
    """A direct 0-10 rating from the query and answer alone (helpfulness, logicality)."""
    usage = Usage()
    msgs = query_answer_messages(prompt, query, answer)
    try:
        score, raw = await ask(judge, msgs, parse_score, options, usage)
    except AskFailed as err:
        return failed(prompt, prompt, judge, err, usage)
    return Judgment(prompt, score, "ok", judge.model, load_prompt(prompt)[1],
                    rationale=rationale(raw), raw=raw, usage=usage)
