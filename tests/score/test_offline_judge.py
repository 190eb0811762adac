"""The offline judge ranks answers the way the dimensions mean, through the real scorers."""

from __future__ import annotations

import asyncio
import re

import pytest

from tasks.chunking import chunk_by_tokens
from tasks.demo_data import make_prompt
from tasks.embeddings import LocalEmbedder
from tasks.offline_judge import OfflineJudge
from tasks.retrieval import SegmentIndex
from tasks.score.completeness import extract_key_points, score_completeness
from tasks.score.faithfulness import score_faithfulness
from tasks.score.helpfulness import score_helpfulness
from tasks.score.judge import JudgeOptions
from tasks.score.logicality import score_logicality
from tasks.tokens import load_tokenizer

PROMPT = make_prompt(0, target_words=2500)
CLEAN = "According to the document: " + " ".join(PROMPT.facts)


@pytest.fixture(scope="module")
def setup():
    embedder = LocalEmbedder()
    judge = OfflineJudge(embedder)
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")

    async def build():
        index = await SegmentIndex.build(PROMPT.context, tokenizer, embedder, 128)
        key_points = await extract_key_points(judge, PROMPT.query,
                                              chunk_by_tokens(PROMPT.context, tokenizer, 4096))
        return index, key_points

    index, key_points = asyncio.run(build())
    return judge, embedder, index, key_points


def faithfulness(setup, answer: str) -> float:
    judge, embedder, index, _ = setup
    return asyncio.run(score_faithfulness(judge, embedder, index, PROMPT.query, answer)).score


def test_planted_hallucination_lowers_faithfulness(setup):
    number = re.findall(r"\d[\d,]*\d", PROMPT.facts[1])[1]   # the recorded figure
    planted = CLEAN.replace(number, "9,999")
    assert number in PROMPT.context and "9,999" not in PROMPT.context
    assert faithfulness(setup, CLEAN) == 10.0
    assert faithfulness(setup, planted) < faithfulness(setup, CLEAN)


def test_dropped_key_point_lowers_completeness(setup):
    judge, _, _, key_points = setup
    assert sum(len(kp.items) for kp in key_points) == len(PROMPT.facts)
    dropped = "According to the document: " + " ".join(PROMPT.facts[:2])

    def completeness(answer: str) -> float:
        return asyncio.run(score_completeness(judge, PROMPT.query, key_points, answer)).score

    assert completeness(CLEAN) == 10.0
    assert completeness(dropped) < completeness(CLEAN)


def test_off_topic_answer_is_less_helpful(setup):
    judge = setup[0]
    off_topic = ("The committee reviewed routine correspondence and approved the minutes. "
                 "Members noted that the archive is being moved to a new storage room.")
    clean = asyncio.run(score_helpfulness(judge, PROMPT.query, CLEAN)).score
    off = asyncio.run(score_helpfulness(judge, PROMPT.query, off_topic)).score
    assert clean > off + 2


def test_self_contradiction_lowers_logicality(setup):
    judge = setup[0]
    contradiction = CLEAN + " However, the figures recorded by the director did not change."
    clean = asyncio.run(score_logicality(judge, PROMPT.query, CLEAN))
    broken = asyncio.run(score_logicality(judge, PROMPT.query, contradiction))
    assert clean.score == 10.0 and broken.score < clean.score
    assert "negates" in broken.rationale


def test_functional_sentences_are_not_statements_and_empty_answers_are_defined(setup):
    judge, embedder, index, _ = setup
    result = asyncio.run(score_faithfulness(judge, embedder, index, PROMPT.query,
                                            "Here are the reasons: I hope this helps."))
    # as published: no faithfulness score (so no reward, no pair), never a perfect 10
    assert (result.score, result.status) == (None, "no_statements")
    assert result.judge_model == "offline-judge"
    full = asyncio.run(score_faithfulness(judge, embedder, index, PROMPT.query,
                                          "Here are the reasons: I hope this helps.",
                                          JudgeOptions(no_statements="full")))
    assert (full.score, full.status) == (10.0, "no_statements")
