"""What every scorer shares: the judge interface, prompt files, delimiting, re-asking, Judgment.

A judge is anything with ``model`` and ``async chat(messages, *, temperature, top_p,
max_tokens, attempt=0, purpose=None) -> ChatResult``: the LLM client for an endpoint, or the
offline judge. Prompts put the static part (instructions, few-shot examples) in the system
message and the variable part (query, evidence, answer) last, so an endpoint's prefix cache
serves the former. Every prompt exists in English and Chinese (``prompts/en``, ``prompts/zh``);
the language of the text being judged picks one, by the published implementation's rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from tasks.llm.client import ChatResult
from tasks.llm.errors import RETRYABLE_KINDS, LLMCallError
from tasks.score.protocol import ProtocolError, parse_score

PROMPTS = Path(__file__).parent / "prompts"
LANGUAGES = ("en", "zh")
# The judge steps, each a prompt file of that name under prompts/<language>/.
STEPS = ("helpfulness", "logicality", "faithfulness_statements", "faithfulness_support",
         "completeness_extract", "completeness_coverage")

T = TypeVar("T")


class Judge(Protocol):
    model: str

    async def chat(self, messages: list[dict], *, temperature: float, top_p: float,
                   max_tokens: int, attempt: int = 0,
                   purpose: str | None = None) -> ChatResult: ...


@dataclass(frozen=True)
class JudgeOptions:
    """How the judge is asked. Defaults as published: 0.01 first, 0.95 after, 5 tries."""

    temperature: float = 0.01          # first attempt: near-deterministic
    retry_temperature: float = 0.95    # every re-ask after a protocol break: warmer
    attempts: int = 5                  # tries per judge step, the first included
    max_tokens: int = 1024             # reply room of every step but statement listing
    statements_max_tokens: int = 2048  # statement listing repeats the answer: more room
    max_tokens_limit: int = 4096       # a cut-off reply is re-asked with twice the room, to this
    no_statements: Literal["exclude", "full"] = "exclude"  # an answer without factual statements

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("judge attempts must be >= 1")
        if min(self.max_tokens, self.statements_max_tokens) < 1:
            raise ValueError("judge max_tokens must be >= 1")
        if self.max_tokens_limit < max(self.max_tokens, self.statements_max_tokens):
            raise ValueError("judge max_tokens_limit must be >= every step's max_tokens")
        if self.no_statements not in ("exclude", "full"):
            raise ValueError("no_statements must be 'exclude' or 'full'")

    def room(self, step: str) -> int:
        return self.statements_max_tokens if step == "faithfulness_statements" \
            else self.max_tokens


@dataclass
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    calls: int = 0
    reasks: int = 0   # calls made again after a protocol break

    def add(self, result: ChatResult) -> None:
        self.tokens_in += result.tokens_in or 0
        self.tokens_out += result.tokens_out or 0
        self.latency_ms += result.latency_ms
        self.calls += 1

    def merge(self, other: Usage) -> None:
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.latency_ms += other.latency_ms
        self.calls += other.calls
        self.reasks += other.reasks


@dataclass
class Judgment:
    """One dimension's verdict on one answer. ``score`` is None when there is no score."""

    dimension: str
    score: float | None
    status: str                      # ok | failed | no_statements
    judge_model: str
    prompt_version: str
    error: str | None = None
    rationale: str | None = None
    raw: str | None = None
    usage: Usage = field(default_factory=Usage)
    details: dict[str, Any] = field(default_factory=dict)


def language_of(text: str) -> str:
    """``en`` when Latin letters outnumber CJK characters four to one, else ``zh`` (the
    published implementation's rule)."""
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    latin = sum(ch.isascii() and ch.isalpha() for ch in text)
    return "en" if latin > 4 * cjk else "zh"


@lru_cache(maxsize=32)
def load_prompt(name: str, language: str = "en") -> tuple[str, str]:
    """(text, version) of a prompt file; the version is a hash of its content."""
    if language not in LANGUAGES or name not in STEPS:
        raise ValueError(f"no prompt {name!r} in {language!r}")
    text = (PROMPTS / language / f"{name}.md").read_text()
    return text, hashlib.sha256(text.encode()).hexdigest()[:10]


def versions(name: str) -> str:
    """One version for a step in every language (what a cached artefact depends on)."""
    return "+".join(load_prompt(name, lang)[1] for lang in LANGUAGES)


@lru_cache(maxsize=1)
def _titles() -> dict[str, str]:
    return {load_prompt(step, lang)[0].splitlines()[0].lstrip("# ").strip(): step
            for step in STEPS for lang in LANGUAGES}


def step_of(messages: list[dict]) -> str | None:
    """Which judge step a request is (by its system prompt's title), in any language."""
    if not messages or messages[0].get("role") != "system":
        return None
    lines = str(messages[0].get("content") or "").splitlines()
    return _titles().get(lines[0].lstrip("# ").strip()) if lines else None


def delimit(tag: str, text: str, attrs: str = "") -> str:
    """Wrap data in a tag; a closing tag inside the data is neutralised so it cannot end it."""
    safe = text.replace(f"</{tag}>", f"<\\/{tag}>")
    return f"<{tag}{' ' + attrs if attrs else ''}>\n{safe}\n</{tag}>"


def messages(prompt: str, language: str, *parts: str) -> list[dict]:
    return [{"role": "system", "content": load_prompt(prompt, language)[0]},
            {"role": "user", "content": "\n".join(parts)}]


class AskFailed(Exception):
    def __init__(self, reason: str, raw: str | None):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


async def ask(judge: Judge, msgs: list[dict], parse: Callable[[str], T], options: JudgeOptions,
              usage: Usage, step: str) -> tuple[T, str]:
    """Call the judge and parse its answer; re-ask (bounded) when the protocol is broken.

    The first attempt is near-deterministic, re-asks are warmer; a reply cut off at
    ``max_tokens`` is a break whatever it holds, re-asked with twice the room (up to the
    limit). Each re-ask is a distinct call (``attempt``), cached like any other, so a rerun
    replays the same sequence without paying. Raises :class:`AskFailed` for a verdict that
    cannot be had (protocol breaks, a request the endpoint refuses), and lets
    :class:`LLMCallError` of a transient kind (outage, rate limit) through.
    """
    raw: str | None = None
    reasons: list[str] = []
    room = options.room(step)
    for attempt in range(options.attempts):
        temperature = options.temperature if attempt == 0 else options.retry_temperature
        try:
            result = await judge.chat(msgs, temperature=temperature, top_p=1.0,
                                      max_tokens=room, attempt=attempt, purpose=step)
        except LLMCallError as err:
            if err.kind in RETRYABLE_KINDS:
                raise  # an outage is not a verdict: let the stage (task) retry later
            raise AskFailed(f"judge call failed: {err}", raw) from err
        usage.add(result)
        if attempt:
            usage.reasks += 1
        raw = result.text
        if result.finish_reason == "length":
            reasons.append(f"cut off at max_tokens={room}")
            room = min(options.max_tokens_limit, room * 2)
            continue
        try:
            return parse(raw), raw
        except ProtocolError as err:
            reasons.append(err.reason)
    raise AskFailed(f"protocol break after {options.attempts} attempt(s): "
                    + "; ".join(dict.fromkeys(reasons)), raw)


def failed(dimension: str, version: str, judge: Judge, error: AskFailed | str,
           usage: Usage) -> Judgment:
    reason = error.reason if isinstance(error, AskFailed) else error
    raw = error.raw if isinstance(error, AskFailed) else None
    return Judgment(dimension, None, "failed", judge.model, version, error=reason, raw=raw,
                    usage=usage)


def rationale(raw: str) -> str:
    """The judge's reasoning without the final marker."""
    head, _, _ = raw.rpartition("[[")
    return (head or raw).strip()


def query_answer_messages(prompt: str, query: str, answer: str) -> list[dict]:
    return messages(prompt, language_of(query + answer), delimit("query", query),
                    delimit("answer", answer))


async def score_query_answer(prompt: str, judge: Judge, query: str, answer: str,
                             options: JudgeOptions) -> Judgment:
    """A direct 0-10 rating from the query and answer alone (helpfulness, logicality)."""
    usage = Usage()
    msgs = query_answer_messages(prompt, query, answer)
    version = load_prompt(prompt, language_of(query + answer))[1]
    try:
        score, raw = await ask(judge, msgs, parse_score, options, usage, prompt)
    except AskFailed as err:
        return failed(prompt, version, judge, err, usage)
    return Judgment(prompt, score, "ok", judge.model, version, rationale=rationale(raw),
                    raw=raw, usage=usage)
