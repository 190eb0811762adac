"""Rewards to preference pairs: best answer = chosen, worst = rejected, one pair per prompt.

The reward of a response is the mean of its four scores (the ``rewards`` view); a response
with a failed dimension has no reward and takes no part. Prompts with too few rewarded answers,
too small a margin, or (by rule) a tie at the top or bottom are skipped, with the reason kept
in ``pairs``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import pyarrow as pa

from tasks import catalog
from tasks.lake import Lake
from tasks.sample.layout import build_messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairRule:
    min_answers: int = 5   # as published: a prompt needs 5 scored answers
    min_margin: float = 0.0
    ties: Literal["first", "skip"] = "first"   # "first": lowest sample index wins a tie

    def __post_init__(self):
        if self.min_answers < 2:
            raise ValueError("a pair needs at least 2 answers")
        if self.min_margin < 0:
            raise ValueError("min_margin must be >= 0")
        if self.ties not in ("first", "skip"):
            raise ValueError("ties must be 'first' or 'skip'")


@dataclass(frozen=True)
class Candidate:
    response_id: str
    sample_index: int
    reward: float | None
    failure: str | None = None


@dataclass(frozen=True)
class Decision:
    chosen: Candidate | None
    rejected: Candidate | None
    skip_reason: str | None = None

    @property
    def margin(self) -> float | None:
        if self.chosen and self.rejected:
            return self.chosen.reward - self.rejected.reward
        return None


NOT_SCORED = "not scored"   # the start of a candidate's failure while judgments are missing


def choose_pair(candidates: list[Candidate], rule: PairRule) -> Decision:
    """The best and worst rewarded answers of one prompt, or why there is no pair.

    A prompt some of whose answers are still being scored (a batch handed over, a run cut
    short) waits: those answers may be the best or the worst, and a pair published now would
    be replaced by the next night's anyway."""
    pending = sum(1 for c in candidates if (c.failure or "").startswith(NOT_SCORED))
    if pending:
        return Decision(None, None, f"scoring incomplete: {pending} of {len(candidates)} "
                        "answers not scored yet")
    rewarded = sorted((c for c in candidates if c.reward is not None),
                      key=lambda c: c.sample_index)
    if len(rewarded) < rule.min_answers:
        failed = len(candidates) - len(rewarded)
        return Decision(None, None, f"only {len(rewarded)} rewarded answers (need "
                        f"{rule.min_answers}; {failed} without reward)")
    best = max(c.reward for c in rewarded)
    worst = min(c.reward for c in rewarded)
    if best == worst:
        return Decision(None, None, f"all {len(rewarded)} answers have the same reward {best:g}")
    top = [c for c in rewarded if c.reward == best]
    bottom = [c for c in rewarded if c.reward == worst]
    if rule.ties == "skip" and (len(top) > 1 or len(bottom) > 1):
        return Decision(None, None, f"tie: {len(top)} answers share the best reward, "
                        f"{len(bottom)} the worst")
    decision = Decision(top[0], bottom[0])
    if decision.margin < rule.min_margin:
        return Decision(None, None, f"margin {decision.margin:.3g} below the minimum "
                        f"{rule.min_margin:g}")
    return decision


def candidates_by_prompt(lake: Lake) -> dict[str, list[Candidate]]:
    con = catalog.connect(lake)
    rows = con.execute("""
        SELECT r.prompt_id, r.response_id, r.sample_index, w.reward,
               coalesce(w.failure_reason, ?) AS failure
        FROM responses r LEFT JOIN rewards w USING (response_id)
        ORDER BY r.prompt_id, r.sample_index""", [NOT_SCORED]).fetchall()
    grouped: dict[str, list[Candidate]] = {}
    for prompt_id, response_id, sample_index, reward, failure in rows:
        grouped.setdefault(prompt_id, []).append(
            Candidate(response_id, sample_index, reward, None if reward is not None else failure))
    return grouped


def fingerprint(candidates: list[Candidate], rule: PairRule) -> str:
    """What a prompt's decision depends on: its answers' rewards and the rule."""
    blob = repr((sorted((c.response_id, c.reward) for c in candidates), rule))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_pairing(lake: Lake, rule: PairRule, run_id: str) -> tuple[int, int]:
    """Decide the pair of every prompt whose answers' rewards (or the rule) changed since its
    last decision; returns (pairs, skipped) decided in this run.

    A night with nothing new writes nothing, so ``pairs`` grows with new data, not with the
    number of runs. ``pairs_latest`` holds every prompt's current decision.
    """
    now = datetime.now(UTC)
    decided = dict(catalog.connect(lake).execute(
        "SELECT prompt_id, candidates_hash FROM pairs_latest").fetchall())
    rows = []
    for prompt_id, candidates in candidates_by_prompt(lake).items():
        stamp = fingerprint(candidates, rule)
        if decided.get(prompt_id) == stamp:
            continue
        d = choose_pair(candidates, rule)
        rows.append({
            "prompt_id": prompt_id, "run_id": run_id, "created_at": now,
            "chosen_response_id": d.chosen.response_id if d.chosen else None,
            "rejected_response_id": d.rejected.response_id if d.rejected else None,
            "chosen_reward": d.chosen.reward if d.chosen else None,
            "rejected_reward": d.rejected.reward if d.rejected else None,
            "margin": d.margin, "status": "paired" if d.chosen else "skipped",
            "skip_reason": d.skip_reason, "candidates_hash": stamp})
    lake.upsert("pairs", rows)
    paired = sum(r["status"] == "paired" for r in rows)
    log.info("pair: %d prompts decided (%d paired), %d unchanged", len(rows), paired,
             len(decided) - sum(r["prompt_id"] in decided for r in rows))
    return paired, len(rows) - paired


MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.large_string())]))


def preference_table(lake: Lake, style: Literal["conversational", "plain"] = "conversational",
                     template: str | None = None) -> pa.Table:
    """Every prompt's current pair (``pairs_latest``) in TRL's preference format: prompt,
    chosen, rejected (+ provenance). Unchanged pairs give the same table, hence the same
    dataset version.

    Conversational rows hold lists of ``{role, content}`` messages, as TRL's ``DPOTrainer``
    reads them (``prompt`` = the user turn the policy saw, ``chosen``/``rejected`` = one
    assistant turn each); plain rows hold text.
    """
    con = catalog.connect(lake)
    rows = con.execute("""
        SELECT p.prompt_id, q.context, q.query, c.text AS chosen, r.text AS rejected,
               p.chosen_reward, p.rejected_reward, p.margin,
               p.chosen_response_id, p.rejected_response_id
        FROM pairs_latest p
        JOIN prompts q USING (prompt_id)
        JOIN responses c ON c.response_id = p.chosen_response_id
        JOIN responses r ON r.response_id = p.rejected_response_id
        WHERE p.status = 'paired'
        ORDER BY p.prompt_id""").to_arrow_table().to_pylist()
    out = []
    for row in rows:
        messages = build_messages(row.pop("context"), row.pop("query"), template)
        if style == "conversational":
            prompt = messages
            chosen = [{"role": "assistant", "content": row["chosen"]}]
            rejected = [{"role": "assistant", "content": row["rejected"]}]
        else:
            prompt, chosen, rejected = messages[-1]["content"], row["chosen"], row["rejected"]
        out.append({**row, "prompt": prompt, "chosen": chosen, "rejected": rejected,
                    "format": style})
    text = MESSAGES if style == "conversational" else pa.large_string()
    schema = pa.schema([("prompt_id", pa.string()), ("prompt", text), ("chosen", text),
                        ("rejected", text), ("format", pa.string()),
                        ("chosen_reward", pa.float64()), ("rejected_reward", pa.float64()),
                        ("margin", pa.float64()), ("chosen_response_id", pa.string()),
                        ("rejected_response_id", pa.string())])
    return pa.Table.from_pylist(out, schema=schema)
