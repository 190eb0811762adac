"""A hand-written evaluation set for the offline judge, and the harness that scores it.

Each item (one YAML file) is a question about one report that sits between unrelated documents
(``distractors.yaml``, shared to save writing), a clean answer of 150-250 words written by hand,
and four defects, each planted the way a careful annotator would and each aimed at one
dimension:

- ``faithfulness``: one figure, name or date of the clean answer changed (``from`` -> ``to``);
- ``completeness``: one key point of the clean answer dropped (a sentence removed);
- ``logicality``: a sentence inserted that contradicts another one about the same fact;
- ``helpfulness``: a well-written answer about the neighbouring document instead.

The splits, in the order they were written: ``tune/`` (the first judge was tuned on it);
``held_out/`` (written before that tuning, but looked at while improving the judge since);
``fresh/`` (written before the second round of tuning and scored untouched first, then tuned
on); ``final/`` (written after the second round, scored untouched, tuned on in the third);
``sealed/`` (written blind, by someone who had not read the judge's code, after the third
round; scored untouched, then tuned on in the fourth); ``unseen/`` (12 items written blind
after the fourth round; scored untouched, then tuned on in the fifth); ``blind3/`` (12 items
written blind after the fifth round of tuning, never tuned on); ``blind4/`` (12 items written
blind after ``blind3``, measured on the same judge, never tuned on); ``blind5/`` (12 items
written blind after ``blind4``, measured untouched on that judge, then tuned on: sectioned
reports, titles ending with a full stop); ``blind6/`` (12 items written blind after the
changes ``blind5`` led to, measured untouched, then tuned on); ``blind7/`` (10 items written
blind after that, never tuned on). Each new split uses topics and
styles the earlier ones do not. :func:`evaluate` scores every answer
through the real scoring stage (:func:`tasks.score.stage.score_prompt`) and :func:`win_rates`
counts how often the clean answer beats each defect on the defect's own dimension and on the
reward (mean of four).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.embeddings import Embedder
from tasks.schemas import DIMENSIONS
from tasks.score.judge import Judge
from tasks.score.stage import ScoreOptions, score_prompt

HERE = Path(__file__).parent
SPLITS = ("tune", "held_out", "fresh", "final", "sealed", "unseen", "blind3", "blind4",
          "blind5", "blind6", "blind7")
DEFECTS = DIMENSIONS   # each defect is planted against the dimension it is named after


@dataclass(frozen=True)
class Item:
    id: str
    split: str
    query: str
    context: str
    answers: dict[str, str]  # "clean" and one per defect


def _prose(text: str) -> str:
    """Paragraphs kept, the lines inside each joined (YAML block scalars keep line breaks)."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _once(text: str, old: str, new: str, item: str) -> str:
    if text.count(old) != 1:
        raise ValueError(f"{item}: {old[:40]!r} occurs {text.count(old)} times in the answer")
    return text.replace(old, new)


def _defects(clean: str, spec: dict, item: str) -> dict[str, str]:
    faith = spec["faithfulness"]
    dropped = _once(clean, " ".join(spec["completeness"]["drop"].split()), "", item)
    logic = spec["logicality"]
    after = " ".join(logic["after"].split())
    return {
        "faithfulness": _once(clean, faith["from"], faith["to"], item),
        "completeness": re.sub(r" +", " ", re.sub(r" +\n|\n +", "\n", dropped)).strip(),
        "logicality": _once(clean, after, f"{after} {' '.join(logic['insert'].split())}", item),
        "helpfulness": _prose(spec["helpfulness"]),
    }


def load_items(split: str | None = None) -> list[Item]:
    """The items of one split (``tune`` / ``held_out``), or all."""
    distractors = {k: _prose(v) for k, v in
                   yaml.safe_load((HERE / "distractors.yaml").read_text()).items()}
    items = []
    for name in SPLITS if split is None else (split,):
        for path in sorted((HERE / name).glob("*.yaml")):
            spec = yaml.safe_load(path.read_text())
            neighbour = spec["neighbour"]
            others = [distractors[d] for d in spec["distractors"] if d != neighbour]
            # one more unrelated document, so every context runs to some three thousand words
            others += [text for d, text in distractors.items() if d not in spec["distractors"]][:1]
            # the relevant report sits between unrelated ones, its neighbour right before or after
            before, after = ([others[0], distractors[neighbour]], others[1:])
            if len(path.stem) % 2:
                before, after = others[:2], [distractors[neighbour], *others[2:]]
            document = _prose(spec["document"])
            clean = _prose(spec["answer"])
            items.append(Item(path.stem, name, " ".join(spec["query"].split()),
                              "\n\n".join([*before, document, *after]),
                              {"clean": clean, **_defects(clean, spec, path.stem)}))
    return items


@dataclass
class Scored:
    item: Item
    scores: dict[str, dict[str, float | None]]  # answer kind -> dimension -> score
    seconds: float

    def reward(self, kind: str) -> float | None:
        values = [self.scores[kind][d] for d in DIMENSIONS]
        return None if None in values else sum(values) / len(values)


async def _score_item(judge: Judge, embedder: Embedder, item: Item,
                      options: ScoreOptions) -> Scored:
    started = time.perf_counter()
    prompt = {"prompt_id": item.id, "context": item.context, "query": item.query}
    responses = [{"response_id": kind, "prompt_id": item.id, "text": text}
                 for kind, text in item.answers.items()]
    result = await score_prompt(judge, embedder, prompt, responses, options, "offline-eval")
    scores: dict[str, dict[str, float | None]] = {kind: {} for kind in item.answers}
    for row in result.judgments:
        scores[row["response_id"]][row["dimension"]] = row["score"]
    return Scored(item, scores, time.perf_counter() - started)


def evaluate(judge: Judge, embedder: Embedder, items: list[Item],
             options: ScoreOptions | None = None) -> list[Scored]:
    """Every answer of every item scored on the four dimensions, one item at a time."""
    options = options or ScoreOptions()

    async def main() -> list[Scored]:
        return [await _score_item(judge, embedder, item, options) for item in items]

    return asyncio.run(main())


def win_rates(scored: list[Scored]) -> dict[str, tuple[float, float]]:
    """Per defect: (share of items where clean scores strictly higher on the defect's own
    dimension, share where clean's reward is strictly higher)."""
    rates = {}
    for defect in DEFECTS:
        own = [s.scores["clean"][defect] > s.scores[defect][defect] for s in scored]
        reward = [s.reward("clean") > s.reward(defect) for s in scored]
        rates[defect] = (sum(own) / len(own), sum(reward) / len(reward))
    return rates


def chat(judge: Judge, title: str, *sections: str) -> str:
    """One task for the judge, by a prompt whose body is not ours: only the title line and the
    delimited sections count."""
    system = f"# {title}\n\nWhatever instructions the prompt files hold this week."
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": "Some preamble.\n" + "\n".join(sections)}]
    return asyncio.run(judge.chat(messages)).text
