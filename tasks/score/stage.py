"""The scoring stage: every unscored response gets its four judgments, written to the lake.

Work is grouped by prompt: the context is segmented and embedded once and the completeness
key points are extracted once (or reused from ``key_points``), then the prompt's K answers are
scored concurrently. Rows are flushed every few prompts; a crash loses at most the unflushed
ones, and redoing those costs nothing because every judge call is in the call cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks.chunking import chunk_by_tokens
from tasks.embeddings import Embedder
from tasks.lake import Lake
from tasks.llm.errors import BatchPending
from tasks.retrieval import SegmentIndex
from tasks.schemas import DIMENSIONS
from tasks.score.completeness import (
    KeyPoints,
    extract_key_points,
    extraction_key,
    score_completeness,
)
from tasks.score.faithfulness import score_faithfulness
from tasks.score.helpfulness import score_helpfulness
from tasks.score.judge import Judge, JudgeOptions, Judgment, Usage
from tasks.score.logicality import score_logicality
from tasks.tokens import load_tokenizer

log = logging.getLogger(__name__)


def _among(prompt_ids) -> pc.Expression:
    """``prompt_id`` in ``prompt_ids``; typed, so an empty list filters everything out rather
    than failing on a null-typed array."""
    return pc.field("prompt_id").isin(pa.array(list(prompt_ids), pa.string()))


@dataclass(frozen=True)
class ScoreOptions:
    tokenizer: str = "all-MiniLM-L6-v2"
    chunk_tokens: int = 4096
    segment_tokens: int = 128
    top_k: int = 5
    prompts_in_flight: int = 4
    flush_every: int = 8
    judge: JudgeOptions = JudgeOptions()


@dataclass
class ScoreReport:
    run_id: str
    prompts: int = 0
    responses: int = 0
    skipped: int = 0
    judgments_ok: int = 0
    judgments_failed: int = 0
    extraction_calls: int = 0
    judge_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    handed_over: int = 0  # prompts left unscored: their judge batch still runs (next run)

    def summary(self) -> str:
        waiting = (f", {self.handed_over} prompts wait on judge batches (the next run "
                   f"collects them)") if self.handed_over else ""
        return (f"{self.responses} responses of {self.prompts} prompts scored "
                f"({self.skipped} already done): {self.judgments_ok} judgments ok, "
                f"{self.judgments_failed} failed, {self.judge_calls} judge calls, "
                f"{self.seconds:.1f}s{waiting}")


@dataclass
class PromptScores:
    judgments: list[dict]
    statements: list[dict]
    key_points: list[dict]
    usage: Usage
    extraction_calls: int


def key_points_key(prompt_id: str, options: ScoreOptions, judge: Judge) -> str:
    return extraction_key(prompt_id, tokenizer=options.tokenizer,
                          chunk_tokens=options.chunk_tokens, judge_model=judge.model)


async def score_prompt(judge: Judge, embedder: Embedder, prompt: dict, responses: list[dict],
                       options: ScoreOptions, run_id: str,
                       known_key_points: list[KeyPoints] | None = None) -> PromptScores:
    """Score the given responses of one prompt on all four dimensions.

    ``known_key_points`` must have been extracted under this prompt's :func:`key_points_key`.
    """
    tokenizer = load_tokenizer(options.tokenizer)
    context, query = prompt["context"], prompt["query"]
    extraction_usage = Usage()

    async def extract() -> list[KeyPoints]:
        chunks = await asyncio.to_thread(chunk_by_tokens, context, tokenizer,
                                         options.chunk_tokens)
        return await extract_key_points(judge, query, chunks, options.judge, extraction_usage)

    # The per-prompt work (segment index, key points) starts at once and is awaited only where
    # needed: helpfulness, logicality and statement listing do not wait for it.
    index = asyncio.ensure_future(
        SegmentIndex.build(context, tokenizer, embedder, options.segment_tokens))
    key_points_task = asyncio.ensure_future(extract()) if known_key_points is None else None

    async def four(response: dict) -> list[Judgment]:
        answer = response["text"] or ""
        return list(await asyncio.gather(
            score_helpfulness(judge, query, answer, options.judge),
            score_logicality(judge, query, answer, options.judge),
            score_faithfulness(judge, embedder, asyncio.shield(index), query, answer,
                               options.judge, options.top_k),
            score_completeness(judge, query, known_key_points if key_points_task is None
                               else asyncio.shield(key_points_task), answer, options.judge)))

    try:
        results = await asyncio.gather(*(four(r) for r in responses))
        key_points = known_key_points if key_points_task is None else await key_points_task
    finally:
        for task in (index, key_points_task):
            if task is not None and not task.done():
                task.cancel()
    now = datetime.now(UTC)
    scores = PromptScores([], [], [], extraction_usage, extraction_usage.calls)
    for response, judgments in zip(responses, results, strict=True):
        for j in judgments:
            scores.usage.merge(j.usage)
            scores.judgments.append(_judgment_row(response, j, run_id, now))
            for s in j.details.get("statements", []):
                scores.statements.append({
                    "response_id": response["response_id"], "statement_index": s.index,
                    "text": s.text, "support": s.support,
                    "evidence_chunk_ids": s.evidence_chunk_ids, "run_id": run_id})
    if known_key_points is None and all(kp.items is not None for kp in key_points):
        # Only complete extractions are stored: a partial one is redone (cheaply) next run.
        key = key_points_key(prompt["prompt_id"], options, judge)
        scores.key_points = [{
            "prompt_id": prompt["prompt_id"], "extraction_key": key,
            "chunk_index": kp.chunk_index, "chunk_start": kp.start, "chunk_end": kp.end,
            "information": "\n".join(kp.items),
            "status": "ok" if kp.items else "no_relevant_information",
            "judge_model": judge.model, "tokenizer": options.tokenizer,
            "chunk_tokens": options.chunk_tokens, "run_id": run_id} for kp in key_points]
    return scores


def _judgment_row(response: dict, j: Judgment, run_id: str, now: datetime) -> dict:
    return {"response_id": response["response_id"], "prompt_id": response["prompt_id"],
            "dimension": j.dimension, "score": j.score, "status": j.status, "error": j.error,
            "rationale": j.rationale, "raw": j.raw, "judge_model": j.judge_model,
            "prompt_version": j.prompt_version, "tokens_in": j.usage.tokens_in,
            "tokens_out": j.usage.tokens_out, "latency_ms": j.usage.latency_ms,
            "judge_calls": j.usage.calls, "reasks": j.usage.reasks,
            "run_id": run_id, "created_at": now}


def stored_key_points(lake: Lake, keys: dict[str, str]) -> dict[str, list[KeyPoints]]:
    """The key points stored for each prompt under its extraction key (``{prompt_id: key}``);
    rows under any other key (another chunk size, tokenizer, judge or prompt) are ignored."""
    rows = lake.read("key_points", filter=_among(keys)).to_pylist()
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["extraction_key"] == keys[row["prompt_id"]]:
            by_prompt[row["prompt_id"]].append(row)
    stored = {}
    for pid, group in by_prompt.items():
        group.sort(key=lambda r: r["chunk_index"])
        total = group[-1]["chunk_end"]
        stored[pid] = [KeyPoints(r["chunk_index"], len(group), r["chunk_start"], r["chunk_end"],
                                 total, [i for i in (r["information"] or "").split("\n") if i])
                       for r in group]
    return stored


def pending_work(lake: Lake, prompt_ids: list[str] | None = None,
                 ) -> tuple[dict[str, list[dict]], int]:
    """Responses without all four judgments, grouped by prompt; and how many are done."""
    judged = lake.read("judgments", columns=["response_id", "dimension"])
    counts: dict[str, int] = defaultdict(int)
    for rid in judged.column("response_id").to_pylist():
        counts[rid] += 1
    todo: dict[str, list[dict]] = defaultdict(list)
    done = 0
    wanted = None if prompt_ids is None else _among(prompt_ids)
    for row in lake.read("responses", columns=["response_id", "prompt_id", "sample_index",
                                               "text"], filter=wanted).to_pylist():
        if counts.get(row["response_id"], 0) >= len(DIMENSIONS):
            done += 1
        else:
            todo[row["prompt_id"]].append(row)
    return todo, done


async def score_pending(lake: Lake, judge: Judge, embedder: Embedder, options: ScoreOptions,
                        run_id: str, on_prompt: Callable[[str], None] | None = None,
                        on_flush: Callable[[], Any] | None = None,
                        prompt_ids: list[str] | None = None) -> ScoreReport:
    """Score every pending response (of ``prompt_ids`` only, when given)."""
    started = time.perf_counter()
    todo, done = pending_work(lake, prompt_ids)
    report = ScoreReport(run_id, prompts=len(todo), skipped=done)
    if not todo:
        report.seconds = time.perf_counter() - started
        return report
    prompt_rows = {r["prompt_id"]: r for r in lake.read(
        "prompts", columns=["prompt_id", "context", "query"],
        filter=_among(todo)).to_pylist()}
    known = stored_key_points(lake, {pid: key_points_key(pid, options, judge) for pid in todo})
    pending: list[PromptScores] = []
    gate = asyncio.Semaphore(options.prompts_in_flight)

    def flush() -> None:
        for table, attr in (("judgments", "judgments"), ("statements", "statements"),
                            ("key_points", "key_points")):
            lake.upsert(table, [row for p in pending for row in getattr(p, attr)])
        if on_flush:
            on_flush()
        pending.clear()

    async def one(prompt_id: str) -> None:
        async with gate:
            try:
                scores = await score_prompt(judge, embedder, prompt_rows[prompt_id],
                                            todo[prompt_id], options, run_id,
                                            known.get(prompt_id))
            except BatchPending:  # not a verdict: nothing is written, the next run collects
                report.handed_over += 1
                return
        report.responses += len(todo[prompt_id])
        report.extraction_calls += scores.extraction_calls
        report.judge_calls += scores.usage.calls
        report.tokens_in += scores.usage.tokens_in
        report.tokens_out += scores.usage.tokens_out
        for row in scores.judgments:
            if row["score"] is None:
                report.judgments_failed += 1
            else:
                report.judgments_ok += 1
        pending.append(scores)
        if len(pending) >= options.flush_every:
            flush()
        if on_prompt:
            on_prompt(prompt_id)

    missing = [pid for pid in todo if pid not in prompt_rows]
    if missing:
        raise LookupError(f"responses refer to {len(missing)} unknown prompts, e.g. {missing[0]}")
    try:
        await asyncio.gather(*(one(pid) for pid in sorted(todo)))
    finally:
        flush()  # keep every finished prompt, also when an outage aborts the stage
    report.seconds = time.perf_counter() - started
    log.info("score: %s", report.summary())
    return report
