"""Runs that cannot wedge: `longreward run` on its own temporary Prefect API, killed and rerun
with the same PREFECT_HOME (no PREFECT_API_URL: the way a user runs it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tasks.demo_data import jsonl, make_prompts
from tasks.lake import Lake
from tests.fakes.openai_server import FakeOpenAI
from tests.flows.test_nightly import judge_reply

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = 2


def _env(tmp_path: Path, judge: FakeOpenAI) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "LONGREWARD_"))}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200",
            "LONGREWARD_JUDGE_BASE_URL": judge.url, "LONGREWARD_JUDGE_MODEL": "scripted",
            "LONGREWARD_EMBEDDINGS_BASE_URL": judge.url,
            "LONGREWARD_EMBEDDINGS_MODEL": "scripted-embed",
            "LONGREWARD_OFFLINE": "true",   # the policy: the offline stand-in, declared
            "LONGREWARD_SAMPLES_PER_PROMPT": "2", "LONGREWARD_PAIR_MIN_ANSWERS": "2",
            "LONGREWARD_JUDGE_CONCURRENCY": "4"}


def _run(tmp_path: Path, judge: FakeOpenAI, **kw) -> subprocess.Popen:
    source = tmp_path / "in"
    if not source.exists():
        source.mkdir()
        (source / "prompts.jsonl").write_bytes(
            jsonl([p.record() for p in make_prompts(PROMPTS, target_words=300)]))
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--source", str(source), "--lake",
         str(tmp_path / "lake"), "--batch-prompts", "1"], cwd=ROOT, env=_env(tmp_path, judge),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _servers(home: Path) -> list[psutil.Process]:
    """Prefect API servers (and watchdogs) started for this PREFECT_HOME, still running."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
            if ("prefect.server.api.server:create_app" in line or "flows.watchdog" in line) \
                    and proc.environ().get("PREFECT_HOME") == str(home) \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _until_scoring(proc: subprocess.Popen, judge: FakeOpenAI, calls: int = 6) -> None:
    deadline = time.time() + 180
    while judge.by_path.get("/v1/chat/completions", 0) < calls:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "scoring never started"
        time.sleep(0.05)


def _gone(home: Path, within_s: float) -> bool:
    deadline = time.time() + within_s
    while _servers(home) and time.time() < deadline:
        time.sleep(0.2)
    return not _servers(home)


def test_stopped_and_killed_runs_leave_nothing_that_stops_the_next(tmp_path):
    """SIGTERM stops a run within seconds; a SIGKILLed run's API server goes too; a rerun with
    the same PREFECT_HOME waits, out loud, for the dead runs' slots, gets them back when their
    lease lapses, and completes."""
    home = tmp_path / "prefect"
    with FakeOpenAI(judge_reply, latency_s=2.0) as judge:   # slow: work is left at the kill
        stopped = _run(tmp_path, judge)
        _until_scoring(stopped, judge)
        sent = time.time()
        stopped.send_signal(signal.SIGTERM)
        out, _ = stopped.communicate(timeout=30)
        took = time.time() - sent
        assert stopped.returncode == 128 + signal.SIGTERM, out
        assert "stopped by SIGTERM" in out and took < 15, f"{took:.1f}s: {out}"
        assert _gone(home, within_s=5), "the temporary API outlived the stopped run"

        killed = _run(tmp_path, judge)
        _until_scoring(killed, judge, calls=judge.by_path["/v1/chat/completions"] + 6)
        assert _servers(home), "the run should have its own temporary API"
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert _gone(home, within_s=15), "the killed run's temporary API lives on"

        judge.latency_s = 0.02
        rerun = _run(tmp_path, judge)
        out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert "slot(s) of the concurrency limit 'longreward-judge' (4 of 4 in use)" in out
    assert out.count("slot(s) of 'longreward-judge' that no live lease holds") >= 1
    assert Lake(str(tmp_path / "lake")).count("judgments") == PROMPTS * 2 * 4
    assert _gone(home, within_s=5)
    assert "Error logging to API" not in out
