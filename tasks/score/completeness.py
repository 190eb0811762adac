"""Completeness: per-chunk key-point extraction (once per prompt), then coverage per answer.

The context is cut into 4096-token chunks; the judge extracts the query-relevant information
of each chunk ("No relevant information" allowed). That depends only on (context, query), so it
runs once per prompt and all K answers are rated against it. The coverage judge sees every part
labelled by its position in the document (``0%-25%`` ...), "No relevant information" parts
included, so an answer to a question the document cannot answer is still rated (does it say
so, or does it invent?), never given a free 10.

Stored key points are reused only under the same :func:`extraction_key`: the prompt, chunk
size, tokenizer, judge model and extraction prompt; change any and they are extracted again.
"""

from __future__ import annotations

import asyncio
import hashlib
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
    language_of,
    load_prompt,
    messages,
    rationale,
    versions,
)
from tasks.score.protocol import NO_RELEVANT_INFORMATION, parse_extraction, parse_score

PROMPT = "completeness"
EXTRACT_PROMPT = "completeness_extract"
COVERAGE_PROMPT = "completeness_coverage"


@dataclass
class KeyPoints:
    """What the judge extracted from one chunk; ``items`` is None when extraction failed.

    ``start``/``end`` are character offsets; ``total`` is the context's length, so the label
    is the chunk's position in the document.
    """

    chunk_index: int
    n_chunks: int
    start: int
    end: int
    total: int
    items: list[str] | None
    error: str | None = None

    @property
    def label(self) -> str:
        total = max(1, self.total)
        return f"{round(100 * self.start / total)}%-{round(100 * self.end / total)}%"


def extraction_key(prompt_id: str, *, tokenizer: str, chunk_tokens: int,
                   judge_model: str) -> str:
    """What stored key points depend on; key points under another key are not reused."""
    blob = "\x1f".join((prompt_id, tokenizer, str(chunk_tokens), judge_model,
                        versions(EXTRACT_PROMPT)))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def extract_messages(query: str, chunk: Chunk, label: str) -> list[dict]:
    return messages(EXTRACT_PROMPT, language_of(chunk.text), delimit("query", query),
                    delimit("chunk", chunk.text, f'position="{label}"'))


def coverage_messages(query: str, key_points: list[KeyPoints], answer: str) -> list[dict]:
    listed = "\n\n".join(
        f"[Part {kp.label} of the document]\n"
        + ("\n".join(f"{n}. {item}" for n, item in enumerate(kp.items, 1)) if kp.items
           else NO_RELEVANT_INFORMATION)
        for kp in key_points)
    return messages(COVERAGE_PROMPT, language_of(query + answer), delimit("query", query),
                    delimit("key_points", listed), delimit("answer", answer))


async def extract_key_points(judge: Judge, query: str, chunks: list[Chunk],
                             options: JudgeOptions | None = None,
                             usage: Usage | None = None) -> list[KeyPoints]:
    """One extraction call per chunk, concurrently; failures are kept per chunk."""
    options = options or JudgeOptions()
    usage = usage if usage is not None else Usage()
    total = chunks[-1].end if chunks else 0

    async def one(chunk: Chunk) -> KeyPoints:
        kp = KeyPoints(chunk.index, len(chunks), chunk.start, chunk.end, total, None)
        try:
            kp.items, _ = await ask(judge, extract_messages(query, chunk, kp.label),
                                    parse_extraction, options, usage, EXTRACT_PROMPT)
        except AskFailed as err:
            kp.error = err.reason
        return kp

    return list(await asyncio.gather(*(one(c) for c in chunks)))


def _version(query: str, answer: str) -> str:
    return versions(EXTRACT_PROMPT) + "+" + \
        load_prompt(COVERAGE_PROMPT, language_of(query + answer))[1]


async def score_completeness(judge: Judge, query: str,
                             key_points: list[KeyPoints] | Awaitable[list[KeyPoints]],
                             answer: str, options: JudgeOptions | None = None) -> Judgment:
    """``key_points`` may still be extracting (an awaitable, shared by the prompt's answers)."""
    options = options or JudgeOptions()
    if not isinstance(key_points, list):
        key_points = await key_points
    usage = Usage()
    version = _version(query, answer)
    broken = [kp for kp in key_points if kp.items is None]
    if broken:
        return failed(PROMPT, version, judge, f"key-point extraction failed for {len(broken)} "
                      f"of {len(key_points)} chunks; first: {broken[0].error}", usage)
    try:
        score, raw = await ask(judge, coverage_messages(query, key_points, answer), parse_score,
                               options, usage, COVERAGE_PROMPT)
    except AskFailed as err:
        return failed(PROMPT, version, judge, err, usage)
    return Judgment(PROMPT, score, "ok", judge.model, version, rationale=rationale(raw),
                    raw=raw, usage=usage)
