"""A killed process (SIGKILL, not an exception) leaves no partial and no duplicate rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tasks.demo_data import jsonl, make_prompts
from tasks.ingest import IngestOptions, ingest
from tasks.lake import Lake


def _env() -> dict[str, str]:
    """The current environment (the S3 fixture points AWS_* at moto) for child processes."""
    return {**os.environ, "COLUMNS": "200"}


def test_killed_write_commits_all_or_nothing(tmp_path):
    root = str(tmp_path / "lake")
    script = textwrap.dedent(f"""
        from datetime import UTC, datetime
        from tasks.lake import Lake
        now = datetime.now(UTC)
        rows = [{{"reject_id": f"k{{i}}", "source_uri": "s3://b/x", "line": i,
                  "reason_code": "c", "reason": "r" * 200, "run_id": "w", "rejected_at": now}}
                 for i in range(150_000)]
        print("writing", flush=True)
        Lake({root!r}).upsert("rejects", rows)
    """)
    lake = Lake(root)
    lake.ensure("rejects")
    for delay in (0.3, 0.9, 1.5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=_env())
        assert proc.stdout.readline().strip() == b"writing"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert lake.count("rejects") in (0, 150_000)
    subprocess.run([sys.executable, "-c", script], check=True, env=_env(),
                   stdout=subprocess.DEVNULL)
    assert lake.count("rejects") == 150_000
    assert len(lake.keys("rejects")) == 150_000


def test_ingest_killed_midway_reruns_to_the_same_tables(tmp_path, bucket, put, s3_endpoint):
    prompts = make_prompts(60, seed=3, target_words=400)
    for i in range(6):
        put(f"in/part-{i}.jsonl", jsonl([p.record() for p in prompts[i * 10:(i + 1) * 10]])
            + b'{"broken\n')
    source = f"s3://{bucket}/in"
    killed = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "flows.cli", "ingest", "--lake", killed, "--source", source]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=_env())
    seen = b""
    while b"ingested s3://" not in seen:
        line = proc.stderr.readline()
        assert line, f"ingest ended before the first object: {seen.decode()}"
        seen += line
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < Lake(killed).count("prompts") < 60

    subprocess.run(cmd, check=True, env=_env(), capture_output=True)
    reference = Lake(str(tmp_path / "reference"))
    ingest(reference, source, IngestOptions("all-MiniLM-L6-v2", 131_072, 4_096), run_id="ref")
    for table, key in (("prompts", "prompt_id"), ("rejects", "reject_id"),
                       ("ingested_objects", "source_uri")):
        got = sorted(Lake(killed).read(table, columns=[key]).column(0).to_pylist())
        want = sorted(reference.read(table, columns=[key]).column(0).to_pylist())
        assert got == want, table
        assert len(got) == len(set(got)), f"duplicates in {table}"
    assert len(got) == 6
