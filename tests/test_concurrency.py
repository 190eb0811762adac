"""Past one machine: writers at once never duplicate or lose a row, and no call is paid twice,
on a local lake and on S3 (moto over HTTP)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.embeddings import EndpointEmbedder
from tasks.lake import Lake
from tasks.leases import Lease, Store
from tasks.llm.cache import SharedCallCache
from tasks.llm.client import LLMClient
from tasks.llm.errors import LLMCallError
from tasks.score.stage import ScoreOptions, score_pending
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.score.test_real_judges import PROMPTS, varied_judge
from tests.score.test_scoring import _lake_with

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import random, sys
from datetime import UTC, datetime
from tasks.lake import Lake
lake, writer = Lake(sys.argv[1]), int(sys.argv[2])
keys = list(range(60))
random.Random(writer).shuffle(keys)
for start in range(0, len(keys), 20):
    lake.upsert("ingested_objects", [
        {"source_uri": f"s3://b/{k}", "etag": str(k), "size": writer, "n_prompts": 1,
         "n_rejects": 0, "run_id": f"w{writer}", "ingested_at": datetime.now(UTC)}
        for k in keys[start:start + 20]])
"""


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "lake")
    return f"s3://{request.getfixturevalue('bucket')}/lake"


def test_four_writers_at_once_never_duplicate_or_lose_a_row(root):
    """Four processes append the same 60 keys in random order, in rounds (an S3 commit on
    moto takes ~1.5 s, so one round there)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(3 if not root.startswith("s3://") else 1):
        table = f"{root}/r{round_}"
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, table, str(w)], env=env,
                                    cwd=ROOT, stderr=subprocess.PIPE, text=True)
                   for w in range(4)]
        for w in writers:
            _, err = w.communicate(timeout=240)
            assert w.returncode == 0, err[-2000:]
        rows = Lake(table).read("ingested_objects").to_pylist()
        assert sorted(int(r["etag"]) for r in rows) == list(range(60))  # once each, none lost


def test_a_lease_is_held_by_one_worker_and_lapses_when_its_holder_dies(root):
    store = Store(root)
    first, second = Lease(store, "x", ttl_s=3), Lease(store, "x", ttl_s=3)
    assert first.try_acquire() and not second.try_acquire()
    time.sleep(3.1)  # the first holder "died": its lease lapses, one taker wins it
    takers = [Lease(store, "x", ttl_s=30) for _ in range(4)]
    won: dict[int, bool] = {}
    threads = [threading.Thread(target=lambda i=i: won.__setitem__(i, takers[i].try_acquire()))
               for i in range(len(takers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won.values()) == [False, False, False, True]
    takers[next(i for i, w in won.items() if w)].release()
    assert second.try_acquire()


def _score_with(lake: Lake, server: FakeOpenAI, front: Path, max_retries: int = 3,
                store: str | None = None):
    async def go():
        cache = SharedCallCache(front / "cache.sqlite", store or f"{lake.root}/cache",
                                poll_s=0.05)
        async with LLMClient(base_url=server.url, model="judge", cache=cache,
                             backoff_base_s=0.01, max_retries=max_retries) as judge, \
                LLMClient(base_url=server.url, model="e", role="embeddings", cache=cache,
                          backoff_base_s=0.01, max_retries=max_retries) as embed:
            return await score_pending(lake, judge, EndpointEmbedder(embed),
                                       ScoreOptions(chunk_tokens=1024, flush_every=1), "run")
    return asyncio.run(go())


SPECS = PROMPTS["q"][:2]


def _answers() -> dict[str, list[str]]:
    return {"q": [s.text() for s in SPECS]}


def test_a_run_killed_on_one_machine_repays_nothing_on_another(bucket, tmp_path):
    """The outage aborts the first run midway; the rerun has an empty local disk and finds
    the finished calls in the shared store on S3."""
    lake = _lake_with(tmp_path, _answers(), context_words=300)
    store = f"s3://{bucket}/lake/cache"
    with FakeOpenAI(varied_judge) as server:
        server.inject(Fault.slow(0), times=12)
        server.inject(Fault.error(503), times=1000)  # the endpoint goes down for good
        with pytest.raises(LLMCallError):
            _score_with(lake, server, tmp_path / "machine-a", max_retries=0, store=store)
        paid_on_a = sum(server.answered.values())
        assert paid_on_a > 0
        server.clear_faults()
        _score_with(lake, server, tmp_path / "machine-b", store=store)
        # every request body was answered (paid) once over both runs
        assert sum(server.answered.values()) > paid_on_a
        assert max(server.answered.values()) == 1
    assert len(lake.read("judgments")) == 4 * len(SPECS)


def test_two_scorers_at_once_pay_each_call_once(tmp_path):
    """Two scoring runs over one lake at once (a local one: the same leases as on S3)."""
    lake = Lake(str(tmp_path / "lake"))
    src = _lake_with(tmp_path / "src", _answers(), context_words=300)
    for table in ("prompts", "responses"):
        lake.upsert(table, src.read(table))
    with FakeOpenAI(varied_judge, latency_s=0.05) as server:
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                _score_with(Lake(lake.root), server, tmp_path / f"machine-{n}")
            except BaseException as err:  # surfaced below
                errors.append(err)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert max(server.answered.values()) == 1  # every request body answered (paid) once
    judgments = lake.read("judgments").to_pylist()
    keys = [(r["response_id"], r["dimension"]) for r in judgments]
    assert len(keys) == len(set(keys)) == 4 * len(SPECS)
