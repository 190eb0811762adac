"""Scoring against a judge that answers the way real models do, over HTTP.

The scripted judge varies the form of every verdict (decimals, bold, quoted examples, lower-case
labels, bullets and prose, Chinese), refuses or runs past ``max_tokens`` on some first attempts,
and never complies for some answers. Every reward and every pair must still equal the arithmetic
of the script; an answer whose judge never complies has no reward and no pair.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import pytest

from tasks import catalog
from tasks.embeddings import EndpointEmbedder
from tasks.llm.client import LLMClient
from tasks.pair import PairRule, run_pairing
from tasks.score.judge import JudgeOptions, step_of
from tasks.score.stage import ScoreOptions, score_pending
from tests.fakes.openai_server import FakeOpenAI
from tests.score.test_scoring import _lake_with, section

VALUE = {"alpha": 1.0, "beta": 0.5, "gamma": 0.0, "delta": 1.0, "epsilon": 0.0}
LABEL = {"alpha": "[[Fully supported]]", "beta": "[[partially supported]]",
         "gamma": "**[[No Support]]**", "delta": "**Fully supported**",
         "epsilon": "Verdict: [[Unsupported]]"}
SCORE_STYLES = [
    lambda n: f"Analysis: it addresses the question.\n[[{n}]]",
    lambda n: f"**Score: [[{n}.0]]**",
    lambda n: f'The required format is "[[5]]".\n\nMy rating: [[{n}]]',
    lambda n: f"分析：回答基本切题。\n评分：[[{n}]]",
    lambda n: f"I would rate it [[{n}/10]].",
]
FIRST = 0.01  # the first attempt's temperature: scripted faults hit only first attempts


@dataclass(frozen=True)
class Spec:
    facts: tuple[str, ...]
    h: int
    lo: int
    c: int
    flag: str = ""   # REFUSE | CUT | NEVER | NOSTMT

    def text(self, chinese: bool = False) -> str:
        body = " ".join(self.facts) + f" H={self.h} L={self.lo} C={self.c} {self.flag}"
        return f"答案：这是关于文档的回答。{body}" if chinese else f"The answer: {body}"

    @property
    def reward(self) -> float | None:
        if self.flag in ("NEVER", "NOSTMT"):
            return None
        faithfulness = 10 * sum(VALUE[f] for f in self.facts) / len(self.facts)
        return (self.h + self.lo + faithfulness + self.c) / 4


PROMPTS = {
    "p": [Spec(("alpha", "beta"), 8, 6, 4), Spec(("alpha", "delta"), 9, 9, 9, "REFUSE"),
          Spec(("gamma",), 2, 3, 2), Spec(("alpha", "gamma", "epsilon"), 6, 7, 5, "CUT"),
          Spec(("beta",), 5, 5, 6), Spec(("alpha",), 10, 10, 10, "NEVER"),
          Spec((), 7, 7, 7, "NOSTMT")],
    "q": [Spec(("alpha",), 7, 8, 6), Spec(("beta", "gamma"), 4, 4, 3),
          Spec(("delta",), 9, 8, 8), Spec(("alpha", "beta"), 6, 6, 6, "CUT"),
          Spec(("epsilon",), 3, 2, 1), Spec(("alpha",), 9, 9, 9, "NEVER")],
    "r": [Spec(("alpha",), 5, 5, 5), Spec(("delta",), 6, 6, 6), Spec(("gamma",), 2, 2, 2),
          Spec(("beta",), 4, 4, 4)],                      # four answers: too few to pair
    "z": [Spec(("alpha",), 8, 8, 8), Spec(("beta",), 6, 5, 6), Spec(("gamma",), 1, 2, 2),
          Spec(("delta",), 7, 7, 7, "REFUSE"), Spec(("alpha", "beta"), 5, 6, 5)],  # Chinese
}


def varied_judge(request: dict) -> str:
    step = step_of(request["messages"])
    answer, first = section(request, "answer"), request["temperature"] == FIRST
    style = SCORE_STYLES[len(answer) % len(SCORE_STYLES)]
    if step == "helpfulness":
        if "REFUSE" in answer and first:
            return "I'm sorry, but I can't help with rating this answer."
        return style(re.search(r"H=(\d+)", answer).group(1))
    if step == "logicality":
        if "NEVER" in answer:
            return "The answer seems logical to me, I would not put a number on it."
        return "- No logical errors found.\n" + style(re.search(r"L=(\d+)", answer).group(1))
    if step == "faithfulness_statements":
        facts = [w for w in VALUE if w in answer]
        if not facts:
            return "The answer only restates markers.\n\n**No factual statements.**"
        preamble = "Here are the statements. " + "Padding words follow here. " * 12 \
            if "CUT" in answer else "Statements:"
        return preamble + "\n" + "\n".join(f"{i}. <statement>The {w} fact holds.</statement>"
                                           for i, w in enumerate(facts, 1))
    if step == "faithfulness_support":
        return "Checked against the segments.\n" + LABEL[section(request, "statement").split()[1]]
    if step == "completeness_extract":
        chunk_at = re.search(r'position="(\d+)%', request["messages"][-1]["content"]).group(1)
        query = section(request, "query")
        if chunk_at != "0":
            return "This part contains no relevant information for the question."
        if "q" in query.split()[-1] and first:
            return "I'm sorry, but I can't help with that."
        if "q" in query.split()[-1]:
            return "The opening part describes the situation in general terms."
        return "Relevant points:\n- The first point.\n- The second point."
    if step == "completeness_coverage":
        return style(re.search(r"C=(\d+)", answer).group(1))
    raise AssertionError(step)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    answers = {pid: [s.text(chinese=pid == "z") for s in specs] for pid, specs in PROMPTS.items()}
    lake = _lake_with(tmp, answers, context_words=700)
    options = ScoreOptions(chunk_tokens=512, judge=JudgeOptions(statements_max_tokens=40))

    async def go() -> list[dict]:
        async with LLMClient(base_url=server.url, model="judge", cache=tmp / "c.sqlite",
                             backoff_base_s=0.01) as judge, \
                LLMClient(base_url=server.url, model="e", role="embeddings",
                          cache=tmp / "c.sqlite") as embed:
            await score_pending(lake, judge, EndpointEmbedder(embed), options, "run")
            return judge.drain_call_log()

    with FakeOpenAI(varied_judge) as server:
        calls = asyncio.run(go())
        bodies = list(server.bodies)
    return lake, calls, bodies


def test_every_reward_equals_the_scripted_arithmetic(scored):
    lake, _, _ = scored
    rewards = dict(catalog.connect(lake).execute(
        "SELECT response_id, reward FROM rewards").fetchall())
    expected = {f"{pid}-{i}": s.reward for pid, specs in PROMPTS.items()
                for i, s in enumerate(specs)}
    assert rewards.keys() == expected.keys()
    for rid, value in expected.items():
        assert rewards[rid] == (None if value is None else pytest.approx(value)), rid


def test_pairs_follow_the_rewards_and_need_five_scored_answers(scored):
    lake, _, _ = scored
    assert run_pairing(lake, PairRule(), "run") == (3, 1)
    pairs = {r["prompt_id"]: r for r in lake.read("pairs").to_pylist()}
    for pid in ("p", "q", "z"):
        rewarded = {i: s.reward for i, s in enumerate(PROMPTS[pid]) if s.reward is not None}
        best, worst = max(rewarded, key=rewarded.get), min(rewarded, key=rewarded.get)
        assert (pairs[pid]["chosen_response_id"], pairs[pid]["rejected_response_id"]) == \
            (f"{pid}-{best}", f"{pid}-{worst}")
        assert pairs[pid]["margin"] == pytest.approx(rewarded[best] - rewarded[worst])
    assert pairs["r"]["status"] == "skipped"
    assert "only 4 rewarded answers (need 5" in pairs["r"]["skip_reason"]


def test_a_judge_that_never_complies_is_a_failed_score_not_a_number(scored):
    lake, _, _ = scored
    rows = {(r["response_id"], r["dimension"]): r for r in lake.read("judgments").to_pylist()}
    never = rows[("p-5", "logicality")]
    assert never["score"] is None and never["status"] == "failed"
    assert "protocol break after 5 attempt(s)" in never["error"]
    assert never["judge_calls"] == 5 and never["reasks"] == 4
    no_facts = rows[("p-6", "faithfulness")]
    assert (no_facts["score"], no_facts["status"]) == (None, "no_statements")
    reason = catalog.connect(lake).execute(
        "SELECT failure_reason FROM rewards WHERE response_id = 'p-6'").fetchone()[0]
    assert "faithfulness" in reason


def test_refusals_and_cut_off_replies_are_re_asked_warmer_and_with_more_room(scored):
    lake, calls, _ = scored
    cut = [c for c in calls if c["finish_reason"] == "length"]
    assert {c["purpose"] for c in cut} == {"faithfulness_statements"} and len(cut) == 2
    assert all((c["attempt"], c["max_tokens"], c["temperature"]) == (0, 40, FIRST) for c in cut)
    retried = [c for c in calls if c["purpose"] == "faithfulness_statements" and c["attempt"]]
    assert {(c["max_tokens"], c["temperature"]) for c in retried} == {(80, 0.95)}
    statements = lake.read("statements").to_pylist()
    assert sorted(s["support"] for s in statements if s["response_id"] == "p-3") == \
        ["full", "none", "none"]  # graded on the whole list, not the part that arrived
    refused = [c for c in calls if c["purpose"] == "helpfulness" and c["attempt"]]
    assert len(refused) == 2 and all(c["temperature"] == 0.95 for c in refused)


def test_every_part_reaches_the_coverage_judge_with_its_position(scored):
    lake, _, bodies = scored
    coverage = [b for b in bodies if "messages" in b
                and step_of(b["messages"]) == "completeness_coverage"]
    listed = section(coverage[0], "key_points")
    parts = re.findall(r"\[Part (\d+)%-(\d+)% of the document\]", listed)
    assert parts[0][0] == "0" and parts[-1][1] == "100" and len(parts) >= 2
    assert "No relevant information" in listed
    prose = [r["information"] for r in lake.read("key_points").to_pylist()
             if r["prompt_id"] == "q" and r["chunk_index"] == 0]
    assert prose == ["The opening part describes the situation in general terms."]


def test_chinese_text_gets_the_chinese_prompts(scored):
    _, _, bodies = scored
    chats = [b for b in bodies if "messages" in b]
    chinese = {step_of(b["messages"]) for b in chats
               if "答案" in b["messages"][-1]["content"]
               and b["messages"][0]["content"].startswith("# 评估")}
    assert {"helpfulness", "logicality", "completeness_coverage"} <= chinese
    english = [b for b in chats if "The answer:" in b["messages"][-1]["content"]]
    assert english and all(b["messages"][0]["content"].splitlines()[0].isascii()
                           for b in english)


def test_key_points_are_extracted_again_when_what_they_depend_on_changes(tmp_path):
    lake = _lake_with(tmp_path, {"p": [PROMPTS["p"][0].text()]}, context_words=700)
    template = lake.read("responses").to_pylist()[0]

    def run(chunk_tokens: int, model: str) -> int:
        """Score one new answer of the prompt; returns the extraction calls it took."""
        lake.upsert("responses", [{**template, "response_id": f"p-{len(lake.read('responses'))}"}])

        async def go() -> int:
            async with LLMClient(base_url=server.url, model=model, backoff_base_s=0.01) as judge, \
                    LLMClient(base_url=server.url, model="e", role="embeddings") as embed:
                report = await score_pending(lake, judge, EndpointEmbedder(embed),
                                             ScoreOptions(chunk_tokens=chunk_tokens), "run")
                return report.extraction_calls
        return asyncio.run(go())

    with FakeOpenAI(varied_judge) as server:
        first = run(512, "judge-a")
        assert first > 1
        assert run(512, "judge-a") == 0                    # same key: stored key points reused
        assert run(256, "judge-a") > first                 # another chunk size: extracted again
        assert run(512, "judge-b") == first                # another judge model: again
    keys = {r["extraction_key"] for r in lake.read("key_points").to_pylist()}
    assert len(keys) == 3
