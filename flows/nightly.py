"""The nightly refresh as a Prefect flow: ingest → sample → score → pair → publish → report
(→ trigger training). Each stage is a retryable task over the plain stage functions in
``tasks.pipeline``; sampling and scoring fan out over batches of prompts.

Resuming: every write is keyed and every LLM call is cached, so rerunning the flow with the
same inputs after a crash repeats no finished call and writes no duplicate row. Task caching
(keyed by a hash of the batch's prompt ids and the semantic config, never by pickled data)
additionally skips whole batches that finished in an earlier run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.api import (
    named_in_settings,
    owns_temporary_api,
    signals_stop_the_run,
    temporary_api,
)
from flows.results import result_storage
from flows.slots import hold_slots, reclaim_lapsed_slots
from tasks import catalog, pipeline, storage
from tasks.backends import require_backends
from tasks.config import Settings, load_settings
from tasks.lake import Lake
from tasks.preflight import check_worker_paths
from tasks.redact import install_log_scrubbing, scrub
from tasks.runs import in_deployment, new_run_id, run_id_of_flow_run

JUDGE_LIMIT = "longreward-judge"
POLICY_LIMIT = "longreward-policy"
LAKE_WRITER_LIMIT = "longreward-lake-writer"
TRAIN_DEPLOYMENT = "train-dpo/train-dpo"
BATCHES_IN_FLIGHT = 2   # the thread runner's workers: each batch gets a share of a limit
# Slots held by a killed run return when their lease lapses (flows/slots.py).
RETRY = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=10),
         "retry_jitter_factor": 0.5}


def _log() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task; the module's logger elsewhere (CLI, .fn())."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def batch_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Stage, semantic config, lake, the batch's prompt ids and the Delta version of the input
    table: the content, not the objects. New input rows change the version, so a cached batch
    never hides new work; a rerun after a crash finds finished batches unchanged."""
    settings: Settings = parameters["settings"]
    blob = json.dumps([context.task.name, settings.config_hash(), settings.lake,
                       settings.judge_model, settings.policy_model, parameters["input_version"],
                       sorted(parameters["prompt_ids"])])
    return hashlib.sha256(blob.encode()).hexdigest()


def _share(limit: int) -> int:
    return max(1, limit // BATCHES_IN_FLIGHT)


def ensure_limits(settings: Settings) -> Settings:
    """Create the shared global concurrency limits if they do not exist yet (never resized
    here: an operator's setting wins), and cap this run's per-batch concurrency at them, so a
    batch never asks for more slots than a limit has."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    wanted = {JUDGE_LIMIT: settings.judge_concurrency, POLICY_LIMIT: settings.policy_concurrency,
              LAKE_WRITER_LIMIT: 1}
    actual = {}
    with get_client(sync_client=True) as client:
        for name, slots in wanted.items():
            try:
                actual[name] = client.read_global_concurrency_limit_by_name(name).limit
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots))
                actual[name] = slots
    if owns_temporary_api():  # nobody else repossesses a dead run's slots there
        reclaim_lapsed_slots(list(wanted), _log())
    return settings.model_copy(update={
        "judge_concurrency": max(1, min(settings.judge_concurrency, actual[JUDGE_LIMIT])),
        "policy_concurrency": max(1, min(settings.policy_concurrency, actual[POLICY_LIMIT]))})


def held_slots(settings: Settings, stage: str) -> int:
    """Slots of its limit a sample or score batch holds: its share, or none when its calls go
    through the Batch API (they wait, for hours maybe, in the endpoint's batch queue, not on
    the endpoint; online re-asks stay within the client's own concurrency)."""
    if stage == "score":
        return 0 if pipeline.batched(settings) else _share(settings.judge_concurrency)
    return 0 if pipeline.policy_batched(settings) else _share(settings.policy_concurrency)


def _batches(ids: list[str], size: int) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


@task(name="ingest", **RETRY)
def ingest_task(settings: Settings, run_id: str) -> dict:
    with hold_slots(LAKE_WRITER_LIMIT, 1, _log()):
        report = pipeline.stage_ingest(settings, run_id)
    _log().info("ingest: %s", report.summary())
    return {"prompts": report.prompts, "rejects": report.rejects,
            "objects_new": report.objects_new}


@task(name="plan-sample")
def plan_sample_task(settings: Settings) -> list[str]:
    return pipeline.prompts_pending_sampling(settings)


@task(name="plan-score")
def plan_score_task(settings: Settings) -> list[str]:
    return pipeline.prompts_pending_scoring(settings)


@task(name="sample-batch", cache_key_fn=batch_cache_key, cache_expiration=timedelta(days=7),
      persist_result=True, result_serializer="json", **RETRY)
def sample_task(settings: Settings, run_id: str, prompt_ids: list[str],
                input_version: int) -> dict:
    slots = _share(settings.policy_concurrency)
    with hold_slots(POLICY_LIMIT, held_slots(settings, "sample"), _log()):
        report = pipeline.stage_sample(
            settings.model_copy(update={"policy_concurrency": slots}), run_id,
            prompt_ids=prompt_ids)
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} prompts failed to sample, first: "
                           f"{report.failed[0][1]}")
    return {"responses": report.responses_written, "skipped": report.responses_skipped,
            "handed_over": report.handed_over}


@task(name="score-batch", cache_key_fn=batch_cache_key, cache_expiration=timedelta(days=7),
      persist_result=True, result_serializer="json", **RETRY)
def score_task(settings: Settings, run_id: str, prompt_ids: list[str],
               input_version: int) -> dict:
    # The batch holds its share of the shared judge limit for its duration and keeps that many
    # calls in flight, so flows sharing an endpoint never exceed the limit together.
    slots = _share(settings.judge_concurrency)
    with hold_slots(JUDGE_LIMIT, held_slots(settings, "score"), _log()):
        report = pipeline.stage_score(
            settings.model_copy(update={"judge_concurrency": slots}), run_id,
            prompt_ids=prompt_ids)
    _log().info("score batch: %s", report.summary())
    return {"responses": report.responses, "ok": report.judgments_ok,
            "failed": report.judgments_failed, "judge_calls": report.judge_calls,
            "tokens_in": report.tokens_in, "tokens_out": report.tokens_out,
            "handed_over": report.handed_over}


def _write_catalog(settings: Settings) -> str | None:
    """The DuckDB catalog after a run, where it outlives the run: an s3:// lake's default
    catalog is a file in the working folder, which on a worker is its scratch folder, deleted
    after the run, so a deployment run writes none unless ``catalog`` names where."""
    if in_deployment() and storage.is_s3(settings.lake) and not settings.catalog:
        _log().info("no catalog file written (an s3:// lake on a worker): set "
                    "LONGREWARD_CATALOG to an absolute path, or run `longreward catalog` "
                    "where you query")
        return None
    return catalog.write_catalog(Lake(settings.lake), settings.catalog_path)


@task(name="pair-and-publish", **RETRY)
def pair_publish_task(settings: Settings, run_id: str) -> dict:
    with hold_slots(LAKE_WRITER_LIMIT, 1, _log()):
        paired, skipped = pipeline.stage_pair(settings, run_id)
        version, created = pipeline.stage_publish(settings, run_id)
        written = _write_catalog(settings)
    return {"paired": paired, "catalog": written, "skipped": skipped,
            "dataset_version": version.version if version else None, "created": created}


@task(name="report")
def report_task(settings: Settings, run_id: str) -> str | None:
    """The run report as a Prefect markdown artifact (score plots saved to the lake)."""
    try:
        from tasks import report
    except ImportError:  # pragma: no cover - the report module is optional during rollout
        return None
    lake = Lake(settings.lake)
    stats = report.collect_run_stats(lake, run_id)
    plots = report.plot_score_distributions(lake, run_id,
                                            f"{settings.lake.rstrip('/')}/reports/{run_id}")
    markdown = scrub(report.render_markdown(stats, plots))  # the artifact outlives the run
    create_markdown_artifact(markdown=markdown, key="nightly-report",
                             description=f"longreward nightly run {run_id}")
    for name, rows in report.table_artifacts(stats).items():
        if rows:
            create_table_artifact(table=rows, key=f"nightly-{name}",
                                  description=f"longreward nightly run {run_id}: {name}")
    return markdown


@task(name="trigger-training", retries=2, retry_delay_seconds=30)
def trigger_training_task(dataset_version: str, deployment: str = TRAIN_DEPLOYMENT) -> str:
    """Start the training deployment on the dataset version, without waiting for it."""
    from prefect.deployments import run_deployment

    # One training per dataset version: a retried task (or a rerun of the night) finds the
    # flow run the first attempt created instead of starting a second training.
    run = run_deployment(deployment, parameters={"dataset_version": dataset_version},
                         timeout=0, tags=["longreward", f"dataset:{dataset_version}"],
                         idempotency_key=f"train-{dataset_version}")
    _log().info("training run %s triggered on %s", run.id, dataset_version)
    return str(run.id)


def task_runner_for(name: str):
    """``threads`` (default), ``dask`` (a local cluster) or ``dask://host:port``."""
    if name == "threads":
        return ThreadPoolTaskRunner(max_workers=BATCHES_IN_FLIGHT)
    if name == "dask" or name.startswith(("dask://", "tcp://")):
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as err:
            raise RuntimeError("task_runner=dask needs: pip install prefect-dask") from err
        if name == "dask":
            return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 2})
        return DaskTaskRunner(address=name.replace("dask://", "tcp://", 1))
    raise ValueError(f"unknown task runner {name!r}: threads, dask or dask://host:port")


# Batches run two at a time in this process by default; a batch's own concurrency
# (judge_concurrency calls in flight) is what fills an endpoint, and the global limits cap it
# across flows. `run_nightly` picks another runner (Dask) from the settings.
@flow(name="nightly-refresh", log_prints=True, flow_run_name=new_run_id,
      task_runner=ThreadPoolTaskRunner(max_workers=BATCHES_IN_FLIGHT))
def nightly_refresh(lake: str | None = None, source: str | None = None,
                    config: str | None = None, batch_prompts: int = 16, train: bool = False,
                    train_deployment: str = TRAIN_DEPLOYMENT,
                    overrides: dict[str, Any] | None = None) -> dict:
    """Ingest new prompts, sample, score, pair, publish a dataset version; optionally train."""
    install_log_scrubbing()  # here too: a worker runs this flow without the CLI
    settings = load_settings(config, lake=lake, source=source, **(overrides or {}))
    require_backends(settings, "sample", "score")  # before any work, naming what is missing
    if in_deployment():
        check_worker_paths(settings.lake, settings.source, settings.catalog)
    run_id = run_id_of_flow_run()  # the flow run is named after it: one run, one name
    settings = ensure_limits(settings)
    counts: dict[str, Any] = {"run_id": run_id, "ingest": ingest_task(settings, run_id)}
    the_lake = Lake(settings.lake)
    to_sample = plan_sample_task(settings)
    batch = {"retries": settings.task_retries,
             "retry_delay_seconds": exponential_backoff(settings.task_retry_delay_s),
             # cached batches live in the lake: a rerun on any machine finds them
             "result_storage": result_storage(settings.lake)}
    if settings.batch_wait == "handover":  # a handed-over task is not done: never reuse it
        batch["refresh_cache"] = True
    # Batch API calls: many prompts per task, so one batch file carries them (not 16 a turn).
    in_flight = settings.batch_prompts_in_flight
    sampled = sample_task.with_options(**batch).map(unmapped(settings), unmapped(run_id),
                              _batches(to_sample, in_flight if pipeline.policy_batched(settings)
                                       else batch_prompts),
                              unmapped(the_lake.version("prompts")))
    counts["sample"] = [s.result() for s in sampled]
    to_score = plan_score_task(settings)
    scored = score_task.with_options(**batch).map(unmapped(settings), unmapped(run_id),
                            _batches(to_score, in_flight if pipeline.batched(settings)
                                     else batch_prompts),
                            unmapped(the_lake.version("responses")))
    counts["score"] = [s.result() for s in scored]
    counts["publish"] = pair_publish_task(settings, run_id)
    report_task(settings, run_id)
    version = counts["publish"]["dataset_version"]
    if train and version and counts["publish"]["created"]:  # only a new version trains
        counts["training_run"] = trigger_training_task(version, train_deployment)
    return counts


def run_nightly(task_runner: str | None = None, **parameters: Any) -> dict:
    """Run the flow now with the task runner named by the settings (or ``task_runner``).

    Without a configured Prefect API the run owns a temporary one, stopped on every way out
    (a watchdog stops it if this process is killed); SIGTERM and SIGINT raise
    ``TerminationSignal`` / stop the run wherever it waits.
    """
    settings = load_settings(parameters.get("config"), lake=parameters.get("lake"),
                             **(parameters.get("overrides") or {}))
    runner = task_runner_for(task_runner or settings.task_runner)
    with signals_stop_the_run(), temporary_api() as api_url, named_in_settings(api_url):
        return nightly_refresh.with_options(task_runner=runner)(**parameters)
