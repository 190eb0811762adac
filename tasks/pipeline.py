"""The nightly stages as plain functions of the settings: what the CLI, the demo and the Prefect
flow call. Each stage reads its inputs from the lake and writes its outputs there, so any stage
can run (or rerun) alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal

from tasks import catalog
from tasks.backends import require_backends
from tasks.config import Settings
from tasks.embeddings import embedder_from_settings
from tasks.ingest import IngestOptions, IngestReport, ingest
from tasks.lake import Lake
from tasks.offline_judge import OfflineJudge
from tasks.pair import PairRule, preference_table, run_pairing
from tasks.publish import DatasetVersion, publish
from tasks.runs import flow_run_id
from tasks.sample.policies import SamplingParams, policy_from_settings, policy_name
from tasks.sample.stage import SampleReport, run_sampling
from tasks.score.judge import Judge, JudgeOptions
from tasks.score.stage import ScoreOptions, ScoreReport, pending_work, score_pending

log = logging.getLogger(__name__)


def judge_from_settings(settings: Settings, run_id: str) -> Judge:
    """The LLM judge at ``judge_base_url`` (through its Batch API when ``judge_mode`` is
    ``batch``); the offline judge when none is set and ``offline`` allows it."""
    require_backends(settings, "score")
    if settings.judge_base_url:
        from tasks.llm.client import LLMClient

        client = LLMClient.from_settings(settings, "judge", run_id=run_id)
        if settings.judge_mode == "batch":
            from tasks.llm.batch import BatchCaller

            return BatchCaller.from_settings(client, settings)
        return client
    return OfflineJudge(embedder_from_settings(settings))


def batched(settings: Settings) -> bool:
    """Judge calls go through the Batch API: score many prompts at once, one batch a round."""
    return settings.judge_mode == "batch" and bool(settings.judge_base_url)


def policy_batched(settings: Settings) -> bool:
    """Sampling calls go through the policy endpoint's Batch API: sample many prompts at once."""
    return settings.policy_mode == "batch" and bool(settings.policy_base_url)


def score_options(settings: Settings) -> ScoreOptions:
    return ScoreOptions(
        tokenizer=settings.tokenizer, chunk_tokens=settings.chunk_tokens,
        segment_tokens=settings.segment_tokens, top_k=settings.top_k_segments,
        prompts_in_flight=settings.batch_prompts_in_flight if batched(settings)
        else max(1, settings.judge_concurrency // 4),
        judge=judge_options(settings))


def judge_options(settings: Settings) -> JudgeOptions:
    return JudgeOptions(
        temperature=settings.judge_temperature,
        retry_temperature=settings.judge_retry_temperature, attempts=settings.judge_attempts,
        max_tokens=settings.judge_max_tokens,
        statements_max_tokens=settings.judge_statements_max_tokens,
        max_tokens_limit=settings.judge_max_tokens_limit, no_statements=settings.no_statements)


def stage_ingest(settings: Settings, run_id: str,
                 on_object: Callable[[Any], None] | None = None) -> IngestReport:
    options = IngestOptions(settings.tokenizer, settings.max_context_tokens,
                            settings.max_query_tokens)
    return ingest(Lake(settings.lake), settings.source, options, run_id, on_object)


def prompts_to_sample(lake: Lake, policy_model: str, k: int,
                      prompt_ids: list[str] | None = None, columns: str = "p.prompt_id, "
                      "p.context, p.query") -> list[dict]:
    """Prompts with fewer than K answers from this policy (DuckDB reads only those rows)."""
    con = catalog.connect(lake)
    only = "AND list_contains(?, p.prompt_id)" if prompt_ids is not None else ""
    params = [policy_model, k] + ([prompt_ids] if prompt_ids is not None else [])
    return con.sql(f"""
        SELECT {columns}
        FROM prompts p
        LEFT JOIN (SELECT prompt_id, count(*) AS n FROM responses
                   WHERE policy_model = ? GROUP BY prompt_id) r USING (prompt_id)
        WHERE coalesce(r.n, 0) < ? {only}
        ORDER BY p.prompt_id""", params=params).to_arrow_table().to_pylist()


def prompts_pending_sampling(settings: Settings) -> list[str]:
    """Prompt ids with fewer than K answers from the configured policy."""
    return [r["prompt_id"] for r in prompts_to_sample(
        Lake(settings.lake), policy_name(settings), settings.samples_per_prompt,
        columns="p.prompt_id")]


def prompts_pending_scoring(settings: Settings) -> list[str]:
    """Prompt ids with responses that lack any of their four judgments."""
    todo, _ = pending_work(Lake(settings.lake))
    return sorted(todo)


def stage_sample(settings: Settings, run_id: str,
                 on_prompt: Callable[[Any], None] | None = None,
                 prompt_ids: list[str] | None = None) -> SampleReport:
    lake = Lake(settings.lake)
    policy = policy_from_settings(settings, run_id=run_id)
    todo = prompts_to_sample(lake, policy.model, settings.samples_per_prompt, prompt_ids)
    return run_sampling(lake, policy, todo, settings.samples_per_prompt,
                        SamplingParams.from_settings(settings), run_id,
                        template=settings.prompt_template, on_prompt=on_prompt,
                        concurrency=settings.batch_prompts_in_flight
                        if policy_batched(settings) else settings.policy_concurrency)


def stage_score(settings: Settings, run_id: str,
                on_prompt: Callable[[str], None] | None = None,
                prompt_ids: list[str] | None = None) -> ScoreReport:
    lake = Lake(settings.lake)

    async def main() -> ScoreReport:
        judge = judge_from_settings(settings, run_id)
        embedder = embedder_from_settings(settings)

        def flush_calls() -> None:
            for client in (judge, getattr(embedder, "client", None)):
                drain = getattr(client, "drain_call_log", None)
                if drain:
                    lake.upsert("llm_calls", drain())

        try:
            return await score_pending(lake, judge, embedder, score_options(settings), run_id,
                                       on_prompt=on_prompt, on_flush=flush_calls,
                                       prompt_ids=prompt_ids)
        finally:
            for client in (judge, getattr(embedder, "client", None)):
                close = getattr(client, "aclose", None)
                if close:
                    await close()

    return asyncio.run(main())


def stage_pair(settings: Settings, run_id: str, rule: PairRule | None = None) -> tuple[int, int]:
    rule = rule or PairRule(min_answers=settings.pair_min_answers)
    return run_pairing(Lake(settings.lake), rule, run_id)


def stage_publish(settings: Settings, run_id: str,
                  style: Literal["conversational", "plain"] = "conversational",
                  ) -> tuple[DatasetVersion | None, bool]:
    """Publish every prompt's current pair as the next preference dataset version (the
    existing version when nothing changed; None if there is no pair at all)."""
    lake = Lake(settings.lake)
    table = preference_table(lake, style, settings.prompt_template)
    if table.num_rows == 0:
        log.warning("no pair in the lake after run %s: nothing to publish", run_id)
        return None, False
    lineage = {"run_id": run_id, "judge_model": settings.judge_model,
               "policy_model": settings.policy_model, "format": style,
               "source": settings.source, "flow_run_id": flow_run_id()}
    return publish(lake, "preference", table, sort_by=["prompt_id"],
                   config_hash=settings.config_hash(), lineage=lineage)
