"""Benchmark: past one machine.

1. Scoring throughput with 1, 2 and 4 worker *processes* over one lake, against a scripted
   endpoint with a fixed latency whose concurrency exceeds what one process drives (each
   process keeps ``--per-process`` calls in flight). The workers share the lake's call cache
   and table leases. Twice: plain processes that split the prompts between them, and a Dask
   cluster of single-threaded worker processes fed one batch of prompts per task (as the
   nightly flow's Dask runner does; the cluster's start is not timed).
2. The cost of a call-cache lookup: the local SQLite front, the shared store on a folder and on
   S3 (moto's server on loopback), and a miss.
3. A year of nights: ``--nights`` nightly commits of realistic size (new prompts, 10 answers
   each, 4 judgments per answer, statements, calls, pairs) into a fresh lake, then the example
   queries of ``sql/queries/`` and a few view queries timed before and after ``maintain``.

    python bench/scale.py                         # all three, defaults
    python bench/scale.py --only year --nights 365 --prompts-per-night 100
    python bench/scale.py --only dask --batch 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks import catalog, storage  # noqa: E402
from tasks.embedded_s3 import embedded_s3  # noqa: E402
from tasks.lake import Lake  # noqa: E402
from tasks.llm.cache import SharedCallCache  # noqa: E402
from tasks.maintenance import maintain  # noqa: E402
from tasks.schemas import DIMENSIONS  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402
from tests.score.test_real_judges import PROMPTS, varied_judge  # noqa: E402
from tests.score.test_scoring import _lake_with  # noqa: E402

WORKER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from scale import score_batch
print(json.dumps(score_batch(*sys.argv[2:5], json.loads(sys.argv[5]), int(sys.argv[6]))))
"""


def score_batch(lake_root: str, url: str, front: str, ids: list[str],
                concurrency: int) -> dict:
    """Score ``ids`` in this process, as one worker of the lake (plain process or Dask)."""
    import asyncio

    from tasks.embeddings import EndpointEmbedder
    from tasks.llm.client import LLMClient
    from tasks.score.stage import ScoreOptions, score_pending

    lake = Lake(lake_root)

    async def go() -> dict:
        cache = SharedCallCache(front, lake.root + "/cache")
        async with LLMClient(base_url=url, model="judge", cache=cache,
                             concurrency=concurrency) as judge, \
                LLMClient(base_url=url, model="e", role="embeddings", cache=cache) as embed:
            r = await score_pending(lake, judge, EndpointEmbedder(embed), ScoreOptions(
                chunk_tokens=1024, prompts_in_flight=max(1, concurrency // 4)), "bench",
                prompt_ids=ids)
        return {"responses": r.responses, "calls": r.judge_calls}

    return asyncio.run(go())


def _answers(args: argparse.Namespace) -> dict[str, list[str]]:
    specs = [s.text() for s in PROMPTS["p"][:5] + PROMPTS["q"][:5]]
    return {f"p{i:03d}": specs for i in range(args.score_prompts)}


def _said(n: int, how: str, responses: int, seconds: float, server: FakeOpenAI) -> None:
    print(f"{n} {how}: {responses} answers in {seconds:6.1f}s = "
          f"{responses / seconds:6.2f} answers/s, {server.requests_total} requests, "
          f"max in flight {server.max_in_flight}, repeated {server.repeated_requests}")


def _sized_runs(args: argparse.Namespace):
    """For 1, 2 and 4 workers: a fresh scripted endpoint and lake of the same answers."""
    answers = _answers(args)
    for n in (1, 2, 4):
        with tempfile.TemporaryDirectory() as tmp, \
                FakeOpenAI(varied_judge, latency_s=args.latency) as server:
            yield n, tmp, server, _lake_with(Path(tmp), answers, context_words=600), \
                sorted(answers)


def bench_workers(args: argparse.Namespace) -> None:
    print(f"== scoring with worker processes (latency {args.latency}s, "
          f"{args.per_process} calls in flight per process) ==")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for n, tmp, server, lake, ids in _sized_runs(args):
        started = time.perf_counter()
        procs = [subprocess.Popen(
            [sys.executable, "-c", WORKER, str(ROOT / "bench"), lake.root, server.url,
             f"{tmp}/front-{w}.sqlite", json.dumps(ids[w::n]), str(args.per_process)],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            for w in range(min(n, len(ids)))]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        _said(n, "process(es)", sum(o["responses"] for o in outs),
              time.perf_counter() - started, server)


def _dask_batch(lake_root: str, url: str, front_dir: str, ids: list[str],
                concurrency: int) -> dict:
    """One task on a Dask worker: its process keeps one call-cache front."""
    return score_batch(lake_root, url, f"{front_dir}/front-{os.getpid()}.sqlite", ids,
                       concurrency)


def bench_dask(args: argparse.Namespace) -> None:
    from distributed import Client, LocalCluster

    print(f"== scoring on a Dask cluster of worker processes (latency {args.latency}s, "
          f"{args.per_process} calls in flight per process, {args.batch} prompts a task) ==")
    for n, tmp, server, lake, ids in _sized_runs(args):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            batches = [ids[i:i + args.batch] for i in range(0, len(ids), args.batch)]
            started = time.perf_counter()
            futures = client.map(_dask_batch, [lake.root] * len(batches),
                                 [server.url] * len(batches), [tmp] * len(batches), batches,
                                 [args.per_process] * len(batches), pure=False)
            outs = client.gather(futures)
            _said(n, "Dask worker process(es)", sum(o["responses"] for o in outs),
                  time.perf_counter() - started, server)


def _lookup_ms(cache: SharedCallCache, keys: list[str]) -> float:
    started = time.perf_counter()
    for key in keys:
        assert cache.get(key) is not None
    return (time.perf_counter() - started) * 1000 / len(keys)


def bench_lookups(args: argparse.Namespace) -> None:
    print("== call-cache lookup cost (ms per lookup) ==")
    response = {"text": "x" * 800, "finish_reason": "stop",
                "usage": {"prompt_tokens": 900, "completion_tokens": 200}}
    keys = [f"{i:064x}" for i in range(args.lookups)]
    with tempfile.TemporaryDirectory() as tmp, embedded_s3() as _:
        storage.s3_client().create_bucket(Bucket="bench-cache")
        for where, store in (("folder", f"{tmp}/store"), ("s3", "s3://bench-cache/store")):
            writer = SharedCallCache(Path(tmp) / f"w-{where}.sqlite", store)
            for key in keys:
                writer.put(key, role="judge", model="m", response=response)
            cold = SharedCallCache(Path(tmp) / f"cold-{where}.sqlite", store)
            shared_ms = _lookup_ms(cold, keys)        # front empty: read from the store
            front_ms = _lookup_ms(cold, keys)         # now in the front
            started = time.perf_counter()
            for i in range(args.lookups):
                assert cold.get(f"{i:063x}m") is None
            miss_ms = (time.perf_counter() - started) * 1000 / args.lookups
            print(f"{where:6s}: local front hit {front_ms:6.3f}   shared-store hit "
                  f"{shared_ms:6.3f}   miss {miss_ms:6.3f}")


def _night(lake: Lake, night: int, prompts: int, rng: random.Random) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=night)
    run = f"night-{night:03d}"
    pids = [f"n{night:03d}-p{i:04d}" for i in range(prompts)]
    lake.upsert("prompts", [{
        "prompt_id": pid, "source_uri": f"s3://in/{night}.jsonl", "source_etag": run,
        "context": "context " * 200, "query": "what happened?", "context_tokens": 8000 + i,
        "query_tokens": 4, "tokenizer": "t", "run_id": run, "ingested_at": at}
        for i, pid in enumerate(pids)])
    responses = [(pid, f"{pid}-{k}") for pid in pids for k in range(10)]
    lake.upsert("responses", [{
        "response_id": rid, "prompt_id": pid, "sample_index": int(rid.rsplit("-", 1)[1]),
        "text": "answer " * 60, "policy_model": "m", "run_id": run, "created_at": at}
        for pid, rid in responses])
    lake.upsert("judgments", [{
        "response_id": rid, "prompt_id": pid, "dimension": d, "score": rng.uniform(0, 10),
        "status": "ok", "judge_model": "j", "rationale": "why " * 30, "run_id": run,
        "created_at": at, "judge_calls": 1, "reasks": 0}
        for pid, rid in responses for d in DIMENSIONS])
    lake.upsert("statements", [{
        "response_id": rid, "statement_index": s, "text": "a statement", "support": "full",
        "evidence_chunk_ids": [1, 2, 3, 4, 5], "run_id": run}
        for _, rid in responses for s in range(4)])
    lake.upsert("llm_calls", [{
        "call_id": f"{rid}-{c}", "request_hash": f"{rid}-{c}", "role": "judge", "model": "j",
        "tokens_in": 2000, "tokens_out": 200, "latency_ms": 900.0, "cost_usd": 0.001,
        "cached": False, "status": "ok", "run_id": run, "created_at": at,
        "purpose": "helpfulness", "attempt": 0} for _, rid in responses for c in range(8)])
    lake.upsert("pairs", [{
        "prompt_id": pid, "chosen_response_id": f"{pid}-0", "rejected_response_id": f"{pid}-9",
        "chosen_reward": 8.0, "rejected_reward": 2.0, "margin": 6.0, "status": "paired",
        "run_id": run, "created_at": at, "candidates_hash": run} for pid in pids])


QUERIES = {
    **{p.stem: p.read_text() for p in sorted((ROOT / "sql" / "queries").glob("*.sql"))},
    "rewards_top": "SELECT * FROM rewards ORDER BY reward DESC LIMIT 20",
    "pairs_latest_count": "SELECT count(*) FROM pairs_latest WHERE status = 'paired'",
    "cost_by_run": "SELECT run_id, sum(cost_usd) FROM llm_calls GROUP BY 1",
}


def _time_queries(lake: Lake) -> dict[str, float]:
    times = {}
    started = time.perf_counter()
    con = catalog.connect(lake)
    times["connect"] = time.perf_counter() - started
    for name, sql in QUERIES.items():
        started = time.perf_counter()
        con.execute(sql).fetchall()
        times[name] = time.perf_counter() - started
    return times


def bench_year(args: argparse.Namespace) -> None:
    print(f"== a year of nights: {args.nights} nights x {args.prompts_per_night} prompts ==")
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(f"{tmp}/lake")
        started = time.perf_counter()
        per_night = []
        for night in range(args.nights):
            t = time.perf_counter()
            _night(lake, night, args.prompts_per_night, rng)
            per_night.append(time.perf_counter() - t)
        print(f"writing: {time.perf_counter() - started:.1f}s; first night "
              f"{per_night[0]:.2f}s, last night {per_night[-1]:.2f}s")
        files = {t: len(lake.files(t)) for t in ("judgments", "llm_calls", "pairs")}
        rows = {t: lake.count(t) for t in ("judgments", "llm_calls", "pairs")}
        print(f"rows {rows}; files {files}")
        before = _time_queries(lake)
        started = time.perf_counter()
        done = maintain(lake, retention_hours=0)
        print(f"maintain: {time.perf_counter() - started:.1f}s, files after "
              f"{ {t.table: t.files_after for t in done if t.table in files} }")
        after = _time_queries(lake)
        print(f"{'query':22s} {'before (s)':>11s} {'after (s)':>10s}")
        for name in before:
            print(f"{name:22s} {before[name]:11.3f} {after[name]:10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["workers", "dask", "lookups", "year"])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--per-process", type=int, default=8)
    parser.add_argument("--score-prompts", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2, help="Prompts per Dask task.")
    parser.add_argument("--lookups", type=int, default=300)
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--prompts-per-night", type=int, default=50)
    args = parser.parse_args()
    for name, run in (("workers", bench_workers), ("dask", bench_dask),
                      ("lookups", bench_lookups), ("year", bench_year)):
        if args.only in (None, name):
            run(args)


if __name__ == "__main__":
    main()
