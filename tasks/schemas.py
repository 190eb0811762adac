"""The lake's tables: explicit pyarrow schemas and the key that makes each write idempotent.

Table and column names are the public SQL interface (DESIGN.md): add columns freely, rename
only with a migration note.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
# The four LongReward dimensions: the values of judgments.dimension.
DIMENSIONS = ("helpfulness", "logicality", "faithfulness", "completeness")


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema
    keys: tuple[str, ...]
    doc: str


def _spec(name: str, keys: tuple[str, ...], doc: str, *fields: pa.Field) -> TableSpec:
    return TableSpec(name, pa.schema(list(fields)), keys, doc)


f = pa.field

PROMPTS = _spec(
    "prompts", ("prompt_id",), "one row per prompt; prompt_id = hash(context, query)",
    f("prompt_id", pa.string(), nullable=False),
    f("source_id", pa.string()),
    f("source_uri", pa.string(), nullable=False),
    f("source_etag", pa.string(), nullable=False),
    f("source_line", pa.int64()),
    f("context", pa.large_string(), nullable=False),
    f("query", pa.string(), nullable=False),
    f("meta", pa.string()),
    f("context_tokens", pa.int64(), nullable=False),
    f("query_tokens", pa.int64(), nullable=False),
    f("tokenizer", pa.string(), nullable=False),
    f("run_id", pa.string(), nullable=False),
    f("ingested_at", TS, nullable=False),
)

REJECTS = _spec(
    "rejects", ("reject_id",), "one row per bad input record, with a readable reason",
    f("reject_id", pa.string(), nullable=False),
    f("source_uri", pa.string(), nullable=False),
    f("source_etag", pa.string()),
    f("line", pa.int64()),
    f("reason_code", pa.string(), nullable=False),
    f("reason", pa.string(), nullable=False),
    f("raw_excerpt", pa.string()),
    f("run_id", pa.string(), nullable=False),
    f("rejected_at", TS, nullable=False),
)

INGESTED_OBJECTS = _spec(
    "ingested_objects", ("source_uri", "etag"), "ledger of source objects already ingested",
    f("source_uri", pa.string(), nullable=False),
    f("etag", pa.string(), nullable=False),
    f("size", pa.int64()),
    f("n_prompts", pa.int64()),
    f("n_rejects", pa.int64()),
    f("run_id", pa.string(), nullable=False),
    f("ingested_at", TS, nullable=False),
)

RESPONSES = _spec(
    "responses", ("response_id",), "one sampled answer",
    f("response_id", pa.string(), nullable=False),
    f("prompt_id", pa.string(), nullable=False),
    f("sample_index", pa.int32(), nullable=False),
    f("text", pa.large_string()),
    f("policy_model", pa.string(), nullable=False),
    f("params", pa.string()),
    f("tokens", pa.int64()),
    f("finish_reason", pa.string()),
    f("run_id", pa.string(), nullable=False),
    f("created_at", TS, nullable=False),
)

JUDGMENTS = _spec(
    "judgments", ("response_id", "dimension"), "one score per (response, dimension); null = failed",
    f("response_id", pa.string(), nullable=False),
    f("prompt_id", pa.string(), nullable=False),
    f("dimension", pa.string(), nullable=False),
    f("score", pa.float64()),
    f("status", pa.string(), nullable=False),
    f("error", pa.string()),
    f("rationale", pa.large_string()),
    f("raw", pa.large_string()),
    f("judge_model", pa.string(), nullable=False),
    f("prompt_version", pa.string()),
    f("tokens_in", pa.int64()),
    f("tokens_out", pa.int64()),
    f("latency_ms", pa.float64()),
    f("run_id", pa.string(), nullable=False),
    f("created_at", TS, nullable=False),
    f("judge_calls", pa.int64()),   # calls behind this judgment, re-asks included
    f("reasks", pa.int64()),        # calls made again after a protocol break
)

STATEMENTS = _spec(
    "statements", ("response_id", "statement_index"), "one faithfulness statement",
    f("response_id", pa.string(), nullable=False),
    f("statement_index", pa.int32(), nullable=False),
    f("text", pa.string(), nullable=False),
    f("support", pa.string()),
    f("evidence_chunk_ids", pa.list_(pa.int32())),
    f("run_id", pa.string(), nullable=False),
)

KEY_POINTS = _spec(
    "key_points", ("prompt_id", "extraction_key", "chunk_index"),
    "query-relevant information per 4096-token chunk, under the extraction key it depends on "
    "(prompt, chunk size, tokenizer, judge model, extraction prompt)",
    f("prompt_id", pa.string(), nullable=False),
    f("chunk_index", pa.int32(), nullable=False),
    f("chunk_start", pa.int64()),
    f("chunk_end", pa.int64()),
    f("information", pa.large_string()),
    f("status", pa.string(), nullable=False),
    f("judge_model", pa.string(), nullable=False),
    f("run_id", pa.string(), nullable=False),
    f("extraction_key", pa.string()),  # NULL on rows from before it existed: never reused
    f("tokenizer", pa.string()),
    f("chunk_tokens", pa.int64()),
)

LLM_CALLS = _spec(
    "llm_calls", ("call_id",), "one judge/policy/embedding call",
    f("call_id", pa.string(), nullable=False),
    f("request_hash", pa.string(), nullable=False),
    f("role", pa.string(), nullable=False),
    f("model", pa.string(), nullable=False),
    f("tokens_in", pa.int64()),
    f("tokens_out", pa.int64()),
    f("latency_ms", pa.float64()),
    f("cost_usd", pa.float64()),
    f("cached", pa.bool_(), nullable=False),
    f("status", pa.string()),
    f("run_id", pa.string(), nullable=False),
    f("created_at", TS, nullable=False),
    f("purpose", pa.string()),          # the judge step (or sampling) the call served
    f("attempt", pa.int32()),           # 0 = first ask; >0 = re-ask after a protocol break
    f("temperature", pa.float64()),
    f("max_tokens", pa.int64()),
    f("finish_reason", pa.string()),    # "length" = cut off at max_tokens
)

LLM_BATCHES = _spec(
    "llm_batches", ("batch_id", "status"),
    "one row per state a judge or policy batch (OpenAI Batch API) reached: 'submitted' when "
    "created, then its end ('completed', 'expired', 'failed', 'cancelled'); a batch without an "
    "end row is still open, and a rerun collects it instead of submitting its calls again",
    f("batch_id", pa.string(), nullable=False),
    f("status", pa.string(), nullable=False),
    f("input_file_id", pa.string()),
    f("output_file_id", pa.string()),
    f("error_file_id", pa.string()),
    f("model", pa.string(), nullable=False),
    f("run_id", pa.string(), nullable=False),
    f("request_hashes", pa.list_(pa.string())),  # the calls it carries (their custom_id)
    f("requests", pa.int64()),
    f("succeeded", pa.int64()),                  # answered (end rows)
    f("failed", pa.int64()),                     # errored or never run (end rows)
    f("tokens_in", pa.int64()),
    f("tokens_out", pa.int64()),
    f("cost_usd", pa.float64()),                 # at the batch price (end rows)
    f("resubmit", pa.int32()),                   # 0 = first submission of these calls
    f("created_at", TS, nullable=False),
    f("role", pa.string()),                      # judge | policy (added with policy batches)
)

PAIRS = _spec(
    "pairs", ("prompt_id", "run_id"), "best vs worst answer of a prompt",
    f("prompt_id", pa.string(), nullable=False),
    f("chosen_response_id", pa.string()),
    f("rejected_response_id", pa.string()),
    f("chosen_reward", pa.float64()),
    f("rejected_reward", pa.float64()),
    f("margin", pa.float64()),
    f("status", pa.string(), nullable=False),
    f("skip_reason", pa.string()),
    f("run_id", pa.string(), nullable=False),
    f("created_at", TS, nullable=False),
    f("candidates_hash", pa.string()),  # the answers' rewards and rule this decision saw
)

DATASETS = _spec(
    "datasets", ("version",), "one immutable published dataset version",
    f("version", pa.string(), nullable=False),
    f("number", pa.int64(), nullable=False),
    f("kind", pa.string(), nullable=False),
    f("uri", pa.string(), nullable=False),
    f("row_count", pa.int64(), nullable=False),
    f("content_hash", pa.string(), nullable=False),
    f("config_hash", pa.string(), nullable=False),
    f("lineage", pa.string(), nullable=False),
    f("created_at", TS, nullable=False),
)

MODELS = _spec(
    "models", ("model_version",), "one trained model",
    f("model_version", pa.string(), nullable=False),
    f("dataset_version", pa.string(), nullable=False),
    f("base_model", pa.string(), nullable=False),
    f("hyperparameters", pa.string()),
    f("metrics", pa.string()),
    f("checkpoint_uri", pa.string()),
    f("code_revision", pa.string()),
    f("run_id", pa.string(), nullable=False),
    f("created_at", TS, nullable=False),
    f("flow_run_id", pa.string()),  # the Prefect flow run that trained it
)

TABLES: dict[str, TableSpec] = {
    s.name: s for s in (PROMPTS, REJECTS, INGESTED_OBJECTS, RESPONSES, JUDGMENTS, STATEMENTS,
                        KEY_POINTS, LLM_CALLS, LLM_BATCHES, PAIRS, DATASETS, MODELS)
}
