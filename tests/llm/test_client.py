"""LLMClient against a real (scripted) OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tasks.config import Settings
from tasks.llm import CallCache, LLMCallError, LLMClient, request_hash
from tasks.llm.client import default_cache_path
from tasks.schemas import LLM_CALLS
from tasks.score.protocol import ProtocolError, parse_score
from tests.fakes import FakeOpenAI, Fault

MSGS = [{"role": "system", "content": "You grade answers."},
        {"role": "user", "content": "Rate this answer: the sky is blue"}]
SAMPLING = {"temperature": 0.1, "top_p": 1.0, "max_tokens": 64}


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(lambda request: "The answer is fine. Rating: [[7.5]]") as fake:
        yield fake


def make_client(server: FakeOpenAI, tmp_path: Path, **kwargs: Any) -> LLMClient:
    defaults: dict[str, Any] = {
        "base_url": server.url, "model": "judge-m", "api_key": "sk-test-secret",
        "cache": tmp_path / "cache.sqlite", "run_id": "run-1", "timeout_s": 1.0,
        "max_retries": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
        "cost_per_mtok_in": 2.0, "cost_per_mtok_out": 8.0,
    }
    return LLMClient(**{**defaults, **kwargs})


def run(coro_fn: Any, client: LLMClient) -> Any:
    """Run ``coro_fn(client)`` in a fresh loop and close the client afterwards."""
    async def main() -> Any:
        async with client:
            return await coro_fn(client)
    return asyncio.run(main())


def chat(client: LLMClient, messages: list[dict[str, str]] = MSGS, **kw: Any) -> Any:
    return client.chat(messages, **{**SAMPLING, **kw})


def assert_rows_valid(rows: list[dict[str, Any]]) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=LLM_CALLS.schema)
    assert table.num_rows == len(rows)
    assert table.schema.names == LLM_CALLS.schema.names
    return table


def test_chat_returns_text_usage_cost_and_one_valid_row(server, tmp_path):
    client = make_client(server, tmp_path)
    result = run(lambda c: chat(c), client)

    assert result.text == "The answer is fine. Rating: [[7.5]]"
    assert parse_score(result.text) == 7.5
    assert result.finish_reason == "stop"
    assert (result.tokens_in, result.tokens_out) == (10, 6)  # the fake counts words
    assert not result.cached and len(result.request_hash) == 64
    rows = client.drain_call_log()
    assert client.call_log == []
    assert_rows_valid(rows)
    (row,) = rows
    assert row["status"] == "ok" and row["cached"] is False and row["role"] == "judge"
    assert row["model"] == "judge-m" and row["run_id"] == "run-1"
    assert row["request_hash"] == result.request_hash
    assert (row["tokens_in"], row["tokens_out"]) == (10, 6)
    assert row["cost_usd"] == pytest.approx((10 * 2.0 + 6 * 8.0) / 1e6)
    assert row["latency_ms"] > 0
    assert client.stats() == {"calls_made": 1, "retries": 0, "cache_hits": 0, "failures": 0,
                              "coalesced": 0}
    # the key goes to the server, and nowhere else
    assert server.last_headers["authorization"] == "Bearer sk-test-secret"
    assert "sk-test-secret" not in repr(client) + repr(rows)


def test_429_storm_with_retry_after_ends_in_results_after_waiting(server, tmp_path):
    server.inject(Fault.rate_limit(retry_after=0), times=6)
    server.inject(Fault.rate_limit(retry_after=1), times=2)
    client = make_client(server, tmp_path, max_retries=6, concurrency=4)
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(4)]

    start = time.perf_counter()
    results = run(lambda c: asyncio.gather(*(chat(c, p) for p in prompts)), client)
    elapsed = time.perf_counter() - start

    assert [r.text for r in results] == ["The answer is fine. Rating: [[7.5]]"] * 4
    assert client.retries == 8 and server.statuses[429] == 8 and server.statuses[200] == 4
    assert elapsed >= 1.0  # waited for Retry-After: 1, not the 10 ms backoff
    assert elapsed < 4.0
    assert {row["status"] for row in client.drain_call_log()} == {"ok"}


def test_retry_after_is_honoured_for_one_call(server, tmp_path):
    server.inject(Fault.rate_limit(retry_after=1))
    client = make_client(server, tmp_path)
    start = time.perf_counter()
    run(lambda c: chat(c), client)
    assert 1.0 <= time.perf_counter() - start < 2.0
    assert client.retries == 1 and server.requests_total == 2


def test_server_errors_then_success(server, tmp_path):
    server.inject(Fault.error(500), times=2)
    server.inject(Fault.error(503))
    client = make_client(server, tmp_path)
    result = run(lambda c: chat(c), client)
    assert "[[7.5]]" in result.text
    assert client.retries == 3 and server.requests_total == 4
    assert server.statuses == {500: 2, 503: 1, 200: 1}


def test_timeout_then_success(server, tmp_path):
    server.inject(Fault.hang(seconds=5))
    client = make_client(server, tmp_path, timeout_s=0.3)
    start = time.perf_counter()
    result = run(lambda c: chat(c), client)
    assert time.perf_counter() - start < 2.0  # gave up on the hang at ~0.3 s
    assert not result.cached and client.retries == 1 and server.requests_total == 2


def test_slow_answer_within_timeout_is_not_retried(server, tmp_path):
    server.inject(Fault.slow(0.2))
    client = make_client(server, tmp_path, timeout_s=1.0)
    result = run(lambda c: chat(c), client)
    assert result.latency_ms >= 200 and client.retries == 0 and server.requests_total == 1


@pytest.mark.parametrize("max_retries", [0, 2])
def test_permanent_failure_raises_after_bounded_retries(server, tmp_path, max_retries):
    server.inject(Fault.error(502), times=100)
    client = make_client(server, tmp_path, max_retries=max_retries)
    with pytest.raises(LLMCallError) as info:
        run(lambda c: chat(c), client)
    err = info.value
    assert err.kind == "server_error" and err.status_code == 502
    assert err.attempts == 1 + max_retries
    assert server.requests_total == 1 + max_retries
    assert client.failures == 1 and client.retries == max_retries
    (row,) = client.drain_call_log()
    assert row["status"] == "error:server_error" and row["cached"] is False
    assert row["tokens_in"] is None and row["cost_usd"] is None
    assert_rows_valid([row])
    assert len(CallCache(tmp_path / "cache.sqlite")) == 0  # a failure is never cached


def test_client_error_is_not_retried(server, tmp_path):
    server.inject(Fault.error(400))
    client = make_client(server, tmp_path)
    with pytest.raises(LLMCallError) as info:
        run(lambda c: chat(c), client)
    assert info.value.kind == "client_error" and info.value.attempts == 1
    assert server.requests_total == 1


def test_connection_refused_is_retried_then_fails(tmp_path):
    with FakeOpenAI() as gone:
        url = gone.url  # a port nobody listens on once stopped
    client = LLMClient(base_url=url, model="m", cache=None, max_retries=2, backoff_base_s=0.01,
                       timeout_s=1.0)
    with pytest.raises(LLMCallError) as info:
        run(lambda c: chat(c), client)
    assert info.value.kind == "connection" and info.value.attempts == 3


def test_rerun_with_same_cache_file_makes_zero_requests(server, tmp_path):
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    first = make_client(server, tmp_path)
    answers = run(lambda c: asyncio.gather(*(chat(c, p) for p in prompts)), first)
    assert server.requests_total == 5 and server.repeated_requests == 0

    server.reset_counts()
    second = make_client(server, tmp_path, run_id="run-2")  # a new process, same cache file
    again = run(lambda c: asyncio.gather(*(chat(c, p) for p in prompts)), second)

    assert server.requests_total == 0
    assert [a.text for a in again] == [a.text for a in answers]
    assert [(a.tokens_in, a.tokens_out) for a in again] == \
        [(a.tokens_in, a.tokens_out) for a in answers]
    assert all(a.cached for a in again)
    assert second.cache_hits == 5 and second.calls_made == 0
    rows = second.drain_call_log()
    assert_rows_valid(rows)
    assert all(r["cached"] and r["cost_usd"] == 0.0 and r["run_id"] == "run-2" for r in rows)


def test_k_samples_with_distinct_sample_index_are_k_calls(server, tmp_path):
    k = 4
    client = make_client(server, tmp_path)
    results = run(lambda c: asyncio.gather(
        *(chat(c, temperature=1.0, sample_index=i) for i in range(k))), client)
    assert len({r.request_hash for r in results}) == k
    assert server.requests_total == k and client.cache_hits == 0

    server.reset_counts()
    rerun = make_client(server, tmp_path)
    run(lambda c: asyncio.gather(
        *(chat(c, temperature=1.0, sample_index=i) for i in range(k))), rerun)
    assert server.requests_total == 0 and rerun.cache_hits == k


def test_protocol_break_reasked_with_new_attempt_and_replayed_on_rerun(server, tmp_path):
    server.inject(Fault.bad_text("I'd rather not score this."))

    async def judge(client: LLMClient) -> float:
        for attempt in range(3):
            result = await chat(client, attempt=attempt)
            try:
                return parse_score(result.text)
            except ProtocolError:
                continue
        raise AssertionError("no valid score")

    assert run(judge, make_client(server, tmp_path)) == 7.5
    assert server.requests_total == 2  # the broken answer was not served back from the cache
    server.reset_counts()
    assert run(judge, make_client(server, tmp_path)) == 7.5
    assert server.requests_total == 0


def test_concurrency_bound_is_respected(tmp_path):
    with FakeOpenAI(latency_s=0.1) as server:
        client = make_client(server, tmp_path, concurrency=3)
        prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
        run(lambda c: asyncio.gather(*(chat(c, p) for p in prompts)), client)
        assert server.requests_total == 12
        assert server.max_in_flight == 3


def test_client_survives_a_new_event_loop(server, tmp_path):
    client = make_client(server, tmp_path, cache=None, concurrency=1)

    async def three() -> None:  # concurrency 1: the semaphore really is waited on
        async with client:
            await asyncio.gather(*(chat(client, [{"role": "user", "content": f"q{i}"}])
                                   for i in range(3)))
    for _ in range(2):  # e.g. one asyncio.run per Prefect task
        asyncio.run(asyncio.wait_for(three(), 10))
    assert server.requests_total == 6


def test_embed_is_ordered_normalised_deterministic_and_cached(server, tmp_path):
    texts = [f"segment number {i} about rivers" for i in range(5)]
    texts.append(texts[0])
    client = make_client(server, tmp_path, model="emb-m", embed_batch_size=2)
    vectors = run(lambda c: c.embed(texts), client)

    assert len(vectors) == 6 and all(len(v) == 64 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-6) for v in vectors)
    assert vectors[0] == vectors[5] and vectors[0] != vectors[1]
    assert server.by_path["/v1/embeddings"] == 3  # batches of 2
    rows = client.drain_call_log()
    assert_rows_valid(rows)
    assert {r["role"] for r in rows} == {"embeddings"} and all(r["tokens_in"] for r in rows)

    server.reset_counts()
    again = run(lambda c: c.embed(texts), make_client(server, tmp_path, model="emb-m",
                                                       embed_batch_size=2))
    assert again == vectors and server.requests_total == 0
    assert run(lambda c: c.embed([]), make_client(server, tmp_path)) == []


def test_request_hash_covers_what_determines_the_answer():
    base = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 8, "seed": None}
    h = request_hash("m", MSGS, base)
    assert h == request_hash("m", [dict(m) for m in MSGS], dict(reversed(base.items())))
    assert h == request_hash("m", MSGS, {k: v for k, v in base.items() if k != "seed"})
    changed = [
        request_hash("m2", MSGS, base),
        request_hash("m", MSGS[:1], base),
        request_hash("m", MSGS, {**base, "temperature": 0.5}),
        request_hash("m", MSGS, {**base, "top_p": 0.9}),
        request_hash("m", MSGS, {**base, "max_tokens": 9}),
        request_hash("m", MSGS, {**base, "seed": 1}),
        request_hash("m", MSGS, {**base, "sample_index": 0}),
        request_hash("m", MSGS, {**base, "sample_index": 1}),
        request_hash("m", MSGS, {**base, "n": 2}),
        request_hash("m", MSGS, {**base, "extra": {"top_k": 5}}),
    ]
    assert len({h, *changed}) == len(changed) + 1
    assert request_hash("m", MSGS, {"extra": {"a": 1, "b": 2}}) == \
        request_hash("m", MSGS, {"extra": {"b": 2, "a": 1}})


def test_cache_commits_each_call_and_is_shared_across_connections(tmp_path):
    path = tmp_path / "c.sqlite"
    writer = CallCache(path)

    async def fill() -> None:
        await asyncio.gather(*(writer.aput(f"h{i}", role="judge", model="m",
                                           response={"text": str(i)}) for i in range(50)))
    asyncio.run(fill())
    reader = CallCache(path)  # another connection sees every row without writer.close()
    assert len(reader) == 50 and reader.get("h7") == {"text": "7"}
    assert reader.get("missing") is None
    assert writer.put("h7", role="judge", model="m", response={"text": "other"}) is False
    assert reader.get("h7") == {"text": "7"}  # first answer wins
    assert reader._connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer.close()
    reader.close()


def test_from_settings_reads_endpoint_limits_prices_and_env_key(server, tmp_path, monkeypatch):
    monkeypatch.delenv("LONGREWARD_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("LONGREWARD_POLICY_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings = Settings(lake=str(tmp_path / "lake"), judge_base_url=server.url,
                        judge_model="glm-judge", judge_concurrency=2, request_timeout_s=7,
                        max_retries=1, judge_cost_per_mtok_in=1.5, policy_base_url=server.url)
    client = LLMClient.from_settings(settings, run_id="r")
    assert (client.model, client.role, client.concurrency) == ("glm-judge", "judge", 2)
    assert (client.timeout_s, client.max_retries, client.cost_per_mtok_in) == (7, 1, 1.5)
    assert client.cache is not None and client.cache.path == default_cache_path(settings)
    run(lambda c: chat(c), client)
    assert server.last_headers["authorization"] == "Bearer EMPTY"  # local vLLM default

    monkeypatch.setenv("OPENAI_API_KEY", "sk-generic")
    monkeypatch.setenv("LONGREWARD_POLICY_API_KEY", "sk-policy")
    run(lambda c: chat(c), LLMClient.from_settings(settings, "judge", cache=False))
    assert server.last_headers["authorization"] == "Bearer sk-generic"
    policy = LLMClient.from_settings(settings, "policy", cache=False)
    run(lambda c: chat(c), policy)
    assert server.last_headers["authorization"] == "Bearer sk-policy"
    assert policy.model == settings.policy_model and policy.cache is None

    shared = CallCache(tmp_path / "shared.sqlite")  # empty, hence len() == 0: still used
    assert LLMClient.from_settings(settings, cache=shared).cache is shared
    with pytest.raises(ValueError, match="embeddings_base_url"):
        LLMClient.from_settings(settings, "embeddings")
    with pytest.raises(ValueError, match="role"):
        LLMClient.from_settings(settings, "critic")


KILLED_RUN = """
import asyncio, os, signal, sys
from tasks.llm import LLMClient

async def main():
    client = LLMClient(base_url=sys.argv[1], model="judge-m", cache=sys.argv[2], max_retries=0)
    for i in range(3):
        await client.chat([{"role": "user", "content": f"q{i}"}], temperature=0.1, top_p=1.0,
                          max_tokens=64)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush: a crash

asyncio.run(main())
"""


def test_calls_finished_before_a_kill_are_not_repeated(server, tmp_path):
    cache = tmp_path / "cache.sqlite"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, server.url, str(cache)],
                          cwd=Path(__file__).parents[2], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert server.requests_total == 3

    server.reset_counts()
    client = make_client(server, tmp_path)
    run(lambda c: asyncio.gather(*(chat(c, [{"role": "user", "content": f"q{i}"}],
                                        temperature=0.1, top_p=1.0, max_tokens=64)
                                   for i in range(4))), client)
    assert server.requests_total == 1 and client.cache_hits == 3  # only the new question


def test_identical_requests_in_flight_share_one_call(tmp_path):
    with FakeOpenAI(lambda request: "[[6]]", latency_s=0.2) as slow:
        client = make_client(slow, tmp_path, cache=None)
        results = run(lambda c: asyncio.gather(*(chat(c) for _ in range(5))), client)
        assert slow.requests_total == 1 and client.coalesced == 4
        assert [r.text for r in results] == ["[[6]]"] * 5
        assert sorted(r.cached for r in results) == [False, True, True, True, True]
        assert len(client.call_log) == 5

        slow.inject(Fault.error(400))   # a failure reaches every waiter, once
        with pytest.raises(LLMCallError):
            run(lambda c: asyncio.gather(*(chat(c, temperature=0.3) for _ in range(3))),
                make_client(slow, tmp_path, cache=None))
        assert slow.requests_total == 2


def test_identical_embedding_batches_in_flight_share_one_call(tmp_path):
    with FakeOpenAI(latency_s=0.2) as slow:
        client = make_client(slow, tmp_path, cache=None, model="embed-m")
        vectors = run(lambda c: asyncio.gather(*(c.embed(["same text", "other"])
                                                 for _ in range(3))), client)
        assert slow.by_path["/v1/embeddings"] == 1 and client.coalesced == 2
        assert vectors[0] == vectors[1] == vectors[2]
