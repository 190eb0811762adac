from __future__ import annotations

import json
import re
from collections.abc import Collection

import pytest

from tasks.demo_data import make_prompts
from tasks.lake import Lake
from tasks.llm import LLMClient
from tasks.records import prompt_id
from tasks.sample.offline import OfflinePolicy
from tasks.sample.policies import EndpointPolicy, Policy, Sample, SamplingParams
from tasks.sample.stage import response_id, run_sampling
from tasks.schemas import RESPONSES
from tests.fakes import FakeOpenAI

PARAMS = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0)


def prompts(n: int) -> list[dict]:
    return [{"prompt_id": prompt_id(p.context, p.query), "context": p.context,
             "query": p.query} for p in make_prompts(n, target_words=200)]


class Killed(BaseException):
    """The run dies here (like an interrupt: not an ordinary error a prompt can absorb)."""


class Counting(Policy):
    """Wraps a policy; records every generate call, and can fail for chosen prompts."""

    def __init__(self, inner, fail_for: Collection[str] = (), kill_after: int | None = None):
        self.inner = inner
        self.model = inner.model
        self.calls: list[tuple[str, list[int]]] = []
        self.fail_for = set(fail_for)
        self.kill_after = kill_after

    async def generate(self, prompt_id, messages, k, params, *, indices=None) -> list[Sample]:
        self.calls.append((prompt_id, sorted(indices) if indices is not None else list(range(k))))
        if self.kill_after is not None and len(self.calls) > self.kill_after:
            raise Killed
        if prompt_id in self.fail_for:
            raise RuntimeError("endpoint down")
        return await self.inner.generate(prompt_id, messages, k, params, indices=indices)


def test_writes_k_rows_per_prompt_in_the_responses_schema(lake: Lake):
    rows_in = prompts(3)
    seen = []
    report = run_sampling(lake, OfflinePolicy(), rows_in, 4, PARAMS, "run-1", on_prompt=seen.append)

    table = lake.read("responses")
    assert table.schema == RESPONSES.schema
    assert table.num_rows == 12
    assert (report.prompts, report.responses_written, report.responses_skipped) == (3, 12, 0)
    assert sorted(r.generated for r in seen) == [4, 4, 4]
    rows = table.to_pylist()
    assert {(r["prompt_id"], r["sample_index"]) for r in rows} == \
        {(p["prompt_id"], i) for p in rows_in for i in range(4)}
    for r in rows:
        assert re.fullmatch(r"[0-9a-f]{32}", r["response_id"])
        assert r["response_id"] == response_id(r["prompt_id"], "offline-policy",
                                               PARAMS.as_json(), None, r["sample_index"])
        assert r["policy_model"] == "offline-policy" and r["run_id"] == "run-1"
        assert r["text"] and r["finish_reason"] == "stop" and r["tokens"] is None
        params = json.loads(r["params"])
        assert params["temperature"] == 1.0 and params["seed"] == 0
        assert params["meta"]["style"] in {"good", "partial", "hallucinated", "off_topic",
                                           "contradictory"}


def test_second_run_writes_nothing_and_never_calls_the_policy(lake: Lake):
    rows_in = prompts(3)
    run_sampling(lake, OfflinePolicy(), rows_in, 4, PARAMS, "run-1")
    before = lake.read("responses")

    policy = Counting(OfflinePolicy())
    report = run_sampling(lake, policy, rows_in, 4, PARAMS, "run-2")
    assert policy.calls == []
    assert (report.responses_written, report.responses_skipped, report.prompts_skipped) == \
        (0, 12, 3)
    assert lake.read("responses").sort_by("response_id").equals(before.sort_by("response_id"))


def test_more_samples_later_asks_only_for_the_missing_ones(lake: Lake):
    rows_in = prompts(2)
    run_sampling(lake, OfflinePolicy(), rows_in, 2, PARAMS, "run-1")
    policy = Counting(OfflinePolicy())
    report = run_sampling(lake, policy, rows_in, 4, PARAMS, "run-2")
    assert sorted(policy.calls) == sorted((p["prompt_id"], [2, 3]) for p in rows_in)
    assert (report.responses_written, report.responses_skipped) == (4, 4)
    runs = lake.read("responses", columns=["sample_index", "run_id"]).to_pylist()
    assert sorted((r["sample_index"], r["run_id"]) for r in runs) == \
        [(0, "run-1")] * 2 + [(1, "run-1")] * 2 + [(2, "run-2")] * 2 + [(3, "run-2")] * 2


def test_new_params_or_template_are_new_responses(lake: Lake):
    rows_in = prompts(1)
    run_sampling(lake, OfflinePolicy(), rows_in, 2, PARAMS, "run-1")
    run_sampling(lake, OfflinePolicy(), rows_in, 2, SamplingParams(seed=1), "run-2")
    run_sampling(lake, OfflinePolicy(), rows_in, 2, PARAMS, "run-3",
                 template="Document:\n{context}\n\nQuestion: {query}")
    rows = lake.read("responses").to_pylist()
    assert len(rows) == 6
    templated = [r for r in rows if r["run_id"] == "run-3"]
    assert all(json.loads(r["params"])["template"].startswith("Document:") for r in templated)


def test_a_failing_prompt_is_reported_and_the_rest_are_written(lake: Lake):
    rows_in = prompts(3)
    bad = rows_in[1]["prompt_id"]
    seen = []
    report = run_sampling(lake, Counting(OfflinePolicy(), fail_for={bad}), rows_in, 2, PARAMS,
                          "run-1", on_prompt=seen.append)
    assert report.failed == [(bad, "RuntimeError: endpoint down")]
    assert [r.error for r in seen if r.prompt_id == bad] == ["RuntimeError: endpoint down"]
    assert lake.count("responses") == 4

    rerun = Counting(OfflinePolicy())
    report = run_sampling(lake, rerun, rows_in, 2, PARAMS, "run-2")
    assert rerun.calls == [(bad, [0, 1])] and report.responses_written == 2
    assert lake.count("responses") == 6


def test_killed_run_keeps_finished_batches_and_rerun_completes_without_duplicates(lake: Lake):
    rows_in = prompts(5)
    policy = Counting(OfflinePolicy(), kill_after=3)
    with pytest.raises(Killed):
        run_sampling(lake, policy, rows_in, 2, PARAMS, "run-1", concurrency=1, batch_prompts=2)
    assert lake.count("responses") == 6  # 3 prompts sampled before the kill, none lost

    rerun = Counting(OfflinePolicy())
    run_sampling(lake, rerun, rows_in, 2, PARAMS, "run-2", batch_prompts=2)
    assert len(rerun.calls) == 2
    table = lake.read("responses")
    assert table.num_rows == 10
    assert len(set(table.column("response_id").to_pylist())) == 10


def test_rows_are_committed_in_batches_of_prompts(lake: Lake):
    lake.ensure("responses")
    start = lake.version("responses")
    run_sampling(lake, OfflinePolicy(), prompts(5), 2, PARAMS, "run-1", batch_prompts=2)
    assert lake.version("responses") - start == 3  # 2 + 2 + 1 prompts


def test_endpoint_sampling_logs_calls_and_a_rerun_sends_no_request(lake: Lake, tmp_path):
    rows_in = prompts(2)
    with FakeOpenAI(lambda req: f"answer {req['seed']}") as server:
        def policy(run_id: str) -> EndpointPolicy:
            return EndpointPolicy(LLMClient(base_url=server.url, model="served-m",
                                            role="policy", run_id=run_id, max_retries=0,
                                            cache=tmp_path / "cache.sqlite"))

        report = run_sampling(lake, policy("run-1"), rows_in, 3, PARAMS, "run-1",
                              concurrency=1)
        assert server.requests_total == 6 and server.max_in_flight <= 3
        assert report.responses_written == 6 and report.calls_logged == 6
        rows = lake.read("responses").to_pylist()
        assert all(r["policy_model"] == "served-m" and r["tokens"] == 2 for r in rows)
        calls = lake.read("llm_calls")
        assert calls.num_rows == 6
        assert set(calls.column("role").to_pylist()) == {"policy"}

        server.reset_counts()
        report = run_sampling(lake, policy("run-2"), rows_in, 3, PARAMS, "run-2")
        assert server.requests_total == 0 and report.responses_written == 0
        assert lake.count("llm_calls") == 6


def test_duplicate_prompts_in_the_input_are_sampled_once(lake: Lake):
    rows_in = prompts(1) * 3
    policy = Counting(OfflinePolicy())
    report = run_sampling(lake, policy, rows_in, 2, PARAMS, "run-1")
    assert len(policy.calls) == 1 and report.prompts == 1 and lake.count("responses") == 2
