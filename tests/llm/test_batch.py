"""Judging through the Batch API: the same rewards and pairs as online, durable batches,
bounded resubmission of what a batch did not answer."""

from __future__ import annotations

import asyncio

import pytest

from tasks import catalog
from tasks.config import Settings
from tasks.embeddings import EndpointEmbedder
from tasks.lake import Lake
from tasks.llm.batch import BatchJudge
from tasks.llm.batch_files import read_line
from tasks.llm.client import LLMClient, chat_call
from tasks.llm.errors import LLMCallError
from tasks.pair import PairRule, run_pairing
from tasks.pipeline import judge_from_settings, score_options, stage_score
from tasks.score.judge import JudgeOptions
from tasks.score.stage import ScoreOptions, score_pending
from tests.fakes.batch_server import BatchScript, FakeBatchOpenAI
from tests.score.test_real_judges import FIRST, PROMPTS, varied_judge
from tests.score.test_scoring import _lake_with

OPTIONS = ScoreOptions(chunk_tokens=512, prompts_in_flight=100,
                       judge=JudgeOptions(statements_max_tokens=40))
PRICE = {"cost_per_mtok_in": 2.0, "cost_per_mtok_out": 8.0}


def _lake(tmp, prompts=PROMPTS) -> Lake:
    answers = {pid: [s.text(chinese=pid == "z") for s in specs] for pid, specs in prompts.items()}
    return _lake_with(tmp, answers, context_words=700)


def _judge(server, tmp, lake: Lake | None, batch: bool, cache: str = "c.sqlite"):
    client = LLMClient(base_url=server.url, model="judge", cache=tmp / cache,
                       backoff_base_s=0.01, **PRICE)
    if not batch:
        return client
    return BatchJudge(client, lake, idle_s=0.2, poll_s=0.01, poll_max_s=0.02)


async def _score(server, tmp, lake: Lake, batch: bool, cache: str = "c.sqlite"):
    judge = _judge(server, tmp, lake, batch, cache)
    async with LLMClient(base_url=server.url, model="e", role="embeddings",
                         cache=tmp / cache) as embed:
        try:
            report = await score_pending(lake, judge, EndpointEmbedder(embed), OPTIONS, "run")
            lake.upsert("llm_calls", judge.drain_call_log())
            return report, judge.stats()
        finally:
            await judge.aclose()


def _rewards(lake: Lake) -> dict:
    return dict(catalog.connect(lake).execute(
        "SELECT response_id, reward FROM rewards").fetchall())


def _calls(lake: Lake) -> list[tuple]:
    return catalog.connect(lake).execute(
        "SELECT purpose, attempt, temperature, max_tokens, tokens_in, tokens_out, cost_usd, "
        "finish_reason, status FROM llm_calls ORDER BY ALL").fetchall()


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same prompts scored online and in batch mode (fresh caches, one server each)."""
    out = {}
    for mode in ("online", "batch"):
        tmp = tmp_path_factory.mktemp(mode)
        lake = _lake(tmp)
        with FakeBatchOpenAI(varied_judge) as server:
            report, stats = asyncio.run(_score(server, tmp, lake, mode == "batch"))
            out[mode] = (lake, report, stats, server.by_path.copy(), list(server.submitted))
    return out


def test_batch_mode_gives_the_rewards_and_pairs_of_online_mode(both):
    (online, *_), (batch, *_) = both["online"], both["batch"]
    expected = {f"{pid}-{i}": s.reward for pid, specs in PROMPTS.items()
                for i, s in enumerate(specs)}
    assert _rewards(batch) == _rewards(online)
    assert {k: v for k, v in _rewards(batch).items() if v is not None} == pytest.approx(
        {k: v for k, v in expected.items() if v is not None})
    assert run_pairing(batch, PairRule(), "run") == run_pairing(online, PairRule(), "run")
    columns = ["prompt_id", "chosen_response_id", "rejected_response_id", "margin", "status"]
    assert batch.read("pairs", columns=columns).to_pylist() == \
        online.read("pairs", columns=columns).to_pylist()


def test_batch_mode_sends_no_chat_online_and_logs_every_call_at_half_price(both):
    _, online_report, _, online_paths, _ = both["online"]
    lake, report, stats, paths, submitted = both["batch"]
    assert online_paths["/v1/chat/completions"] > 0 and paths["/v1/chat/completions"] == 0
    assert report.judge_calls == online_report.judge_calls
    online_calls, batch_calls = _calls(both["online"][0]), _calls(lake)
    assert len(batch_calls) == len(online_calls)
    for o, b in zip(online_calls, batch_calls, strict=True):
        assert b[:6] == o[:6] and b[7:] == o[7:]           # same requests, same tokens
        assert b[6] == pytest.approx(o[6] / 2)             # at half the price
    # one batch per round of the dependencies: first asks, then grades and coverage, then
    # re-asks (an answer whose judge never complies takes 5 rounds); not one per call
    assert 5 <= len(submitted) <= 10 and len(submitted[0]) == max(map(len, submitted))
    assert sum(len(b) for b in submitted) == stats["requests_submitted"]
    assert len({k for b in submitted for k in b}) == stats["requests_submitted"]  # none twice
    batches = lake.read("llm_batches").to_pylist()
    ended = [b for b in batches if b["status"] == "completed"]
    assert len(ended) == len(submitted) == len([b for b in batches
                                                if b["status"] == "submitted"])
    assert sum(b["cost_usd"] for b in ended) == pytest.approx(
        sum(c[6] for c in batch_calls if c[6]))


def test_a_killed_run_collects_its_open_batch_instead_of_submitting_again(tmp_path):
    prompts = {pid: PROMPTS[pid] for pid in ("p", "q")}
    lake = _lake(tmp_path, prompts)
    with FakeBatchOpenAI(varied_judge, polls=10_000) as server:  # the first batch never ends

        async def killed() -> None:
            task = asyncio.ensure_future(_score(server, tmp_path, lake, True))
            while not server.submitted:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # it is polling now
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(killed())
        before = len(server.submitted)
        first = {k for b in server.submitted for k in b}
        assert not _rewards(lake)
        assert [b["status"] for b in lake.read("llm_batches").to_pylist()] == \
            ["submitted"] * before
        server.polls = 1
        server.release()  # the open batches end at their next retrieves
        report, stats = asyncio.run(_score(server, tmp_path, lake, True))
    assert stats["batches_collected"] == before
    resent = {k for b in server.submitted[before:] for k in b}
    assert not resent & set(first)                 # nothing of the open batch sent again
    expected = {f"{pid}-{i}": s.reward for pid, specs in prompts.items()
                for i, s in enumerate(specs)}
    assert _rewards(lake).keys() == expected.keys()
    assert report.judgments_ok + report.judgments_failed == 4 * len(expected)


def test_an_expired_batch_resubmits_only_the_calls_it_did_not_answer(tmp_path):
    with FakeBatchOpenAI(lambda req: "[[7]]") as server:
        server.script(BatchScript("expired", answered=0.5))

        async def go():
            judge = _judge(server, tmp_path, Lake(str(tmp_path / "lake")), True)
            try:
                return await asyncio.gather(*(judge.chat(
                    [{"role": "user", "content": f"question {i}"}], temperature=0.0, top_p=1.0,
                    max_tokens=8) for i in range(10))), judge.stats()
            finally:
                await judge.aclose()

        results, stats = asyncio.run(go())
    assert [r.text for r in results] == ["[[7]]"] * 10
    first, second = server.submitted
    assert len(first) == 10 and len(second) == 5 and set(second) < set(first)
    assert set(second) == set(first[5:])                  # the half that was not run
    assert stats["resubmitted"] == 5
    statuses = [(b["status"], b["succeeded"], b["failed"], b["resubmit"])
                for b in Lake(str(tmp_path / "lake")).read("llm_batches").to_pylist()]
    assert sorted(statuses, key=str) == sorted([
        ("submitted", None, None, 0), ("expired", 5, 5, 0), ("submitted", None, None, 1),
        ("completed", 5, 0, 1)], key=str)


def test_calls_that_keep_failing_become_errors_that_are_not_retried(tmp_path):
    with FakeBatchOpenAI(lambda req: "[[7]]",
                         line_error=lambda body: 400 if "bad" in str(body) else None) as server:
        server.script(BatchScript("failed"), BatchScript("failed"), BatchScript("failed"))

        async def go(content: str):
            judge = _judge(server, tmp_path, None, True)
            try:
                await judge.chat([{"role": "user", "content": content}], temperature=0.0,
                                 top_p=1.0, max_tokens=8)
            finally:
                await judge.aclose()

        with pytest.raises(LLMCallError) as failed:
            asyncio.run(go("fine"))
        assert failed.value.kind == "batch_failed" and "after 2 resubmission" in str(failed.value)
        assert len(server.submitted) == 3            # first try + max_resubmits
        with pytest.raises(LLMCallError) as refused:
            asyncio.run(go("bad"))
        assert refused.value.kind == "client_error" and len(server.submitted) == 4


def test_one_setting_turns_the_scoring_stage_to_batches(tmp_path):
    lake = _lake(tmp_path, {"q": PROMPTS["q"]})
    with FakeBatchOpenAI(varied_judge) as server:
        settings = Settings(lake=lake.root, judge_base_url=server.url, judge_model="judge",
                            embeddings_base_url=server.url, embeddings_model="embed",
                            chunk_tokens=512,
                            judge_statements_max_tokens=40, judge_cost_per_mtok_in=1.0,
                            judge_mode="batch", batch_idle_s=0.2, batch_poll_s=0.01)
        assert isinstance(judge_from_settings(settings, "run"), BatchJudge)
        assert score_options(settings).prompts_in_flight == settings.batch_prompts_in_flight
        report = stage_score(settings, "run")
        assert server.by_path["/v1/chat/completions"] == 0 and server.submitted
    expected = {f"q-{i}": s.reward for i, s in enumerate(PROMPTS["q"])}
    assert _rewards(lake) == pytest.approx(expected)
    assert report.judgments_ok + report.judgments_failed == 4 * len(expected)
    con = catalog.connect(lake)
    paid, batch_cost = con.execute(
        "SELECT sum(cost_usd), (SELECT sum(cost_usd) FROM llm_batches) FROM llm_calls "
        "WHERE role = 'judge'").fetchone()
    assert paid == pytest.approx(batch_cost) and paid > 0
    assert Settings(judge_mode="batch").config_hash() == Settings().config_hash()


def test_a_recorded_batch_the_endpoint_does_not_know_is_resubmitted(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with FakeBatchOpenAI(lambda req: "[[3]]") as server:
        judge = _judge(server, tmp_path, lake, True)
        msgs = [{"role": "user", "content": "question"}]
        key = chat_call("judge", "judge", msgs, temperature=0.0, top_p=1.0, max_tokens=8).key
        judge.ledger.record({"batch_id": "batch-gone", "status": "submitted", "resubmit": 0,
                          "request_hashes": [key], "requests": 1})

        async def go():
            try:
                return await judge.chat(msgs, temperature=0.0, top_p=1.0, max_tokens=8)
            finally:
                await judge.aclose()

        assert asyncio.run(go()).text == "[[3]]"
        assert server.submitted == [[key]]
    ends = {r["batch_id"]: r for r in lake.read("llm_batches").to_pylist()
            if r["status"] != "submitted"}
    assert ends["batch-gone"]["status"] == "failed" and ends["batch-gone"]["failed"] == 1


def test_re_asks_can_go_online_so_a_night_takes_two_rounds(tmp_path):
    lake = _lake(tmp_path, {"q": PROMPTS["q"]})
    with FakeBatchOpenAI(varied_judge) as server:

        async def go():
            client = LLMClient(base_url=server.url, model="judge", cache=tmp_path / "c.sqlite",
                               backoff_base_s=0.01, **PRICE)
            judge = BatchJudge(client, lake, idle_s=0.2, poll_s=0.01, reasks_online=True)
            async with LLMClient(base_url=server.url, model="e", role="embeddings",
                                 cache=tmp_path / "c.sqlite") as embed:
                await score_pending(lake, judge, EndpointEmbedder(embed), OPTIONS, "run")
            calls = judge.drain_call_log()
            await judge.aclose()
            return calls

        calls = asyncio.run(go())
        lines = [line["body"] for state in server.batches.values() for line in state["lines"]]
        online = [b for b in server.bodies if "messages" in b]
    assert len(server.submitted) == 2 and {b["temperature"] for b in lines} == {FIRST}
    assert online and {b["temperature"] for b in online} == {0.95}
    assert len(online) == sum(1 for c in calls if c["attempt"] and not c["cached"])
    expected = {f"q-{i}": s.reward for i, s in enumerate(PROMPTS["q"])}
    assert _rewards(lake) == pytest.approx(expected)


@pytest.mark.parametrize(("line", "answered", "retry"), [
    ({"response": {"status_code": 200, "body": {"choices": []}}, "error": None}, True, False),
    ({"response": {"status_code": 400, "body": {"error": {"message": "bad"}}}}, False, False),
    ({"response": {"status_code": 500, "body": {}}}, False, True),
    ({"response": {"status_code": 429, "body": {}}}, False, True),
    ({"response": None, "error": {"code": "batch_expired", "message": "late"}}, False, True),
    ({"response": None, "error": {"code": "invalid_json", "message": "x"}}, False, False),
])
def test_output_and_error_lines_say_whether_to_resubmit(line, answered, retry):
    outcome = read_line({"custom_id": "k", **line})
    assert (outcome.key, outcome.response is not None, outcome.retry) == ("k", answered, retry)
    assert answered or outcome.reason.startswith("batch line ")
