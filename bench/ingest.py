"""Benchmark: ingest N long prompts from an embedded S3, then SQL over 1M judgment rows.

Prints prompts/s, MB/s, tokens/s and peak memory of the ingesting process (moto's server runs
in its own process so its memory is not counted), then the time of a DuckDB group-by over
synthetic judgments. Defaults follow issue #2: 10,000 prompts of ~32k tokens.

    python bench/ingest.py                       # the full figure (~10 min on 2 cores)
    python bench/ingest.py --prompts 500         # a quick look
"""

from __future__ import annotations

import argparse
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks import catalog, storage  # noqa: E402
from tasks.demo_data import jsonl, make_prompt  # noqa: E402
from tasks.embedded_s3 import free_port  # noqa: E402
from tasks.ingest import IngestOptions, ingest  # noqa: E402
from tasks.lake import Lake  # noqa: E402
from tasks.schemas import DIMENSIONS  # noqa: E402
from tasks.tokens import count_tokens, load_tokenizer  # noqa: E402


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto server did not start")


def base_documents(n: int, target_tokens: int) -> list[str]:
    """A few distinct ~target-token documents; prompts vary them by a header line."""
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    docs = []
    for i in range(n):
        words = int(target_tokens / 1.3)
        doc = make_prompt(i, seed=11, target_words=words).context
        while count_tokens(tokenizer, [doc])[0] < target_tokens:
            words = int(words * 1.05)
            doc = make_prompt(i, seed=11, target_words=words).context
        docs.append(doc)
    return docs


def upload(bucket: str, n_prompts: int, per_object: int, docs: list[str]) -> int:
    client = storage.s3_client()
    total = 0
    for start in range(0, n_prompts, per_object):
        records = [{"id": f"bench-{i}", "context": f"Record {i}.\n\n{docs[i % len(docs)]}",
                    "query": f"What does record {i} report about the figures?"}
                   for i in range(start, min(start + per_object, n_prompts))]
        body = jsonl(records)
        total += len(body)
        client.put_object(Bucket=bucket, Key=f"prompts/part-{start // per_object:05d}.jsonl",
                          Body=body)
    return total


def bench_ingest(args: argparse.Namespace, root: Path) -> None:
    print(f"building {args.prompts} prompts of ~{args.tokens} tokens ...", flush=True)
    docs = base_documents(8, args.tokens)
    uploaded = upload("bench", args.prompts, args.per_object, docs)
    print(f"uploaded {uploaded / 1e6:.0f} MB in {-(-args.prompts // args.per_object)} objects")
    lake = Lake(str(root / "lake"))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    report = ingest(lake, "s3://bench/prompts",
                    IngestOptions("all-MiniLM-L6-v2", 131_072, 4_096), run_id="bench")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    again = time.perf_counter()
    second = ingest(lake, "s3://bench/prompts", IngestOptions("all-MiniLM-L6-v2", 131_072, 4_096),
                    run_id="bench-2")
    rerun = time.perf_counter() - again
    print("\n== ingest ==")
    print(f"prompts ingested     {report.prompts:>12,}   (rejects {report.rejects})")
    print(f"wall time            {seconds:>12.1f} s")
    print(f"prompts/s            {report.prompts / seconds:>12.1f}")
    print(f"MB/s (source bytes)  {report.bytes / 1e6 / seconds:>12.1f}")
    print(f"tokens/s             {report.tokens / seconds:>12,.0f}   "
          f"(mean {report.tokens / max(report.prompts, 1):,.0f} tokens/prompt)")
    print(f"peak RSS             {peak:>12.0f} MiB   (before ingest {rss_before:.0f} MiB)")
    print(f"rerun (nothing new)  {rerun:>12.2f} s   ({second.objects_new} new objects)")


def bench_sql(args: argparse.Namespace, root: Path) -> None:
    lake = Lake(str(root / "sql-lake"))
    rng = random.Random(0)
    now = datetime.now(UTC)
    n_responses = args.judgments // len(DIMENSIONS)
    rows = [{"response_id": f"r{i}", "prompt_id": f"p{i // 10}", "dimension": d,
             "score": None if rng.random() < 0.01 else round(rng.uniform(0, 10), 1),
             "status": "ok", "judge_model": "bench", "run_id": f"run-{i % 30:02d}",
             "created_at": now}
            for i in range(n_responses) for d in DIMENSIONS]
    started = time.perf_counter()
    lake.upsert("judgments", rows)
    write = time.perf_counter() - started
    del rows
    timings = {}
    for door, con in (("", catalog.connect(lake)), ("sandboxed: ", catalog.sandbox(lake))):
        _time_queries(con, door, timings)
    print("\n== SQL over judgments ==")
    print(f"rows                 {n_responses * len(DIMENSIONS):>12,}")
    print(f"lake write (keyed append)   {write:>12.2f} s")
    for name, seconds in timings.items():
        print(f"{name:<40} {seconds * 1000:>8.0f} ms (best of 3)")


def _time_queries(con, door: str, timings: dict) -> None:
    """Best of 3 per query; ``sandboxed:`` is what ``longreward sql`` runs (Arrow datasets,
    external access off) next to the internal connection (DuckDB's Parquet reader)."""
    for name, sql in {
        "group by run, dimension": "SELECT run_id, dimension, count(*), avg(score), "
        "count(*) - count(score) AS failed FROM judgments GROUP BY ALL",
        "rewards view (pivot + mean)": "SELECT run_id, avg(reward), count(reward) FROM rewards "
        "GROUP BY run_id",
        "score_distribution view": "SELECT * FROM score_distribution",
    }.items():
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            con.execute(sql).fetchall()
            best = min(best, time.perf_counter() - t)
        timings[door + name] = best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=32_000, help="context tokens per prompt")
    parser.add_argument("--per-object", type=int, default=100, help="prompts per S3 object")
    parser.add_argument("--judgments", type=int, default=1_000_000)
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_ingest:
            proc, endpoint = start_moto()
            import os

            os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
            try:
                storage.s3_client().create_bucket(Bucket="bench")
                bench_ingest(args, Path(tmp))
            finally:
                proc.terminate()
        bench_sql(args, Path(tmp))


if __name__ == "__main__":
    main()
