"""Faithfulness: statements -> top-k context segments each -> support grade -> 10 * mean.

The judge lists the answer's factual statements (functional sentences dropped); each statement
retrieves its top-k 128-token segments from the prompt's :class:`SegmentIndex` (built once per
prompt); the judge grades support full / partial / none = 1 / 0.5 / 0, statements graded in
concurrent calls. An answer with no factual statement (the judge says so in the agreed
sentence) is a defined case, status ``no_statements``: by default, as published, it gets no
score (NULL) and so no reward and no pair; ``JudgeOptions.no_statements = "full"`` scores it 10
instead (nothing in it is unsupported).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from tasks.embeddings import Embedder
from tasks.retrieval import SegmentIndex
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
)
from tasks.score.protocol import parse_statements, parse_support

PROMPT = "faithfulness"
STATEMENTS_PROMPT = "faithfulness_statements"
SUPPORT_PROMPT = "faithfulness_support"
SUPPORT_VALUE = {"full": 1.0, "partial": 0.5, "none": 0.0}


@dataclass
class Statement:
    index: int
    text: str
    support: str | None
    evidence_chunk_ids: list[int]
    error: str | None = None


def statements_messages(query: str, answer: str) -> list[dict]:
    return messages(STATEMENTS_PROMPT, language_of(query + answer), delimit("query", query),
                    delimit("answer", answer))


def support_messages(statement: str, evidence: list[str], ids: list[int]) -> list[dict]:
    passages = "\n\n".join(f"[segment {i}]\n{text}" for i, text in zip(ids, evidence, strict=True))
    return messages(SUPPORT_PROMPT, language_of(statement), delimit("evidence", passages),
                    delimit("statement", statement))


def faithfulness_score(supports: list[str]) -> float:
    return 10.0 * sum(SUPPORT_VALUE[s] for s in supports) / len(supports)


def _version(query: str, answer: str) -> str:
    language = language_of(query + answer)
    return load_prompt(STATEMENTS_PROMPT, language)[1] + "+" + \
        load_prompt(SUPPORT_PROMPT, language)[1]


async def score_faithfulness(judge: Judge, embedder: Embedder,
                             index: SegmentIndex | Awaitable[SegmentIndex], query: str,
                             answer: str, options: JudgeOptions | None = None,
                             top_k: int = 5) -> Judgment:
    """``index`` may still be building (an awaitable): statements are listed meanwhile."""
    options = options or JudgeOptions()
    usage = Usage()
    version = _version(query, answer)
    try:
        texts, raw = await ask(judge, statements_messages(query, answer), parse_statements,
                               options, usage, STATEMENTS_PROMPT)
    except AskFailed as err:
        return failed(PROMPT, version, judge, AskFailed(f"statement listing: {err.reason}",
                                                        err.raw), usage)
    if not texts:
        score = 10.0 if options.no_statements == "full" else None
        return Judgment(PROMPT, score, "no_statements", judge.model, version, raw=raw,
                        error=None if score is not None else "the answer makes no factual "
                        "statement", rationale="the judge found no factual statement",
                        usage=usage, details={"statements": []})
    if not isinstance(index, SegmentIndex):
        index = await index
    evidence = await index.top_k(embedder, texts, k=top_k)

    async def grade(i: int, text: str) -> Statement:
        ids = [c.index for c in evidence[i]]
        msgs = support_messages(text, [c.text for c in evidence[i]], ids)
        try:
            support, _ = await ask(judge, msgs, parse_support, options, usage, SUPPORT_PROMPT)
        except AskFailed as err:
            return Statement(i, text, None, ids, err.reason)
        return Statement(i, text, support, ids)

    statements = await asyncio.gather(*(grade(i, t) for i, t in enumerate(texts)))
    broken = [s for s in statements if s.support is None]
    if broken:
        judgment = failed(PROMPT, version, judge, AskFailed(
            f"{len(broken)} of {len(statements)} statements could not be graded; first: "
            f"{broken[0].error}", raw), usage)
        judgment.details["statements"] = statements
        return judgment
    supports = [s.support for s in statements]
    summary = ", ".join(f"{s}={supports.count(s)}" for s in SUPPORT_VALUE)
    return Judgment(PROMPT, faithfulness_score(supports), "ok", judge.model, version,
                    rationale=f"{len(statements)} statements: {summary}", raw=raw, usage=usage,
                    details={"statements": statements})
