"""Sampling through the policy endpoint's Batch API: the same requests, answers, rewards and
pairs as online sampling, at the batch price."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from tasks import catalog
from tasks.config import Settings
from tasks.lake import Lake
from tasks.llm.batch import BatchCaller
from tasks.llm.cache import canonical_json
from tasks.pair import PairRule, run_pairing
from tasks.pipeline import stage_sample, stage_score
from tasks.sample.policies import EndpointPolicy, policy_from_settings
from tests.fakes.batch_server import FakeBatchOpenAI
from tests.score.test_real_judges import PROMPTS, varied_judge

NOW = datetime(2026, 1, 1, tzinfo=UTC)
K = 5


def policy_or_judge(request: dict) -> str:
    """Sampling requests carry a seed: the answer is the prompt's scripted answer the seed
    picks (so a rerun with the same seed draws the same one); the rest is the judge."""
    if "seed" not in request:
        return varied_judge(request)
    pid = re.search(r"What about (\w+)\?$", request["messages"][-1]["content"]).group(1)
    specs = PROMPTS[pid]
    return specs[request["seed"] % len(specs)].text()


def prompts_lake(tmp, ids=("p", "q")) -> Lake:
    lake = Lake(str(tmp / "lake"))
    lake.upsert("prompts", [{
        "prompt_id": p, "source_uri": "s3://b/x", "source_etag": "e",
        "context": " ".join(f"word{i}" for i in range(700)) + f" about {p}.",
        "query": f"What about {p}?", "context_tokens": 700, "query_tokens": 4,
        "tokenizer": "t", "run_id": "r", "ingested_at": NOW} for p in ids])
    return lake


def settings_for(lake: Lake, url: str, **kw) -> Settings:
    return Settings(lake=lake.root, policy_base_url=url, policy_model="pol",
                    samples_per_prompt=K, pair_min_answers=2, judge_base_url=url,
                    judge_model="judge", embeddings_base_url=url, embeddings_model="embed",
                    chunk_tokens=512,
                    judge_statements_max_tokens=40, policy_cost_per_mtok_in=1.0,
                    policy_cost_per_mtok_out=4.0, batch_idle_s=0.2, batch_poll_s=0.01,
                    batch_poll_max_s=0.02, max_retries=1, **kw)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same prompts sampled (online or in batch) and scored online, one server each."""
    out = {}
    for mode in ("online", "batch"):
        lake = prompts_lake(tmp_path_factory.mktemp(mode))
        with FakeBatchOpenAI(policy_or_judge) as server:
            settings = settings_for(lake, server.url, policy_mode=mode)
            sampled = stage_sample(settings, "run")
            stage_score(settings, "run")
            run_pairing(lake, PairRule(min_answers=2), "run")
            online = [b for b in server.bodies if "seed" in b]
            lines = [line["body"] for s in server.batches.values() for line in s["lines"]]
            out[mode] = (lake, sampled, online, lines, list(server.submitted))
    return out


def _rows(lake: Lake, sql: str) -> list[tuple]:
    return catalog.connect(lake).execute(sql).fetchall()


def test_batch_sampling_gives_the_responses_rewards_and_pairs_of_online_sampling(both):
    (online, *_), (batch, sampled, *_) = both["online"], both["batch"]
    assert sampled.responses_written == 2 * K and not sampled.failed
    for sql in ("SELECT response_id, prompt_id, sample_index, text, tokens, finish_reason, "
                "params FROM responses ORDER BY ALL",
                "SELECT response_id, reward FROM rewards ORDER BY ALL",
                "SELECT prompt_id, status, chosen_response_id, rejected_response_id, margin "
                "FROM pairs ORDER BY ALL"):
        assert _rows(batch, sql) == _rows(online, sql)
    assert len({t for (t,) in _rows(batch, "SELECT text FROM responses")}) > 2  # varied
    assert _rows(batch, "SELECT count(*) FROM pairs WHERE status = 'paired'")[0][0] >= 1


def test_batch_sampling_sends_the_online_requests_as_one_batch_file_at_half_price(both):
    _, _, online_bodies, no_lines, _ = both["online"]
    lake, _, no_online, lines, submitted = both["batch"]
    assert not no_lines and not no_online       # each mode used only its own way
    assert len(submitted) == 1 and len(submitted[0]) == 2 * K   # all prompts, one round
    assert sorted(map(canonical_json, lines)) == sorted(map(canonical_json, online_bodies))
    assert {b["temperature"] for b in lines} == {1.0} and len({b["seed"] for b in lines}) == 2 * K
    sql = ("SELECT request_hash, tokens_in, tokens_out, cost_usd FROM llm_calls "
           "WHERE role = 'policy' ORDER BY 1")
    paid_online, paid_batch = _rows(both["online"][0], sql), _rows(lake, sql)
    assert [r[:3] for r in paid_batch] == [r[:3] for r in paid_online]
    assert [r[3] for r in paid_batch] == pytest.approx([r[3] / 2 for r in paid_online])
    ended = _rows(lake, "SELECT role, status, requests, succeeded FROM llm_batches "
                        "WHERE status <> 'submitted'")
    assert ended == [("policy", "completed", 2 * K, 2 * K)]


def test_policy_mode_batch_is_one_setting_and_not_part_of_the_config_hash(tmp_path):
    lake = prompts_lake(tmp_path)
    settings = settings_for(lake, "http://127.0.0.1:9", policy_mode="batch")
    policy = policy_from_settings(settings, run_id="run")
    assert isinstance(policy, EndpointPolicy) and isinstance(policy.client, BatchCaller)
    assert policy.model == "pol" and policy.client.client.role == "policy"
    assert settings.config_hash() == settings_for(lake, "http://127.0.0.1:9").config_hash()
