"""The nightly flow under Prefect: end to end, resumable after SIGKILL, retried through an
outage, and able to trigger training on the version it published."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from flows.demo import DEMO_BUCKET, upload_demo_prompts
from flows.nightly import nightly_refresh
from tasks.lake import Lake
from tasks.llm.cache import request_hash
from tests.fakes.openai_server import FakeOpenAI, Fault

ROOT = Path(__file__).resolve().parents[2]


def judge_reply(request: dict) -> str:
    """A protocol-following judge: fixed verdicts, varied scores so pairs exist."""
    if "messages" not in request:
        return ""
    title = request["messages"][0]["content"].splitlines()[0].lower()
    user = request["messages"][-1]["content"]
    score = len(user) % 7 + 3
    if "listing factual statements" in title:
        return "<statement>The first fact.</statement>\n<statement>The second fact.</statement>"
    if "grading support" in title:
        return "Supported.\n[[Fully supported]]" if len(user) % 2 else "Hm.\n[[No support]]"
    if "extracting information" in title:
        return "1. A relevant point.\n2. Another one."
    return f"Analysis.\n[[{score}]]"


def _demo_source(n: int) -> str:
    from tasks import storage

    with contextlib.suppress(Exception):  # the bucket is there after the first test
        storage.s3_client().create_bucket(Bucket=DEMO_BUCKET)
    return upload_demo_prompts(n)


def _latest_artifact(api: str, key: str) -> str:
    """The newest artifact with ``key``, read over the Prefect REST API (prefect 3.8's client
    sends nulls for the optional filters, which this server version refuses)."""
    reply = httpx.post(f"{api}/artifacts/filter", json={
        "artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1, "offset": 0})
    reply.raise_for_status()
    return reply.json()[0]["data"]


def _counts(lake: Lake) -> dict[str, int]:
    return {t: lake.count(t) for t in ("prompts", "responses", "judgments", "statements",
                                       "key_points", "pairs", "datasets")}


def test_flow_end_to_end_then_a_rerun_does_nothing_new(prefect_api, s3_endpoint, tmp_path):
    src = _demo_source(3)
    lake = str(tmp_path / "lake")
    first = nightly_refresh(lake=lake, source=src, batch_prompts=2,
                            overrides={"samples_per_prompt": 4, "pair_min_answers": 4})
    assert first["ingest"]["prompts"] == 3
    assert sum(b["responses"] for b in first["sample"]) == 12
    assert sum(b["ok"] for b in first["score"]) == 48
    assert first["publish"]["dataset_version"] == "v1"
    report = _latest_artifact(prefect_api, "nightly-report")
    assert first["run_id"] in report and "faithfulness" in report
    assert Path(lake, "reports", first["run_id"], "scores.png").is_file()
    _one_run_one_name(prefect_api, lake, first["run_id"])
    assert Path(lake, "reports", first["run_id"], "trend.png").is_file()
    before = _counts(Lake(lake))
    second = nightly_refresh(lake=lake, source=src, batch_prompts=2,
                             overrides={"samples_per_prompt": 4, "pair_min_answers": 4})
    assert second["ingest"]["prompts"] == 0 and second["sample"] == [] and second["score"] == []
    assert second["publish"] == {**second["publish"], "dataset_version": "v1", "created": False}
    after = _counts(Lake(lake))
    assert after == before  # a night with nothing new writes nothing, pairs included


def _flow_env(prefect_api: str, judge: FakeOpenAI) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": prefect_api,
            "LONGREWARD_JUDGE_BASE_URL": judge.url, "LONGREWARD_JUDGE_MODEL": "scripted",
            "LONGREWARD_EMBEDDINGS_BASE_URL": judge.url,
            "LONGREWARD_EMBEDDINGS_MODEL": "scripted-embed", "LONGREWARD_SAMPLES_PER_PROMPT": "4",
            "LONGREWARD_PAIR_MIN_ANSWERS": "4",
            "LONGREWARD_JUDGE_CONCURRENCY": "4"}


def _cached_hashes(path: Path) -> set[str]:
    with sqlite3.connect(path) as con:
        return {row[0] for row in con.execute("SELECT request_hash FROM llm_cache")}


def _hash_of(body: dict) -> str:
    """The client's cache key of a request, rebuilt from what reached the server."""
    if "messages" in body:
        params = {"endpoint": "chat", "temperature": body["temperature"],
                  "top_p": body["top_p"], "max_tokens": body["max_tokens"],
                  "seed": body.get("seed"), "n": 1}
        return request_hash(body["model"], body["messages"], params)
    return request_hash(body["model"], body["input"], {"endpoint": "embeddings"})


RUN = ("import sys; from flows.nightly import nightly_refresh; "
       "nightly_refresh(lake=sys.argv[1], source=sys.argv[2], batch_prompts=1)")


def _judge_limit_with_room(slots: int) -> None:
    """The killed run's slots return only when their lease lapses, which takes a real server's
    lease repossessor; the test API has none, so the limit leaves the rerun room of its own."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    from flows.nightly import JUDGE_LIMIT

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(JUDGE_LIMIT)
            client.update_global_concurrency_limit(
                JUDGE_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots))
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=JUDGE_LIMIT, limit=slots))


def test_killed_mid_scoring_rerun_repeats_no_call(prefect_api, s3_endpoint, tmp_path):
    src = _demo_source(2)
    _judge_limit_with_room(16)   # the runs use judge_concurrency 4: 2 batches x 2 slots
    with FakeOpenAI(judge_reply, latency_s=0.02) as judge, \
            FakeOpenAI(judge_reply) as reference_judge:
        killed = str(tmp_path / "killed")
        proc = subprocess.Popen([sys.executable, "-c", RUN, killed, src], cwd=ROOT,
                                env=_flow_env(prefect_api, judge), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while judge.by_path.get("/v1/chat/completions", 0) < 24:
            assert proc.poll() is None, "the flow ended before it was killed"
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = _cached_hashes(Path(killed) / "llm_cache.sqlite")
        asked_before = len(judge.bodies)
        partial = Lake(killed).count("judgments")
        assert len(finished) > 0 and partial < 2 * 4 * 4

        subprocess.run([sys.executable, "-c", RUN, killed, src], cwd=ROOT, check=True,
                       env=_flow_env(prefect_api, judge), capture_output=True)
        # No call finished before the kill (answer in the call cache) is paid again; only the
        # few in flight at the kill, answered by the server but never received, may be.
        again = [_hash_of(body) for body in judge.bodies[asked_before:]]
        assert not finished & set(again)

        whole = str(tmp_path / "whole")
        subprocess.run([sys.executable, "-c", RUN, whole, src], cwd=ROOT, check=True,
                       env=_flow_env(prefect_api, reference_judge), capture_output=True)
    assert _counts(Lake(killed)) == _counts(Lake(whole))
    assert Lake(killed).count("judgments") == 2 * 4 * 4
    # killed + rerun paid at most the calls in flight at the kill more than one clean run
    paid, clean = (j.by_path["/v1/chat/completions"] for j in (judge, reference_judge))
    assert clean <= paid <= clean + judge.max_in_flight


def test_a_judge_outage_is_retried_into_a_completed_run(prefect_api, s3_endpoint, tmp_path,
                                                        monkeypatch):
    src = _demo_source(2)
    with FakeOpenAI(judge_reply) as judge:
        for key, value in _flow_env(prefect_api, judge).items():
            if key.startswith("LONGREWARD_"):
                monkeypatch.setenv(key, value)
        judge.inject(Fault.error(503), times=6)   # every attempt of the first call fails
        out = nightly_refresh(lake=str(tmp_path / "lake"), source=src, batch_prompts=2,
                              overrides={"max_retries": 2, "task_retries": 3,
                                         "task_retry_delay_s": 0.1})
        assert judge.statuses[503] == 6
    assert sum(b["failed"] for b in out["score"]) == 0
    assert sum(b["ok"] for b in out["score"]) == 2 * 4 * 4


def test_training_trigger_receives_the_dataset_version(prefect_api):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.nightly import trigger_training_task

    @flow(name="train-dpo-probe")
    def probe(dataset_version: str) -> str:
        return dataset_version

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(probe)
        deployment_id = client.create_deployment(flow_id=flow_id, name="probe")
    run_id = trigger_training_task.fn("v7", deployment="train-dpo-probe/probe")
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    assert run.deployment_id == deployment_id
    assert run.parameters == {"dataset_version": "v7"}
    assert re.fullmatch(r"[0-9a-f-]{36}", run_id)
    # a retried trigger (or a rerun of the night) finds the same training, not a second one
    assert trigger_training_task.fn("v7", deployment="train-dpo-probe/probe") == run_id
    assert trigger_training_task.fn("v8", deployment="train-dpo-probe/probe") != run_id


def _one_run_one_name(prefect_api: str, lake: str, run_id: str) -> None:
    """The flow run is named after the lake's run id; the dataset records the flow run; the
    runs command shows both, with the state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from typer.testing import CliRunner

    from flows.cli import app
    from tasks.publish import get_version

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id])))
    assert len(runs) == 1 and runs[0].flow_id is not None
    assert get_version(Lake(lake), "v1").lineage["flow_run_id"] == str(runs[0].id)
    shown = CliRunner().invoke(app, ["runs", "--lake", lake],
                               env={"PREFECT_API_URL": prefect_api, "COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert run_id in shown.output and "Completed" in shown.output and "v1" in shown.output
