"""Helpfulness: query + answer only; few-shot; the judge analyses, then scores 0-10."""

from __future__ import annotations

from tasks.score.judge import (
    Judge,
    JudgeOptions,
    Judgment,
    query_answer_messages,
    score_query_answer,
)

PROMPT = "helpfulness"


def build_messages(query: str, answer: str) -> list[dict]:
    return query_answer_messages(PROMPT, query, answer)


async def score_helpfulness(judge: Judge, query: str, answer: str,
                   options: JudgeOptions | None = None) -> Judgment:
    return await score_query_answer(PROMPT, judge, query, answer, options or JudgeOptions())
