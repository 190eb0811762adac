"""The offline judge: a stand-in for an LLM judge, for the demo and CI. Not a language model.

It answers the very prompts the real judge gets (it reads the delimited query / answer /
evidence sections) and replies in the judge output protocol, from lexical and embedding
evidence only. What each task approximates:

- helpfulness: cosine similarity of query and answer embeddings (all-MiniLM-L6-v2), the share
  of the query's content words the answer uses, and how much content it has;
- logicality: counts sentences that negate an earlier sentence about the same thing
  ("did not", "never", "no change", ...; sharing two content words, or one after "However")
  and verbatim repetitions; 10 minus 3.5 per error;
- statements: sentence split; sentences with fewer than four words, ending in ':' or opening
  with a stock phrase ("Here are", "In summary", "I hope") are functional and dropped;
- support: share of the statement's content words found in the evidence; a number or a
  capitalised name absent from the evidence caps the grade at partial (none if little else
  matches);
- extraction: the chunk's sentences that share enough content words with the query;
- coverage: the share of key points whose content words (numbers and names included) appear
  in the answer.

It reads no meaning: paraphrase, reasoning and subtle errors are beyond it. Rows it produces
carry ``judge_model = "offline-judge"``.
"""

from __future__ import annotations

import re
import time

import numpy as np

from tasks.embeddings import Embedder, LocalEmbedder
from tasks.llm.client import ChatResult
from tasks.score.judge import step_of

MODEL = "offline-judge"
STOPWORDS = frozenset((  # noqa: SIM905 - a word list reads best as prose
    "a an the and or but of to in on at by for with from as is are was were be been being it "
    "its this that these those there their they them he she his her we our you your i what "
    "which who whom how why when where does did do done has have had not no yes so than then "
    "also about into over under up down out any all some each most more many much very can "
    "could would should may might will just only own same such too report document says say "
    "according give gives given"
).split())
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d[\d,.]*\d|\d")
_NUMBER = re.compile(r"\d[\d,.]*\d|\d")
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_NEGATION = re.compile(r"\b(did not|does not|was not|were not|never|no change|not at all|"
                       r"did not change|nothing|contrary|opposite|false)\b", re.I)
_CONTRAST = re.compile(r"^(however|but|yet|in fact|actually)\b", re.I)
_POINT = re.compile(r"^\d+\.\s+(.*)$", re.M)
_ABSENCE = re.compile(r"\b(does not|doesn't|do not|did not) (say|state|mention|contain|give|"
                      r"include)|\bno (information|mention|details?)\b|\bnot (mentioned|stated|"
                      r"given)\b", re.I)
_FUNCTIONAL = re.compile(r"^(here (is|are)|in summary|to summari[sz]e|overall,? here|i hope|"
                         r"let me|the following|below (is|are))\b", re.I)


def _section(text: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}(?: [^>]*)?>\n(.*?)\n</{tag}>", text, re.S)
    return match.group(1).replace(f"<\\/{tag}>", f"</{tag}>") if match else None


def _stem(word: str) -> str:
    """A crude suffix strip so 'changes', 'changed' and 'change' meet."""
    for suffix in ("ing", "ed", "es", "e", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    words = {w.lower().strip(".,") for w in _WORD.findall(text)} - STOPWORDS
    return {_stem(w) for w in words}


def numbers(text: str) -> set[str]:
    return {n.rstrip(".,") for n in _NUMBER.findall(text)}


def names(text: str) -> set[str]:
    return set(_NAME.findall(text)) - {"In", "The", "However", "According", "Section"}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]


def _clamp(x: float) -> float:
    return max(0.0, min(1.0, x))


class OfflineJudge:
    """Implements the judge interface (``model``, ``async chat``) without a model."""

    model = MODEL

    def __init__(self, embedder: Embedder | None = None):
        self.embedder = embedder or LocalEmbedder()
        self.calls = 0

    async def chat(self, messages: list[dict], *, temperature: float = 0.0, top_p: float = 1.0,
                   max_tokens: int = 1024, attempt: int = 0, **_: object) -> ChatResult:
        started = time.perf_counter()
        self.calls += 1
        user = messages[-1]["content"]
        step = step_of(messages)
        handler = {
            "helpfulness": self._helpfulness,
            "logicality": self._logicality,
            "faithfulness_statements": self._statements,
            "faithfulness_support": self._support,
            "completeness_extract": self._extraction,
            "completeness_coverage": self._coverage,
        }.get(step or "")
        if handler is None:
            raise ValueError("the offline judge does not know the task of "
                             f"{str(messages[0].get('content'))[:60]!r}")
        text = await handler(user)
        return ChatResult(text, "stop", None, None, (time.perf_counter() - started) * 1000,
                          False, "")

    async def _helpfulness(self, user: str) -> str:
        query, answer = _section(user, "query") or "", _section(user, "answer") or ""
        vectors = await self.embedder.embed([query, answer])
        similarity = float(np.dot(vectors[0], vectors[1]))
        q_words = content_words(query)
        overlap = len(q_words & content_words(answer)) / max(len(q_words), 1)
        substance = _clamp(len(content_words(answer)) / 40)
        score = 10 * _clamp(0.45 * _clamp((similarity - 0.1) / 0.6) + 0.35 * overlap
                            + 0.2 * substance)
        return (f"Analysis: semantic similarity to the question {similarity:.2f}; the answer "
                f"uses {overlap:.0%} of the question's key words; substance {substance:.2f}.\n"
                f"[[{score:.1f}]]")

    async def _logicality(self, user: str) -> str:
        said = sentences(_section(user, "answer") or "")
        errors = []
        for i, sentence in enumerate(said):
            words = content_words(sentence)
            for j in range(i):
                if sentence == said[j]:
                    errors.append(f"- Sentence {i + 1} repeats sentence {j + 1} verbatim.")
                    break
                shared = len(words & content_words(said[j]))
                contrast = _CONTRAST.match(sentence) is not None
                if _NEGATION.search(sentence) and (shared >= 2 or (contrast and shared >= 1)):
                    errors.append(f"- Sentence {i + 1} negates what sentence {j + 1} states.")
                    break
        score = max(0.0, 10 - 3.5 * len(errors))
        return "\n".join(errors or ["No logical errors."]) + f"\n[[{score:.1f}]]"

    async def _statements(self, user: str) -> str:
        kept = [s for s in sentences(_section(user, "answer") or "")
                if len(s.split()) >= 4 and not s.endswith(":") and not _FUNCTIONAL.match(s)]
        if not kept:
            return "No factual statements."
        return "\n".join(f"<statement>{s}</statement>" for s in kept)

    async def _support(self, user: str) -> str:
        evidence = _section(user, "evidence") or ""
        statement = _section(user, "statement") or ""
        words = content_words(statement)
        found = len(words & content_words(evidence)) / max(len(words), 1)
        missing = (numbers(statement) - numbers(evidence)) | (names(statement) - names(evidence))
        if missing:
            verdict = "Partially supported" if found >= 0.6 else "No support"
            why = f"{', '.join(sorted(missing))} does not appear in the evidence"
        else:
            verdict = ("Fully supported" if found >= 0.8 else
                       "Partially supported" if found >= 0.5 else "No support")
            why = f"{found:.0%} of the statement's key words appear in the evidence"
        return f"{why}.\n[[{verdict}]]"

    async def _extraction(self, user: str) -> str:
        q_words = content_words(_section(user, "query") or "")
        need = max(2, -(-len(q_words) // 3))
        relevant = [s for s in sentences(_section(user, "chunk") or "")
                    if len(content_words(s) & q_words) >= need]
        if not relevant:
            return "No relevant information"
        return "\n".join(f"{i}. {s}" for i, s in enumerate(relevant, start=1))

    async def _coverage(self, user: str) -> str:
        points = [m.group(1) for m in _POINT.finditer(_section(user, "key_points") or "")]
        answer = _section(user, "answer") or ""
        if not points:  # the document holds nothing relevant: does the answer say so?
            score = 9.0 if _ABSENCE.search(answer) else 3.0
            return f"No part holds relevant information.\n[[{score:.1f}]]"
        a_words = content_words(answer) | {n.lower() for n in numbers(answer)}
        marks = []
        for point in points:
            words = content_words(point)
            share = len(words & a_words) / max(len(words), 1)
            marks.append(1.0 if share >= 0.6 else 0.5 if share >= 0.3 else 0.0)
        score = 10 * sum(marks) / max(len(marks), 1)
        notes = [f"- key point {i + 1}: {'covered' if m == 1 else 'partly' if m else 'missed'}"
                 for i, m in enumerate(marks)]
        return "\n".join(notes) + f"\n[[{score:.1f}]]"
