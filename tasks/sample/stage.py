"""The sampling stage: K answers per prompt from a policy into the ``responses`` table.

A response's id is a content hash of what determines it (prompt, policy model, sampling
params, prompt template, sample index), so it is known before sampling: a prompt whose K ids
are all in the lake is skipped without calling the policy, and only missing samples are asked
for. Rows are written by key every ``batch_prompts`` prompts, so a killed run loses at most one
batch and its rerun writes no duplicate. The policy's call log (endpoint policies) goes to
``llm_calls`` with each batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tasks.lake import Lake
from tasks.llm.errors import BatchPending
from tasks.sample.base import Policy, Sample, SamplingParams
from tasks.sample.layout import build_messages

log = logging.getLogger(__name__)


@dataclass
class PromptResult:
    """What happened to one prompt: answers generated, answers already there, or an error."""

    prompt_id: str
    generated: int = 0
    skipped: int = 0
    error: str | None = None


@dataclass
class SampleReport:
    run_id: str
    policy_model: str
    prompts: int = 0
    prompts_skipped: int = 0
    responses_written: int = 0
    responses_skipped: int = 0
    calls_logged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    handed_over: int = 0  # prompts whose policy batch still runs: the next run collects it

    def summary(self) -> str:
        failed = f", {len(self.failed)} prompts failed" if self.failed else ""
        waiting = (f", {self.handed_over} prompts wait on policy batches"
                   if self.handed_over else "")
        return (f"{self.prompts} prompts ({self.prompts_skipped} already sampled): "
                f"{self.responses_written} responses written, {self.responses_skipped} skipped"
                f"{failed}{waiting}, policy {self.policy_model} in {self.seconds:.1f}s")


def response_id(prompt_id: str, policy_model: str, params_json: str, template: str | None,
                sample_index: int) -> str:
    """Content address of one sampled answer (32 hex chars)."""
    blob = json.dumps([prompt_id, policy_model, params_json, template, sample_index],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def response_row(prompt_id: str, sample: Sample, policy_model: str, params: SamplingParams,
                 template: str | None, run_id: str) -> dict[str, Any]:
    """One ``responses`` row. ``params`` holds the sampling params, the template when one was
    used, and the backend's ``meta`` (the offline policy's style)."""
    recorded: dict[str, Any] = params.as_dict()
    if template is not None:
        recorded["template"] = template
    if sample.meta:
        recorded["meta"] = sample.meta
    return {
        "response_id": response_id(prompt_id, policy_model, params.as_json(), template,
                                   sample.sample_index),
        "prompt_id": prompt_id,
        "sample_index": sample.sample_index,
        "text": sample.text,
        "policy_model": policy_model,
        "params": json.dumps(recorded, sort_keys=True, ensure_ascii=False),
        "tokens": sample.tokens,
        "finish_reason": sample.finish_reason,
        "run_id": run_id,
        "created_at": datetime.now(UTC),
    }


class _Writer:
    """Buffers rows and writes them every ``batch_prompts`` prompts, one commit at a time."""

    def __init__(self, lake: Lake, policy: Policy, report: SampleReport, batch_prompts: int):
        self.lake = lake
        self.policy = policy
        self.report = report
        self.batch_prompts = batch_prompts
        self.rows: list[dict[str, Any]] = []
        self.prompts = 0
        self.lock = asyncio.Lock()

    async def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self.prompts += 1
        if self.prompts >= self.batch_prompts:
            await self.flush()

    async def flush(self) -> None:
        rows, self.rows, self.prompts = self.rows, [], 0  # taken now: batches stay exact
        calls = self.policy.drain_call_log()
        async with self.lock:  # one commit at a time
            if rows:
                self.report.responses_written += await asyncio.to_thread(
                    self.lake.upsert, "responses", rows)
            if calls:
                self.report.calls_logged += await asyncio.to_thread(
                    self.lake.upsert, "llm_calls", calls)


async def sample_responses(lake: Lake, policy: Policy, prompts: Sequence[Mapping[str, Any]],
                           k: int, params: SamplingParams, run_id: str,
                           template: str | None = None,
                           on_prompt: Callable[[PromptResult], None] | None = None, *,
                           concurrency: int = 16, batch_prompts: int = 16) -> SampleReport:
    """Sample ``k`` answers for every prompt (rows with prompt_id, context, query) that does not
    have them yet. A prompt whose policy call fails is reported in ``failed`` and left for the
    next run; the other prompts go on."""
    if k < 1 or concurrency < 1 or batch_prompts < 1:
        raise ValueError("need k, concurrency and batch_prompts >= 1")
    started = time.perf_counter()
    unique = list({str(p["prompt_id"]): p for p in reversed(prompts)}.values())[::-1]
    report = SampleReport(run_id, policy.model, prompts=len(unique))
    existing = {key[0] for key in await asyncio.to_thread(lake.keys, "responses")}
    params_json = params.as_json()
    semaphore = asyncio.Semaphore(concurrency)
    writer = _Writer(lake, policy, report, batch_prompts)

    async def one(prompt: Mapping[str, Any]) -> None:
        pid = str(prompt["prompt_id"])
        ids = [response_id(pid, policy.model, params_json, template, i) for i in range(k)]
        missing = [i for i, rid in enumerate(ids) if rid not in existing]
        result = PromptResult(pid, skipped=k - len(missing))
        report.responses_skipped += result.skipped
        if not missing:
            report.prompts_skipped += 1
        else:
            messages = build_messages(str(prompt["context"]), str(prompt["query"]), template)
            async with semaphore:
                try:
                    # indices only when some already exist: the plain K-sample call is the
                    # whole Policy contract for the usual case
                    samples = await (policy.generate(pid, messages, k, params)
                                     if len(missing) == k else
                                     policy.generate(pid, messages, k, params, indices=missing))
                except BatchPending:  # not a failure: the next run collects the batch
                    report.handed_over += 1
                    samples = []
                except Exception as exc:  # one prompt's failure does not stop the others
                    result.error = f"{type(exc).__name__}: {exc}"[:500]
                    report.failed.append((pid, result.error))
                    log.warning("sampling prompt %s failed: %s", pid[:12], result.error)
                    samples = []
            wanted = set(missing)
            rows = [response_row(pid, s, policy.model, params, template, run_id)
                    for s in samples if s.sample_index in wanted]
            result.generated = len(rows)
            if rows:
                await writer.add(rows)
        if on_prompt is not None:
            on_prompt(result)

    try:
        await asyncio.gather(*(one(p) for p in unique))
    except BaseException:
        with contextlib.suppress(Exception):  # keep what was sampled; the error is the news
            await writer.flush()
        raise
    await writer.flush()
    report.seconds = time.perf_counter() - started
    log.info("sample: %s", report.summary())
    return report


def run_sampling(lake: Lake, policy: Policy, prompts: Sequence[Mapping[str, Any]], k: int,
                 params: SamplingParams, run_id: str, template: str | None = None,
                 on_prompt: Callable[[PromptResult], None] | None = None,
                 **options: Any) -> SampleReport:
    """:func:`sample_responses` in its own event loop; closes the policy's connections after."""
    async def main() -> SampleReport:
        try:
            return await sample_responses(lake, policy, prompts, k, params, run_id, template,
                                          on_prompt, **options)
        finally:
            await policy.aclose()

    return asyncio.run(main())
