"""The four judge pipelines over HTTP to a scripted OpenAI-compatible judge on loopback."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import pytest

from tasks.chunking import chunk_by_tokens
from tasks.embeddings import EndpointEmbedder
from tasks.lake import Lake
from tasks.llm.client import LLMClient
from tasks.pair import PairRule, run_pairing
from tasks.score.judge import JudgeOptions, load_prompt, step_of
from tasks.score.stage import ScoreOptions, score_pending
from tasks.tokens import load_tokenizer
from tests.fakes.openai_server import FakeOpenAI, Fault

GRADES = {"alpha": "Fully supported", "beta": "Partially supported", "gamma": "No support",
          "delta": "Fully supported"}
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def task_of(request: dict) -> str:
    """The judge step a request asks for (its prompt's English title), in any language."""
    return load_prompt(step_of(request["messages"]))[0].splitlines()[0].lstrip("# ").lower()


def section(request: dict, tag: str) -> str:
    match = re.search(rf"<{tag}[^>]*>\n(.*?)\n</{tag}>", request["messages"][-1]["content"], re.S)
    return match.group(1) if match else ""


def scripted(request: dict) -> str:
    """A judge that follows the protocol; scores are read off markers in the answer text."""
    task = task_of(request)
    answer = section(request, "answer")
    if task == "rating helpfulness":
        return "Analysis: fine.\n[[" + re.search(r"H=(\d+)", answer).group(1) + "]]"
    if task == "rating logicality":
        return "No logical errors.\n[[" + re.search(r"L=(\d+)", answer).group(1) + "]]"
    if task == "listing factual statements":
        words = [w for w in GRADES if w in answer]
        return "\n".join(f"<statement>The {w} fact holds.</statement>" for w in words) \
            or "No factual statements."
    if task == "grading support for a statement":
        word = section(request, "statement").split()[1]
        return f"Checked.\n[[{GRADES[word]}]]"
    if task == "extracting information relevant to a question":
        return "1. The first point.\n2. The second point."
    if task == "rating completeness":
        return "Covers most.\n[[" + re.search(r"C=(\d+)", answer).group(1) + "]]"
    raise AssertionError(task)


def chat_bodies(server: FakeOpenAI, title: str) -> list[dict]:
    return [b for b in server.bodies if "messages" in b and task_of(b) == title]


def _lake_with(tmp_path, answers: dict[str, list[str]], context_words: int = 300) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    for p, texts in answers.items():
        context = " ".join(f"word{i}" for i in range(context_words)) + f" about {p}."
        lake.upsert("prompts", [{
            "prompt_id": p, "source_uri": "s3://b/x", "source_etag": "e", "context": context,
            "query": f"What about {p}?", "context_tokens": context_words, "query_tokens": 4,
            "tokenizer": "t", "run_id": "r", "ingested_at": NOW}])
        lake.upsert("responses", [{
            "response_id": f"{p}-{i}", "prompt_id": p, "sample_index": i, "text": t,
            "policy_model": "m", "run_id": "r", "created_at": NOW} for i, t in enumerate(texts)])
    return lake


def _score(lake: Lake, server: FakeOpenAI, cache, chunk_tokens: int = 4096, **client_kw):
    async def go():
        judge = LLMClient(base_url=server.url, model="judge", cache=cache, backoff_base_s=0.01,
                          **client_kw)
        embed_client = LLMClient(base_url=server.url, model="embed", role="embeddings",
                                 cache=cache, backoff_base_s=0.01, **client_kw)
        options = ScoreOptions(chunk_tokens=chunk_tokens, judge=JudgeOptions(attempts=3))
        report = await score_pending(lake, judge, EndpointEmbedder(embed_client), options, "run")
        await judge.aclose()
        await embed_client.aclose()
        return report
    return asyncio.run(go())


def _judgments(lake: Lake) -> dict[tuple[str, str], dict]:
    return {(r["response_id"], r["dimension"]): r for r in lake.read("judgments").to_pylist()}


def test_exact_arithmetic_faithfulness_reward_and_pair(tmp_path):
    lake = _lake_with(tmp_path, {"p": ["alpha beta gamma delta H=8 L=6 C=4",
                                       "alpha delta H=9 L=9 C=9",
                                       "gamma H=2 L=2 C=2"]})
    with FakeOpenAI(scripted) as server:
        _score(lake, server, tmp_path / "cache.sqlite")
    j = _judgments(lake)
    assert j[("p-0", "faithfulness")]["score"] == 6.25      # full, partial, none, full
    assert j[("p-1", "faithfulness")]["score"] == 10.0
    assert j[("p-2", "faithfulness")]["score"] == 0.0
    statements = [r for r in lake.read("statements").to_pylist() if r["response_id"] == "p-0"]
    assert [s["support"] for s in sorted(statements, key=lambda s: s["statement_index"])] == \
        ["full", "partial", "none", "full"]
    assert all(1 <= len(s["evidence_chunk_ids"]) <= 5 for s in statements)
    from tasks import catalog
    rewards = dict(catalog.connect(lake).execute(
        "SELECT response_id, reward FROM rewards").fetchall())
    assert rewards == {"p-0": (8 + 6 + 6.25 + 4) / 4, "p-1": (9 + 9 + 10 + 9) / 4,
                       "p-2": (2 + 2 + 0 + 2) / 4}
    assert run_pairing(lake, PairRule(min_answers=3), "run") == (1, 0)
    pair = lake.read("pairs").to_pylist()[0]
    assert (pair["chosen_response_id"], pair["rejected_response_id"]) == ("p-1", "p-2")
    assert pair["margin"] == pytest.approx(9.25 - 1.5)


def test_unparsable_judge_is_a_failed_score_after_bounded_retries(tmp_path):
    lake = _lake_with(tmp_path, {"p": ["alpha H=8 L=6 C=4", "delta H=7 L=7 C=7"]})

    def breaks_logicality(request):
        if task_of(request) == "rating logicality" and "alpha" in section(request, "answer"):
            return "I think it is quite logical overall."      # no [[score]]
        return scripted(request)

    with FakeOpenAI(breaks_logicality) as server:
        _score(lake, server, tmp_path / "cache.sqlite")
        logicality_calls = [b for b in chat_bodies(server, "rating logicality")
                            if "alpha" in section(b, "answer")]
    j = _judgments(lake)[("p-0", "logicality")]
    assert j["score"] is None and j["status"] == "failed"
    assert "protocol break after 3 attempt(s)" in j["error"]
    assert len(logicality_calls) == 3 and j["judge_calls"] == 3 and j["reasks"] == 2
    assert j["raw"] == "I think it is quite logical overall."
    from tasks import catalog
    row = catalog.connect(lake).execute(
        "SELECT reward, failure_reason FROM rewards WHERE response_id = 'p-0'").fetchone()
    assert row[0] is None and "logicality" in row[1]
    # one rewarded answer is not a pair
    assert run_pairing(lake, PairRule(min_answers=2), "run") == (0, 1)


def test_rerun_makes_zero_calls_and_extraction_runs_once_per_prompt(tmp_path):
    answers = {f"p{n}": [f"alpha H={k} L=5 C=5" for k in range(1, 5)] for n in range(2)}
    lake = _lake_with(tmp_path, answers, context_words=900)
    cache = tmp_path / "cache.sqlite"
    with FakeOpenAI(scripted) as server:
        report = _score(lake, server, cache, chunk_tokens=512)
        extraction = chat_bodies(server, "extracting information relevant to a question")
        first_total = server.requests_total
        # one call per chunk per prompt, never multiplied by the prompt's 4 answers
        tokenizer = load_tokenizer("all-MiniLM-L6-v2")
        chunks = sum(len(chunk_by_tokens(row["context"], tokenizer, 512))
                     for row in lake.read("prompts").to_pylist())
        assert len(extraction) == report.extraction_calls == chunks > 2
        assert report.judgments_ok == 2 * 4 * 4

        server.reset_counts()
        again = _score(lake, server, cache)
        assert (server.requests_total, again.responses, again.skipped) == (0, 0, 8)

        # even with the tables gone, the call cache replays every finished call
        fresh = _lake_with(tmp_path / "fresh", answers, context_words=900)
        _score(fresh, server, cache, chunk_tokens=512)
        assert server.requests_total == 0
        assert first_total > 0
    assert len(fresh.read("judgments")) == len(lake.read("judgments"))


def test_a_429_storm_ends_in_scores(tmp_path):
    lake = _lake_with(tmp_path, {"p": ["alpha H=8 L=6 C=4", "delta H=3 L=3 C=3"]})
    with FakeOpenAI(scripted) as server:
        server.inject(Fault.rate_limit(retry_after=0.05), times=8)
        server.inject(Fault.error(503), times=3)
        report = _score(lake, server, tmp_path / "c.sqlite", max_retries=12)
        assert server.statuses[429] == 8 and server.statuses[503] == 3
    assert report.judgments_failed == 0 and report.judgments_ok == 8


def test_an_empty_slice_of_prompts_is_no_work(tmp_path):
    from tasks.score.stage import pending_work

    lake = _lake_with(tmp_path, {"p0": ["alpha H=3 L=5 C=5"]}, context_words=200)
    assert pending_work(lake, prompt_ids=[]) == ({}, 0)     # a worker given no prompt
    assert set(pending_work(lake)[0]) == {"p0"}
