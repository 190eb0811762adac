"""Handing a batch's wait over to the next run, and waiting without leases or slots: a run
that does not wait for its batches leaves their prompts unscored (unpaired), the next run
collects the same batches and finishes; a batch in flight blocks no other worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flows import slots
from flows.nightly import held_slots
from tasks import catalog
from tasks.config import Settings
from tasks.lake import Lake
from tasks.llm.batch import BatchCaller
from tasks.llm.cache import SharedCallCache
from tasks.llm.client import LLMClient
from tasks.llm.errors import BatchPending
from tasks.pair import PairRule, run_pairing
from tasks.pipeline import stage_sample, stage_score
from tests.fakes.batch_server import FakeBatchOpenAI
from tests.llm.test_batch import _lake, _rewards
from tests.llm.test_batch_policy import K, policy_or_judge, prompts_lake, settings_for
from tests.score.test_real_judges import PROMPTS, varied_judge

NEVER = 10_000  # retrieves a batch stays in each state: it does not end by itself


def _settings(lake: Lake, url: str, **kw) -> Settings:
    return Settings(lake=lake.root, judge_base_url=url, judge_model="judge",
                    embeddings_base_url=url, embeddings_model="embed", chunk_tokens=512,
                    judge_statements_max_tokens=40,
                    judge_mode="batch", batch_wait="handover", batch_idle_s=0.2,
                    batch_poll_s=0.01, batch_poll_max_s=0.02, **kw)


def _batches(lake: Lake) -> list[tuple]:
    return catalog.connect(lake).execute(
        "SELECT batch_id, status FROM llm_batches ORDER BY created_at, status").fetchall()


def test_a_handed_over_night_leaves_prompts_unpaired_and_the_next_night_collects(tmp_path):
    prompts = {pid: PROMPTS[pid] for pid in ("p", "q")}
    lake = _lake(tmp_path, prompts)
    with FakeBatchOpenAI(varied_judge, polls=NEVER) as server:
        first = stage_score(_settings(lake, server.url), "night-1")
        assert first.handed_over == 2 and first.responses == 0
        assert not lake.read("judgments").num_rows
        [(batch_id, status)] = _batches(lake)
        assert status == "submitted"                       # recorded, still open
        run_pairing(lake, PairRule(), "night-1")
        assert not catalog.connect(lake).execute(
            "SELECT * FROM pairs WHERE status = 'paired'").fetchall()

        server.polls = 1
        server.finish()                        # the batch ends while nobody waits for it
        carried = set(server.submitted[0])
        # the next night waits a while (batch_handover_after_s) for the rounds that follow
        second = stage_score(_settings(lake, server.url, batch_handover_after_s=60), "night-2")
    assert second.handed_over == 0 and second.responses == sum(map(len, prompts.values()))
    assert not carried & {k for b in server.submitted[1:] for k in b}   # nothing sent twice
    assert (batch_id, "completed") in _batches(lake)
    expected = {f"{pid}-{i}": s.reward for pid, specs in prompts.items()
                for i, s in enumerate(specs)}
    assert _rewards(lake) == pytest.approx(expected)
    paired, _ = run_pairing(lake, PairRule(), "night-2")
    assert paired == 2


def test_sampling_hands_over_its_batch_and_the_next_run_writes_the_answers(tmp_path):
    lake = prompts_lake(tmp_path)
    with FakeBatchOpenAI(policy_or_judge, polls=NEVER) as server:
        settings = settings_for(lake, server.url, policy_mode="batch", batch_wait="handover")
        first = stage_sample(settings, "night-1")
        assert (first.handed_over, first.responses_written, first.failed) == (2, 0, [])
        server.finish()
        second = stage_sample(settings, "night-2")
        assert len(server.submitted) == 1                   # collected, not submitted again
    assert (second.handed_over, second.responses_written) == (0, 2 * K)
    assert lake.read("responses").num_rows == 2 * K


def _shared_caller(tmp: Path, url: str, lake: Lake, front: str, **kw) -> BatchCaller:
    cache = SharedCallCache(tmp / front, str(tmp / "store"), poll_s=0.01)
    client = LLMClient(base_url=url, model="judge", cache=cache, backoff_base_s=0.01)
    return BatchCaller(client, lake, idle_s=0.2, poll_s=0.01, poll_max_s=0.02, **kw)


def test_a_batch_in_flight_holds_no_lease_and_another_worker_collects_it(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    msgs = [{"role": "user", "content": "question"}]
    ask = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8}
    with FakeBatchOpenAI(lambda req: "[[6]]", polls=NEVER) as server:

        async def go() -> tuple[str, str]:
            waiting = _shared_caller(tmp_path, server.url, lake, "a.sqlite")
            first = asyncio.ensure_future(waiting.chat(msgs, **ask))
            while not server.submitted:
                await asyncio.sleep(0.01)
            leases = tmp_path / "store" / "leases"
            assert not leases.exists() or not any(leases.iterdir())  # no per-call lease
            # Another worker asks the same call: it neither waits on a lease nor submits it
            # again; handing over, it learns the batch still runs.
            other = _shared_caller(tmp_path, server.url, lake, "b.sqlite", handover_after_s=0)
            with pytest.raises(BatchPending):
                await asyncio.wait_for(other.chat(msgs, **ask), timeout=30)
            assert len(server.submitted) == 1
            server.release()
            answer = await asyncio.wait_for(first, timeout=30)
            later = await other.chat(msgs, **ask)  # from the shared cache
            for caller in (waiting, other):
                await caller.aclose()
            return answer.text, later.text

        assert asyncio.run(go()) == ("[[6]]", "[[6]]")
        assert len(server.submitted) == 1


def test_batch_stages_hold_no_concurrency_slots(monkeypatch):
    def no_api(*args, **kwargs):
        raise AssertionError("the Prefect API was asked for slots")

    monkeypatch.setattr(slots, "_room", no_api)
    monkeypatch.setattr(slots, "concurrency", no_api)
    with slots.hold_slots("longreward-judge", 0):
        pass
    online = Settings(judge_base_url="http://j", policy_base_url="http://p",
                      judge_concurrency=8, policy_concurrency=8)
    batch = online.model_copy(update={"judge_mode": "batch", "policy_mode": "batch"})
    assert (held_slots(online, "score"), held_slots(online, "sample")) == (4, 4)
    assert (held_slots(batch, "score"), held_slots(batch, "sample")) == (0, 0)
    with pytest.raises(AssertionError, match="asked for slots"), \
            slots.hold_slots("longreward-judge", 1):
        pass
