"""Synthetic long-context prompts for the demo, tests and benchmarks (seeded, reproducible).

Each document is a fictional organisation's report: sections of concrete facts (names, years,
figures) among filler paragraphs, with a query whose answer is spread across the document, so
retrieval and coverage have something real to find.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

_PLACES = ["Veldmark", "Orsano", "Tiberra", "Kesswick", "Lunhaven", "Marrowdale", "Quillport",
           "Sarnet", "Eldergate", "Brightwater", "Coriander Bay", "Hollin"]
_BODIES = ["Harbor Authority", "Water Board", "Rail Cooperative", "Public Library Trust",
           "Energy Agency", "Forestry Office", "Transit Council", "Health Service"]
_METRICS = [("ship arrivals", 800, 9000), ("kilometres of track", 40, 900),
            ("registered members", 1200, 90000), ("megawatt-hours delivered", 5000, 400000),
            ("hectares replanted", 30, 4000), ("complaints resolved", 100, 6000),
            ("staff employed", 40, 3000), ("visitors", 2000, 500000)]
_PEOPLE = ["Ana Kessler", "Tomas Eribe", "Yuki Marland", "Priya Holt", "Jonah Wexley",
           "Leila Varga", "Oskar Brandt", "Mei Castell", "Ruth Ondaatje", "Samir Dallow"]
_CAUSES = ["a new maintenance contract", "an unusually dry summer", "a change in national rules",
           "the opening of the northern depot", "a two-month strike", "higher fuel prices",
           "a digital booking system", "the merger with a neighbouring district"]
_FILLER = [
    "The committee reviewed routine correspondence and approved the minutes of the previous "
    "meeting without amendment.",
    "Members noted that the archive of older records is being moved to a new storage room.",
    "A short presentation described the history of the building and its renovation plans.",
    "Several procedural questions were raised and referred to the secretariat for follow-up.",
    "The chair thanked the volunteers who organised the open day and the staff who supported it.",
    "Questions from the public concerned parking, signage and the opening hours of the office.",
]


@dataclass(frozen=True)
class DemoPrompt:
    id: str
    context: str
    query: str
    facts: list[str]

    def record(self) -> dict:
        return {"id": self.id, "context": self.context, "query": self.query,
                "meta": {"generator": "longreward.demo_data", "facts": len(self.facts)}}


def make_prompt(index: int, seed: int = 0, target_words: int = 1500) -> DemoPrompt:
    rng = random.Random(seed * 1_000_003 + index)
    place, body = rng.choice(_PLACES), rng.choice(_BODIES)
    org = f"the {body} of {place}"
    metric, lo, hi = rng.choice(_METRICS)
    facts = []
    for year in rng.sample(range(2012, 2025), 4):
        value = rng.randint(lo, hi)
        person, cause = rng.choice(_PEOPLE), rng.choice(_CAUSES)
        facts.append(f"In {year}, {org} recorded {value:,} {metric}, a change its director "
                     f"{person} attributed to {cause}.")
    paragraphs = [f"Annual report of {org}. This document collects the minutes, figures and "
                  "decisions of the board."]
    words = len(paragraphs[0].split())
    slots = sorted(rng.sample(range(2, 64), len(facts)))
    i = 0
    while words < target_words or slots:
        if slots and i == slots[0]:
            slots.pop(0)
            sentence = facts[len(facts) - len(slots) - 1]
        else:
            sentence = " ".join(rng.sample(_FILLER, 3))
        paragraphs.append(f"Section {i + 1}. {sentence}")
        words += len(sentence.split()) + 2
        i += 1
    query = rng.choice([
        f"How did the number of {metric} at {org} change over the years, and why?",
        f"Summarise what the report says about {metric} and who explained the changes.",
        f"What figures does the report give for {metric}, and what reasons are offered?",
    ])
    return DemoPrompt(f"demo-{seed}-{index}", "\n\n".join(paragraphs), query, facts)


def make_prompts(n: int, seed: int = 0, target_words: int = 1500) -> list[DemoPrompt]:
    return [make_prompt(i, seed, target_words) for i in range(n)]


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def bad_lines(good: DemoPrompt) -> list[bytes]:
    """One line of each kind of bad record, for the demo's rejects table."""
    return [
        b'{"id": "broken", "context": "unterminated',                       # malformed JSON
        json.dumps({"id": "no-query", "context": good.context[:200]}).encode(),  # missing field
        json.dumps({"id": "empty", "context": "   ", "query": "Why?"}).encode(),  # empty field
        json.dumps({"id": 7.5, "context": ["a"], "query": "Why?"}).encode(),      # wrong type
        b'{"id": "latin1", "context": "caf\xe9", "query": "Where?"}',            # not UTF-8
        json.dumps(good.record()).encode(),                                  # duplicate
    ]
