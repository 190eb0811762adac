"""Pairing rules: best = chosen, worst = rejected; failures, ties and margins are explicit."""

from __future__ import annotations

import pytest

from tasks.pair import Candidate, PairRule, choose_pair


def c(index: int, reward: float | None) -> Candidate:
    return Candidate(f"r{index}", index, reward, None if reward is not None else "failed")


def test_best_is_chosen_and_worst_is_rejected():
    d = choose_pair([c(0, 5.0), c(1, 9.5), c(2, 1.25), c(3, None)], PairRule(min_answers=3))
    assert (d.chosen.response_id, d.rejected.response_id, d.margin) == ("r1", "r2", 8.25)


def test_five_rewarded_answers_are_needed_by_default_as_published():
    four = [c(0, 9.0), c(1, 2.0), c(2, 5.0), c(3, 6.0), c(4, None)]
    assert choose_pair(four, PairRule()).skip_reason == \
        "only 4 rewarded answers (need 5; 1 without reward)"
    assert choose_pair(four + [c(5, 1.0)], PairRule()).rejected.response_id == "r5"


def test_answers_without_reward_take_no_part():
    d = choose_pair([c(0, None), c(1, 7.0), c(2, None)], PairRule())
    assert d.chosen is None and "only 1 rewarded answers" in d.skip_reason
    assert "2 without reward" in d.skip_reason


def test_ties_first_wins_or_skip():
    answers = [c(0, 8.0), c(1, 8.0), c(2, 3.0)]
    assert choose_pair(answers, PairRule(min_answers=3)).chosen.response_id == "r0"
    skipped = choose_pair(answers, PairRule(min_answers=3, ties="skip"))
    assert skipped.chosen is None and skipped.skip_reason.startswith("tie")
    same = choose_pair([c(0, 4.0), c(1, 4.0)], PairRule(min_answers=2))
    assert "same reward" in same.skip_reason


def test_minimum_margin_and_answers():
    assert "below the minimum" in choose_pair([c(0, 5.0), c(1, 5.5)],
                                              PairRule(2, min_margin=1.0)).skip_reason
    assert "need 3" in choose_pair([c(0, 1.0), c(1, 2.0)], PairRule(min_answers=3)).skip_reason


@pytest.mark.parametrize("kw", [{"min_answers": 1}, {"min_margin": -1}, {"ties": "random"}])
def test_bad_rules_are_refused(kw):
    with pytest.raises(ValueError):
        PairRule(**kw)


def test_a_night_with_nothing_new_writes_no_pair_and_a_changed_prompt_is_redecided(lake):
    from datetime import UTC, datetime

    from tasks.pair import run_pairing
    from tasks.schemas import DIMENSIONS

    now = datetime(2026, 12, 1, tzinfo=UTC)

    def answer(pid: str, i: int, score: float) -> None:
        lake.upsert("responses", [{"response_id": f"{pid}-{i}", "prompt_id": pid,
                                   "sample_index": i, "text": "t", "policy_model": "m",
                                   "run_id": "r", "created_at": now}])
        lake.upsert("judgments", [{"response_id": f"{pid}-{i}", "prompt_id": pid,
                                   "dimension": d, "score": score, "status": "ok",
                                   "judge_model": "j", "run_id": "r", "created_at": now}
                                  for d in DIMENSIONS])

    for pid in ("a", "b"):
        for i, score in enumerate([2.0, 5.0, 8.0]):
            answer(pid, i, score)
    rule = PairRule(min_answers=3)
    assert run_pairing(lake, rule, "night-1") == (2, 0)
    assert run_pairing(lake, rule, "night-2") == (0, 0)      # nothing new: nothing written
    assert lake.count("pairs") == 2
    answer("b", 3, 9.5)                                      # a better answer for b only
    assert run_pairing(lake, rule, "night-3") == (1, 0)
    from tasks import catalog
    latest = dict(catalog.connect(lake).execute(
        "SELECT prompt_id, chosen_response_id FROM pairs_latest").fetchall())
    assert latest == {"a": "a-2", "b": "b-3"} and lake.count("pairs") == 3
    assert run_pairing(lake, PairRule(min_answers=4), "night-4") == (1, 1)  # a new rule


def test_a_prompt_still_being_scored_waits_for_its_last_answers(lake):
    """An answer sampled but not judged yet (a handed-over batch) may be the best or the
    worst: its prompt is not paired until it is scored, then it is."""
    from datetime import UTC, datetime

    from tasks import catalog
    from tasks.pair import run_pairing
    from tasks.schemas import DIMENSIONS

    now = datetime(2026, 12, 1, tzinfo=UTC)
    lake.upsert("responses", [{"response_id": f"p-{i}", "prompt_id": "p", "sample_index": i,
                               "text": "t", "policy_model": "m", "run_id": "r",
                               "created_at": now} for i in range(4)])

    def judge(i: int, score: float, dimensions=DIMENSIONS) -> None:
        lake.upsert("judgments", [{"response_id": f"p-{i}", "prompt_id": "p", "dimension": d,
                                   "score": score, "status": "ok", "judge_model": "j",
                                   "run_id": "r", "created_at": now} for d in dimensions])

    for i, score in enumerate([2.0, 5.0, 8.0]):
        judge(i, score)
    judge(3, 9.5, DIMENSIONS[:2])                      # half-judged
    rule = PairRule(min_answers=3)
    assert run_pairing(lake, rule, "night-1") == (0, 1)
    reason = catalog.connect(lake).execute("SELECT skip_reason FROM pairs_latest").fetchone()
    assert reason == ("scoring incomplete: 1 of 4 answers not scored yet",)
    judge(3, 9.5)
    assert run_pairing(lake, rule, "night-2") == (1, 0)
    chosen = catalog.connect(lake).execute("SELECT chosen_response_id FROM pairs_latest")
    assert chosen.fetchone() == ("p-3",)
