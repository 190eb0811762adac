"""The offline policy: the demo/CI stand-in for a sampling model. Not a language model.

It builds readable answers of deliberately varied quality from the context itself (see
:class:`OfflinePolicy` for exactly what it approximates), seeded by (seed, prompt, sample), so
the demo and CI produce meaningful scores and pairs with no model and no endpoint.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.sample.base import OFFLINE_MODEL, Policy, Sample, SamplingParams, derive_seed, wanted

# -- the offline stand-in ----------------------------------------------------------------------

STYLES = ("good", "partial", "hallucinated", "off_topic", "contradictory")
STYLE_WEIGHTS = (0.35, 0.2, 0.15, 0.15, 0.15)

_STOPWORD_TEXT = """
a about above after again all also an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has
have having he her here hers him his how i if in into is it its itself just me more most my no
nor not of off on once only or other our out over own same she should so some such than that
the their them then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your report document says say
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
# a whole number as written (1,234 / 2016 / 3.5), not a piece of one; "2016," still counts
_EDGES = (r"(?<!\w)(?<!\d[.,])", r"(?!\w)(?![.,]\d)")
_NUMBER = re.compile(_EDGES[0] + r"(?:\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)" + _EDGES[1])
_YEAR = re.compile(r"(19|20)\d\d")
_NAME = re.compile(r"(?<=[a-z,;] )[A-Z][a-z]{2,}\b")
_FAKE_NAMES = ("Halvorsen", "Pemberton", "Okonkwo", "Lindqvist", "Marchetti", "Zarins",
               "Abernathy", "Quintero", "Brevik", "Tashkova")
_INTROS = ("According to the document, ", "The document states that ", "Based on the text, ",
           "The report indicates that ")
_CONNECTORS = ("In addition, ", "It also notes that ", "Furthermore, ", "Moreover, ",
               "The text adds that ")
_RESTATE = ("In other words, ", "To repeat the key figure, ", "That is, ")
_MIN_WORDS = 4


def split_sentences(text: str) -> list[str]:
    """Sentences of a text (paragraph breaks always end one); fragments under 4 words and
    repeats are dropped."""
    seen: set[str] = set()
    out = []
    for paragraph in re.split(r"\n\s*\n|\n", text):
        for sentence in _SENTENCE_END.split(paragraph.strip()):
            sentence = " ".join(sentence.split())
            if len(sentence.split()) >= _MIN_WORDS and sentence not in seen:
                seen.add(sentence)
                out.append(sentence)
    return out


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def _lower_first(sentence: str, names: Collection[str]) -> str:
    """Lowercase a sentence's first letter to follow a connective, unless it starts a name."""
    first = sentence.split(" ", 1)[0]
    return sentence if first in names else sentence[:1].lower() + sentence[1:]


def _appears(token: str, text: str) -> bool:
    return re.search(_EDGES[0] + re.escape(token) + _EDGES[1], text) is not None


class OfflinePolicy(Policy):
    """The demo and CI policy: extractive answers of deliberately varied quality, no model.

    It approximates what a sampled policy gives a judge to tell apart, nothing more: it splits
    the context into sentences, ranks them by lexical overlap with the query (lowercased words,
    stopwords ignored), and per sample draws a style, seeded by (seed, params.seed, prompt_id,
    sample_index):

    - ``good``: the top-ranked relevant sentences, up to 5 (overlap at least 60% of the best),
      in document order, behind a short intro ("According to the document, ...") and
      connectives;
    - ``partial``: only 1-2 of them (key points dropped: completeness);
    - ``hallucinated``: a good answer with one fact corrupted: a number, else a capitalised
      name, replaced by one that does not occur in the context (faithfulness);
    - ``off_topic``: sentences with the lowest overlap, filler about something else
      (helpfulness);
    - ``contradictory``: a good answer that then restates one of its sentences with another
      figure, "In other words, ..." (logicality), or denies it when it has no figure.

    Each defect aims at one dimension, so a good answer should beat it there and on the reward;
    what was planted is recorded in ``meta``.

    It is not a language model: it writes no new content beyond these templates, ignores
    temperature and top_p, reports no token counts, and reads the query as the last paragraph
    of the last message (the default layout). The style is in ``Sample.meta["style"]``, and
    every row it produces carries the model name ``offline-policy``.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.model = OFFLINE_MODEL

    async def generate(self, prompt_id: str, messages: list[dict], k: int,
                       params: SamplingParams, *,
                       indices: Collection[int] | None = None) -> list[Sample]:
        context, query = _split_prompt(messages)
        sentences = split_sentences(context)
        query_words = content_words(query)
        scores = [len(content_words(s) & query_words) for s in sentences]
        doc = _Doc(context, sentences, scores, {m.group(0) for m in _NAME.finditer(context)})
        out = []
        for i in wanted(k, indices):
            rng = random.Random(derive_seed(self.seed, params.seed, prompt_id, i))
            style = rng.choices(STYLES, weights=STYLE_WEIGHTS)[0]
            text, meta = _compose(style, doc, rng)
            words = text.split()
            finish = "stop"
            if len(words) > params.max_new_tokens:
                text, finish = " ".join(words[:params.max_new_tokens]), "length"
            out.append(Sample(i, text, None, finish, {"style": style, **meta}))
        return out


def _split_prompt(messages: Sequence[dict]) -> tuple[str, str]:
    content = str(messages[-1]["content"]) if messages else ""
    context, _, query = content.rstrip().rpartition("\n\n")
    return (context, query) if context else (content, content)


@dataclass(frozen=True)
class _Doc:
    context: str
    sentences: list[str]
    scores: list[int]  # query-word overlap per sentence
    names: set[str]  # capitalised words seen mid-sentence: kept capitalised after a connective


def _compose(style: str, doc: _Doc, rng: random.Random) -> tuple[str, dict[str, Any]]:
    sentences, scores = doc.sentences, doc.scores
    if not sentences:
        return "The document does not contain enough information to answer.", {"empty": True}
    by_rank = sorted(range(len(sentences)), key=lambda j: (-scores[j], j))
    best = scores[by_rank[0]]
    # relevant: close to the best overlap (a title naming the organisation is not an answer)
    relevant = [j for j in by_rank if scores[j] > 0 and scores[j] >= 0.6 * best] or by_rank
    meta: dict[str, Any] = {}
    if style in ("good", "hallucinated", "contradictory"):
        picked = sorted(relevant[:5])
    elif style == "partial":
        pool = relevant[:5]
        picked = sorted(rng.sample(pool, min(len(pool), rng.randint(1, 2))))
    else:  # off_topic
        lowest = sorted(range(len(sentences)), key=lambda j: (scores[j], j))
        pool = lowest[:6]
        picked = sorted(rng.sample(pool, min(len(pool), rng.randint(2, 4))))
    parts = [rng.choice(_INTROS) + _lower_first(sentences[picked[0]], doc.names)]
    parts += [rng.choice(_CONNECTORS) + _lower_first(sentences[j], doc.names)
              for j in picked[1:]]
    text = " ".join(parts)
    if style == "hallucinated":
        text, meta = _corrupt(text, doc.context, rng)
    elif style == "contradictory":
        text, meta = _contradict(text, [sentences[j] for j in picked], doc, rng)
    return text, meta


def _contradict(text: str, said: list[str], doc: _Doc,
                rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A good answer that then restates one of its facts with another figure (or denies it)."""
    with_figures = [s for s in said if any(not _YEAR.fullmatch(m.group(0))
                                           for m in _NUMBER.finditer(s))]
    if not with_figures:
        return f"{text} {_opposite(rng.choice(said))}", {"contradicts": None}
    sentence = rng.choice(with_figures)
    restated, meta = _corrupt(sentence, doc.context, rng, keep_years=True)
    return (f"{text} {rng.choice(_RESTATE)}{_lower_first(restated, doc.names)}",
            {"contradicts": meta["corrupted"]})


def _opposite(sentence: str) -> str:
    if _NUMBER.search(sentence):
        return "However, the figure did not change at all."
    if name := _NAME.search(sentence):
        return f"However, {name.group(0)} had nothing to do with any of this."
    return "However, the document also says that none of this happened."


def _corrupt(text: str, context: str, rng: random.Random,
             keep_years: bool = False) -> tuple[str, dict[str, Any]]:
    """Replace one number (else one capitalised name) by one the context does not contain;
    ``keep_years``: change a figure, not a year (a restated fact must stay the same fact)."""
    numbers = [m for m in _NUMBER.finditer(text)
               if not (keep_years and _YEAR.fullmatch(m.group(0)))]
    if numbers:
        match = rng.choice(numbers)
        old = match.group(0)
        value = float(old.replace(",", ""))
        grouped = re.search(r"\d,\d{3}", context) is not None  # the context writes 1,234
        for _ in range(100):
            if re.fullmatch(r"(19|20)\d\d", old):  # a year: move it a few years
                new = str(int(value) + rng.choice([-9, -7, -5, -3, 3, 5, 7, 9]))
            else:
                scaled = value * rng.uniform(1.3, 3.0) + rng.randint(1, 9)
                new = (f"{scaled:.1f}" if "." in old else
                       f"{int(scaled):,}" if "," in old or (scaled >= 1000 and grouped)
                       else str(int(scaled)))
            if not _appears(new, context) and new != old:
                return text[:match.start()] + new + text[match.end():], \
                    {"corrupted": {"from": old, "to": new}}
    names = [m for m in _NAME.finditer(text) if m.group(0).lower() not in _STOPWORDS]
    fakes = [n for n in _FAKE_NAMES if n.lower() not in context.lower()]
    if names and fakes:
        match, new = rng.choice(names), rng.choice(fakes)
        return text[:match.start()] + new + text[match.end():], \
            {"corrupted": {"from": match.group(0), "to": new}}
    # nothing to corrupt: assert a fact the context does not hold
    year = next(str(y) for y in range(1951, 2100, 7) if not _appears(str(y), context))
    claim = f" It also reports that the project was abandoned in {year}."
    return text + claim, {"corrupted": {"from": None, "to": year}}

