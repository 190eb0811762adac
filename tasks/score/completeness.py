"""Completeness: per-chunk key-point extraction (once per prompt), then coverage per answer.

The context is cut into 4096-token chunks; the judge extracts the query-relevant information
of each chunk, labelled by position ("No relevant information" allowed). That depends only on
(context, query), so it runs once per prompt and all K answers are rated against it. When no
chunk holds relevant information there is nothing to miss: score 10, status ``no_key_points``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from tasks.chunking import Chunk
from tasks.score.judge import (
    AskFailed,
    Judge,
    JudgeOptions,
    Judgment,
    Usage,
    ask,
    delimit,
    failed,
    load_prompt,
    messages,
    rationale,
)
from tasks.score.protocol import parse_extraction, parse_score

PROMPT = "completeness"
EXTRACT_PROMPT = "completeness_extract"
COVERAGE_PROMPT = "completeness_coverage"


@dataclass
class KeyPoints:
    """What the judge extracted from one chunk; ``items`` is None when extraction failed."""

    chunk_index: int
    n_chunks: int
    start: int
    end: int
    items: list[str] | None
    error: str | None = None

    @property
    def label(self) -> str:
        return f"Part {self.chunk_index + 1} of {self.n_chunks}"


def extract_messages(query: str, chunk: Chunk, n_chunks: int) -> list[dict]:
    position = f'position="part {chunk.index + 1} of {n_chunks}"'
    return messages(EXTRACT_PROMPT, delimit("query", query), delimit("chunk", chunk.text, position))


def coverage_messages(query: str, key_points: list[KeyPoints], answer: str) -> list[dict]:
    listed = "\n".join(f"{kp.label}:\n" + "\n".join(f"- {item}" for item in kp.items or [])
                       for kp in key_points if kp.items)
    return messages(COVERAGE_PROMPT, delimit("query", query), delimit("key_points", listed),
                    delimit("answer", answer))


async def extract_key_points(judge: Judge, query: str, chunks: list[Chunk],
                             options: JudgeOptions | None = None,
                             usage: Usage | None = None) -> list[KeyPoints]:
    """One extraction call per chunk, concurrently; failures are kept per chunk."""
    options = options or JudgeOptions()
    usage = usage if usage is not None else Usage()

    async def one(chunk: Chunk) -> KeyPoints:
        kp = KeyPoints(chunk.index, len(chunks), chunk.start, chunk.end, None)
        try:
            kp.items, _ = await ask(judge, extract_messages(query, chunk, len(chunks)),
                                    parse_extraction, options, usage)
        except AskFailed as err:
            kp.error = err.reason
        return kp

    return list(await asyncio.gather(*(one(c) for c in chunks)))


def _version() -> str:
    return load_prompt(EXTRACT_PROMPT)[1] + "+" + load_prompt(COVERAGE_PROMPT)[1]


async def score_completeness(judge: Judge, query: str,
                             key_points: list[KeyPoints] | Awaitable[list[KeyPoints]],
                             answer: str, options: JudgeOptions | None = None) -> Judgment:
    """``key_points`` may still be extracting (an awaitable, shared by the prompt's answers)."""
    options = options or JudgeOptions()
    if not isinstance(key_points, list):
        key_points = await key_points
    usage = Usage()
    broken = [kp for kp in key_points if kp.items is None]
    if broken:
        reason = (f"key-point extraction failed for {len(broken)} of {len(key_points)} chunks; "
                  f"first: {broken[0].error}")
        judgment = failed(PROMPT, COVERAGE_PROMPT, judge, reason, usage)
        judgment.prompt_version = _version()
        return judgment
    if not any(kp.items for kp in key_points):
        return Judgment(PROMPT, 10.0, "no_key_points", judge.model, _version(), usage=usage,
                        rationale="no part of the document holds information for this query")
    try:
        score, raw = await ask(judge, coverage_messages(query, key_points, answer), parse_score,
                               options, usage)
    except AskFailed as err:
        judgment = failed(PROMPT, COVERAGE_PROMPT, judge, err, usage)
        judgment.prompt_version = _version()
        return judgment
    return Judgment(PROMPT, score, "ok", judge.model, _version(), rationale=rationale(raw),
                    raw=raw, usage=usage)
