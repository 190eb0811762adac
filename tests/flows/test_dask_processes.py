"""Scoring fanned out over Dask worker *processes* sharing an S3 lake: one nightly run on a
cluster of two single-threaded worker processes, one of them SIGKILLed mid-scoring, writes
the rows one process writes, pays no finished call again, and leaves Prefect's cached batches
in the lake, where a rerun with nothing local finds them.

The cluster and that run serve the module (they take seconds). The workers run in a working
directory of their own ("the pod"), so their call-cache front is not this process's.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster, WorkerPlugin, get_task_stream
from prefect_dask import DaskTaskRunner

from flows.nightly import nightly_refresh
from tasks import demo_data, pipeline, storage
from tasks.config import load_settings
from tasks.lake import Lake
from tests.fakes.openai_server import FakeOpenAI
from tests.flows.test_nightly import _hash_of, _judge_limit_with_room, judge_reply

PROMPTS, SAMPLES = 3, 3
LEASE_S = 4.0   # a killed worker's leases (a call, a table write) lapse in seconds, not a minute


class ShortLeases(WorkerPlugin):
    """Shortens the lake's leases in every worker, restarted ones included."""

    def setup(self, worker: Any) -> None:
        import tasks.lake
        import tasks.llm.cache

        tasks.lake.TABLE_LEASE_S = tasks.llm.cache.CALL_LEASE_S = LEASE_S


@pytest.fixture(scope="module")
def cluster(prefect_api: str, s3_endpoint: str, tmp_path_factory) -> Iterator[Client]:
    pod = tmp_path_factory.mktemp("pod")
    here = os.getcwd()
    os.chdir(pod)   # spawned workers (and the nanny's restarts) start here
    # The S3 endpoint and credentials are in os.environ (inherited); the Prefect API reaches
    # workers in each task's serialized settings, and in their environment, as on a real pod.
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, env={"PREFECT_API_URL": prefect_api})
    client = Client(cluster)
    client.register_plugin(ShortLeases())
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        os.chdir(here)


@pytest.fixture(scope="module")
def lake_bucket(s3_endpoint: str) -> str:
    name = f"dask-{uuid.uuid4().hex[:10]}"
    client = storage.s3_client()
    client.create_bucket(Bucket=name)
    prompts = demo_data.make_prompts(PROMPTS, seed=7)
    client.put_object(Bucket=name, Key="in/batch.jsonl",
                      Body=demo_data.jsonl([p.record() for p in prompts]))
    return name


def _run(bucket: str, lake: str, judge: FakeOpenAI, client: Client) -> dict:
    """The nightly flow on ``s3://bucket/lake``, its batches on the cluster."""
    runner = DaskTaskRunner(address=client.scheduler.address)
    return nightly_refresh.with_options(task_runner=runner)(
        lake=f"s3://{bucket}/{lake}", source=f"s3://{bucket}/in", batch_prompts=1,
        overrides=_overrides(judge))


def _overrides(judge: FakeOpenAI) -> dict[str, Any]:
    return {"judge_base_url": judge.url, "judge_model": "scripted",
            "embeddings_base_url": judge.url, "embeddings_model": "scripted-embed",
            "samples_per_prompt": SAMPLES, "pair_min_answers": SAMPLES,
            "judge_concurrency": 4, "task_retry_delay_s": 0.1}


VALUES = {"judgments": ["response_id", "dimension", "score", "status", "error", "rationale",
                        "judge_model", "prompt_version", "tokens_in", "tokens_out", "reasks"],
          "statements": ["response_id", "statement_index", "text", "support",
                         "evidence_chunk_ids"],
          "key_points": ["prompt_id", "chunk_index", "information", "status"],
          "pairs": ["prompt_id", "chosen_response_id", "rejected_response_id", "chosen_reward",
                    "rejected_reward", "margin", "status"],
          "datasets": ["version", "row_count", "content_hash"]}


def _values(lake: Lake) -> dict[str, list[tuple]]:
    """Every table's value columns, sorted: no ids of runs, no timings."""
    out = {}
    for table, columns in VALUES.items():
        rows = lake.read(table, columns=columns).to_pylist()
        out[table] = sorted(tuple(str(row[c]) for c in columns) for row in rows)
    return out


def _shared_calls(lake: str) -> set[str]:
    """Hashes of the calls finished in the lake's shared call cache."""
    bucket, prefix = storage.split_s3(f"{lake}/cache/calls/")
    pages = storage.s3_client().get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return {Path(o["Key"]).stem for page in pages for o in page.get("Contents", [])}


def _kill_a_scoring_worker(client: Client, judge: FakeOpenAI,
                           after_calls: int) -> tuple[int, str]:
    """SIGKILL a worker process while it runs a scoring batch; returns its pid and address."""
    deadline = time.time() + 120
    while time.time() < deadline:
        if judge.by_path.get("/v1/chat/completions", 0) >= after_calls:
            running = client.run(lambda dask_worker: [
                str(ts.key) for ts in dask_worker.state.executing])
            scoring = [a for a, keys in running.items()
                       if any(k.startswith("score_task") for k in keys)]
            if scoring:
                pid = client.run(os.getpid, workers=scoring[:1])[scoring[0]]
                os.kill(pid, signal.SIGKILL)
                while _alive(pid) and time.time() < deadline:
                    time.sleep(0.01)
                return pid, scoring[0]
        time.sleep(0.02)
    raise AssertionError("no scoring batch ran")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _repossess_judge_slots() -> None:
    """Free the killed worker's judge slots, as a real Prefect server's repossessor does once
    their lease lapses (the test API runs none), so that later tests find the room."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from flows.nightly import JUDGE_LIMIT

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            JUDGE_LIMIT, GlobalConcurrencyLimitUpdate(active_slots=0))


@pytest.fixture(scope="module")
def killed_run(cluster: Client, lake_bucket: str) -> dict[str, Any]:
    """One nightly run on the worker processes, one of which is SIGKILLed mid-scoring (the
    nanny starts a new one; Dask runs the lost batch again)."""
    _judge_limit_with_room(16)   # the killed worker's slots only return when their lease lapses
    lake = f"s3://{lake_bucket}/cluster"
    seen: dict[str, Any] = {}
    with FakeOpenAI(judge_reply, latency_s=0.05) as judge, get_task_stream(cluster) as stream:
        def killer() -> None:
            seen["pid"], seen["killed"] = _kill_a_scoring_worker(cluster, judge, after_calls=12)
            seen["finished"] = _shared_calls(lake)   # first what was finished...
            seen["asked"] = len(judge.bodies)        # ...then what had been asked since

        thread = threading.Thread(target=killer)
        thread.start()
        out = _run(lake_bucket, "cluster", judge, cluster)
        thread.join()
        overrides = _overrides(judge)
    _repossess_judge_slots()
    return {**seen, "out": out, "lake": lake, "judge": judge, "stream": stream.data,
            "overrides": overrides}


@pytest.fixture(scope="module")
def one_process(lake_bucket: str, tmp_path_factory) -> dict[str, Any]:
    """The same night in this process, stage after stage, without Prefect or Dask."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("one"))   # a call-cache front of its own
    try:
        with FakeOpenAI(judge_reply) as judge:
            settings = load_settings(lake=f"s3://{lake_bucket}/one",
                                     source=f"s3://{lake_bucket}/in", **_overrides(judge))
            for stage in (pipeline.stage_ingest, pipeline.stage_sample, pipeline.stage_score,
                          pipeline.stage_pair, pipeline.stage_publish):
                stage(settings, "one-process")
    finally:
        os.chdir(here)
    return {"lake": settings.lake, "judge": judge}


def test_worker_processes_killed_or_not_write_the_rows_one_process_writes(killed_run,
                                                                          one_process):
    # the processes that scored: those that finished a batch, and the one killed in the middle
    # of one (under load the survivor may finish every batch while the nanny restarts it)
    score_workers = {t["worker"] for t in killed_run["stream"]
                     if str(t["key"]).startswith("score_task")} | {killed_run["killed"]}
    assert len(score_workers) >= 2
    assert killed_run["out"]["publish"]["dataset_version"] == "v1"
    cluster, one = Lake(killed_run["lake"]), Lake(one_process["lake"])
    assert one.count("judgments") == PROMPTS * SAMPLES * 4
    assert {j["status"] for j in cluster.read("judgments").to_pylist()} == {"ok"}
    assert _values(cluster) == _values(one)
    assert set(killed_run["judge"].by_body) == set(one_process["judge"].by_body)  # same calls


def test_a_killed_worker_costs_no_finished_call_again(killed_run):
    assert killed_run["finished"]   # calls had finished before the kill
    again = {_hash_of(body) for body in killed_run["judge"].bodies[killed_run["asked"]:]}
    assert again                    # the run went on after the kill...
    assert not killed_run["finished"] & again   # ...and asked no finished call again


def test_cached_batches_live_in_the_lake(killed_run, tmp_path):
    """Rerun the batches here, with an empty local result store: Prefect finds the results the
    worker processes left in the lake and runs no batch again."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.nightly import score_task
    from flows.results import result_storage

    lake = killed_run["lake"]
    settings = load_settings(lake=lake, source="unused", **killed_run["overrides"])
    version = Lake(lake).version("responses")
    prompt_ids = sorted(r["prompt_id"] for r in Lake(lake).read("prompts").to_pylist())
    task = score_task.with_options(result_storage=result_storage(lake))
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path / "nothing-local"}):
        states = [task(settings, "rerun", [pid], version, return_state=True)
                  for pid in prompt_ids]
    assert [s.name for s in states] == ["Cached"] * PROMPTS
    assert [s.result() for s in states] == killed_run["out"]["score"]
    assert not (tmp_path / "nothing-local").exists()


def test_tasks_carry_the_runs_temporary_api_to_their_workers():
    """A run without PREFECT_API_URL owns a temporary API; the settings each task carries to
    a Dask worker name it, so the worker does not start a temporary API of its own."""
    from prefect.context import serialize_context

    from flows.api import named_in_settings

    with named_in_settings("http://127.0.0.1:4200/api"):
        sent = serialize_context()["settings_context"]
    assert sent["settings"]["api"]["url"] == "http://127.0.0.1:4200/api"
