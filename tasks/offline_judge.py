"""The offline judge: a stand-in for an LLM judge, for the demo and CI. Not a language model.

It answers the very prompts the real judge gets and replies in the judge output protocol. It
recognises the task by the system prompt's title line only and reads only the delimited
sections of the user message (``<query>``, ``<answer>``, ``<evidence>``, ``<statement>``,
``<chunk>``, ``<key_points>``), so the prompts' wording may change freely. Its evidence is
sentence embeddings (all-MiniLM-L6-v2, cached per text) and the facts of
:mod:`tasks.offline_text` (figures with what they count, months, names). What each task
approximates:

- helpfulness: how close the answer and each of its sentences are to the question (embeddings,
  figures masked: accuracy is not helpfulness), the share of the question's words it uses, and
  how much it says;
- logicality: pairs of sentences about the same thing (embedding or word overlap) that
  disagree: different figures or places of one kind, opposite trends or outcomes, a denial of
  the same predicate, or an absolute claim against a counted one (:mod:`tasks.offline_logic`);
  and clauses that say opposite things of one subject: directions, comparisons, states,
  places, all against a part, a denial of what another states (:mod:`tasks.offline_assertions`);
- statements: the answer's sentences minus functional and linking ones ("Here are ...", "I
  hope ...", "There were bright spots.");
- support: adjacent segments joined back into one text; each figure and name of the statement
  must appear in an evidence sentence about the same thing (shared words or close meaning), or
  follow from two of its figures (a difference, a percentage change), and most of its words (or
  its meaning, by embedding) must be in the evidence;
- extraction: the chunk's sentences close to the question, judged with their paragraph;
- coverage: per key point, the answer sentence that best states it: its closeness and how many
  of the key point's figures and names (else words) it states.

It reads no meaning: reasoning, paraphrased numbers and subtle errors are beyond it. Rows it
produces carry ``judge_model = "offline-judge"``.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import weakref

import numpy as np

from tasks.config import OFFLINE_JUDGE
from tasks.embeddings import Embedder, LocalEmbedder
from tasks.llm.client import ChatResult
from tasks.offline_logic import Claim, claims, contradictions, disagreement
from tasks.offline_text import (
    STOPWORDS,
    Value,
    _stem,
    content_words,
    names,
    sentences,
    values,
    words,
    wordset,
)
from tasks.score.judge import step_of

MODEL = OFFLINE_JUDGE
_POINT = re.compile(r"^\d+\.\s+(.*)$", re.M)
_ABSENCE = re.compile(r"\b(does not|doesn't|do not|did not) (say|state|mention|contain|give|"
                      r"include)|\bno (information|mention|details?)\b|\bnot (mentioned|stated|"
                      r"given)\b", re.I)
_FUNCTIONAL = re.compile(r"^(here (is|are)|in summary|to summari[sz]e|overall,? here|i hope|"
                         r"let me|the following|below (is|are)|hope this)\b", re.I)
_CAPITALISED = re.compile(r"\b[A-Z][\w'’-]*")
_CACHE_SIZE = 50_000
# what an answer counts when it lays itself out ("three things"): stems, as Value kinds hold
_TALLY = {_stem(w) for w in wordset(
    "thing things reason reasons factor factors change changes issue issues point points way "
    "ways area areas problem problems cause causes lesson lessons main key major big broad "
    "question questions")}


def _section(text: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}(?: [^>]*)?>\n(.*?)\n</{tag}>", text, re.S)
    return match.group(1).replace(f"<\\/{tag}>", f"</{tag}>") if match else None


def _clamp(x: float) -> float:
    return max(0.0, min(1.0, x))


def _ramp(x: float, low: float, high: float) -> float:
    """0 at ``low``, 1 at ``high``, linear between."""
    return _clamp((x - low) / (high - low))


def _named(name: str, written: set[str]) -> bool:
    """A name written in the evidence, or its adjective ("European" for "Europe")."""
    return name in written or any(len(w) >= 5 and len(name) >= 5 and
                                  (name.startswith(w) or w.startswith(name)) for w in written)


def _has(found: list[Value], value: Value) -> bool:
    return any(value.matches(v.number) or value.matches(v.raw) for v in found)


class OfflineJudge:
    """Implements the judge interface (``model``, ``async chat``) without a model."""

    model = MODEL

    def __init__(self, embedder: Embedder | None = None):
        self.embedder = embedder or LocalEmbedder()
        self.calls = 0
        self._vectors: dict[str, np.ndarray] = {}
        # per event loop: texts asked for and not yet embedded; whether a batch is running
        self._waiting: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._draining: weakref.WeakSet = weakref.WeakSet()
        self._tasks: set[asyncio.Task] = set()
        self._lock = threading.Lock()

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors for ``texts``. Each distinct text is embedded once per judge, and the
        texts that concurrent calls of one event loop ask for are embedded together, one batch
        at a time (parallel encoder calls only fight over the same cores)."""
        loop = asyncio.get_running_loop()
        waiting = self._waiting.setdefault(loop, {})
        futures = []
        for text in dict.fromkeys(texts):
            if text not in self._vectors:
                if text not in waiting:
                    waiting[text] = loop.create_future()
                futures.append(waiting[text])
        if futures and loop not in self._draining:
            self._draining.add(loop)
            task = loop.create_task(self._drain(loop, waiting))
            self._tasks.add(task)  # a task nobody references may be collected mid-run
            task.add_done_callback(self._tasks.discard)
        if futures:
            await asyncio.gather(*futures)
        if lost := [t for t in dict.fromkeys(texts) if t not in self._vectors]:
            self._remember(lost, await self.embedder.embed(lost))  # the cache was cleared
        return (np.stack([self._vectors[t] for t in texts]) if texts
                else np.zeros((0, 384), dtype=np.float32))

    async def _drain(self, loop: asyncio.AbstractEventLoop,
                     waiting: dict[str, asyncio.Future]) -> None:
        try:
            await asyncio.sleep(0)  # let the calls started in the same tick add their texts
            while waiting:
                batch = dict(waiting)
                waiting.clear()
                try:
                    vectors = await self.embedder.embed(list(batch))
                except Exception as exc:  # every caller of this batch gets the error
                    for future in batch.values():
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._remember(list(batch), vectors)
                for future in batch.values():
                    if not future.done():
                        future.set_result(None)
        finally:
            self._draining.discard(loop)

    def _remember(self, texts: list[str], vectors: np.ndarray) -> None:
        with self._lock:
            if len(self._vectors) + len(texts) > _CACHE_SIZE:
                self._vectors.clear()
            self._vectors.update(zip(texts, vectors, strict=True))

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

    # -- query + answer -------------------------------------------------------------------

    async def _helpfulness(self, user: str) -> str:
        query, answer = _section(user, "query") or "", _section(user, "answer") or ""
        said = sentences(answer)
        if not said or not content_words(answer):
            return "Analysis: the answer says nothing.\n[[0]]"
        mask = lambda text: re.sub(r"\d", "0", text)  # noqa: E731 - figures are not relevance
        vectors = await self.embed([mask(query), mask(answer), *map(mask, said)])
        whole = float(vectors[1] @ vectors[0])
        per_sentence = vectors[2:] @ vectors[0]
        on_topic = float(np.mean([_ramp(c, 0.1, 0.45) for c in per_sentence]))
        q_words = content_words(query)
        overlap = len(q_words & content_words(answer)) / max(len(q_words), 1)
        # informative: an answer of a few sentences says less than one of a full paragraph
        substance = _clamp(len(content_words(answer)) / 100)
        score = 10 * (0.4 * _ramp(whole, 0.15, 0.6) + 0.3 * on_topic + 0.15 * overlap
                      + 0.15 * substance)
        return (f"Analysis: closeness of the answer to the question {whole:.2f}; "
                f"{on_topic:.0%} on-topic sentences; it uses {overlap:.0%} of the question's key "
                f"words; substance {substance:.2f}.\n[[{score:.1f}]]")

    async def _logicality(self, user: str) -> str:
        said = sentences(_section(user, "answer") or "")
        read = [claims(s) for s in said]
        vectors = await self.embed(said + [c.window for r in read for c in r])
        starts = np.cumsum([len(said)] + [len(r) for r in read])
        windows = [vectors[starts[k]:starts[k + 1]] for k in range(len(said))]
        sentence_vectors = vectors[:len(said)]
        topic = frozenset(content_words(_section(user, "query") or ""))
        found = contradictions(said, read, sentence_vectors @ sentence_vectors.T, windows,
                               sentence_vectors, topic)
        # a faint suspicion costs less than in proportion: alike phrasing is common
        penalty = sum(weight * min(1.0, weight / 0.4) for _, _, weight, _ in found)
        score = max(0.0, 10 - 3 * penalty)
        lines = [f"- Sentence {j + 1} may contradict sentence {i + 1}: {why} "
                 f"(confidence {weight:.2f})." for i, j, weight, why in found]
        return "\n".join(lines or ["No logical errors."]) + f"\n[[{score:.1f}]]"

    # -- faithfulness ---------------------------------------------------------------------

    async def _statements(self, user: str) -> str:
        kept = [s for s in sentences(_section(user, "answer") or "")
                if len(s.split()) >= 4 and not s.endswith((":", "?")) and not _FUNCTIONAL.match(s)
                and _checkable(s)]
        if not kept:
            return "No factual statements."
        return "\n".join(f"<statement>{s}</statement>" for s in kept)

    async def _support(self, user: str) -> str:
        statement = _section(user, "statement") or ""
        evidence = _joined(_section(user, "evidence") or "")
        said = content_words(statement)
        passages = [(s, content_words(s)) for s in sentences(evidence)]
        if not passages or not said:
            return "The evidence does not state this.\n[[No support]]"
        vectors = await self.embed([statement, *(s for s, _ in passages)])
        to_statement = vectors[1:] @ vectors[0]
        closeness = float(np.max(to_statement))
        # evidence about the same thing: sentences sharing its words, or its meaning
        need = min(2, len(said))
        anchors = [s for (s, words), near in zip(passages, to_statement, strict=True)
                   if len(words & said) >= need or near >= ANCHOR or near == closeness]
        # "three things", "two main reasons": the answer's own enumeration, not a fact
        figures = [v for v in values(statement) if v.kind.removeprefix("count:") not in _TALLY]
        # a figure is borne out by a sentence about the same thing, or by one that names
        # what it counts ("60 per cent more hoverflies": "Hoverflies were 60 per cent more")
        tokens = words(statement)
        found = {s: values(s) for s, _ in passages}

        def borne_out(v: Value) -> bool:
            around = _around(tokens, v.start)
            return any(_has(found[s], v) for s in anchors) or \
                any(_has(found[s], v) for s, passage_words in passages if passage_words & around)

        anchored = [v for v in figures if borne_out(v)]
        derived = [v for v in figures if v not in anchored and _derived(v, anchored)]
        missing = [v.text for v in figures if v not in anchored and v not in derived]
        # a name must be written as a name there ("Kessler Lift" is not borne out by "lift")
        anchor_names = set().union(*(names(s) | {w.lower() for w in _CAPITALISED.findall(s)}
                                     for s in anchors)) if anchors else set()
        missing += sorted(n for n in names(statement) if not _named(n, anchor_names))
        in_evidence = set().union(*(words for _, words in passages))
        share = len(said & in_evidence) / len(said)
        near = sorted(anchors, key=lambda s: -len(content_words(s) & said))[:3]
        read = [claims(statement), *(claims(s) for s in near)]
        windows = await self.embed([c.window for r in read for c in r])
        position = {s: k for k, (s, _) in enumerate(passages, start=1)}
        against = _against(read, windows, vectors[0], [vectors[position[s]] for s in near])
        if against and not missing and "figures differ" in against:
            against = None  # its own figures are all there: another figure is another fact
        agrees = share >= 0.5 or closeness >= 0.65
        level = (2 if not missing and agrees else
                 1 if not missing or (len(missing) == 1 and agrees) else 0)
        if against:
            level = max(0, level - 1)
        verdict = ("No support", "Partially supported", "Fully supported")[level]
        why = (f"not found in the evidence about the same thing: {', '.join(missing)}"
               if missing else "its figures and names appear in the evidence")
        if against:
            why += f"; the evidence seems to say otherwise ({against})"
        return (f"{why}; {share:.0%} of its words are in the evidence, closest passage "
                f"{closeness:.2f}.\n[[{verdict}]]")

    # -- completeness ---------------------------------------------------------------------

    async def _extraction(self, user: str) -> str:
        query, chunk = _section(user, "query") or "", _section(user, "chunk") or ""
        paragraphs = [p for p in re.split(r"\n\s*\n", chunk) if p.strip()]
        # a heading (no closing punctuation) is not information
        units = [(k, s) for k, p in enumerate(paragraphs) for s in sentences(p)
                 if len(s.split()) >= 5 and s.rstrip("\"')").endswith((".", "!", "?", ";"))
                 and _checkable(s)]
        if not units:
            return "No relevant information"
        vectors = await self.embed([query, *paragraphs, *(s for _, s in units)])
        to_query = vectors[1:] @ vectors[0]
        by_paragraph, by_sentence = to_query[:len(paragraphs)], to_query[len(paragraphs):]
        # a report is a run of paragraphs: a paragraph is read with its neighbours, so one
        # between two relevant ones belongs to the report ("Second, ...") and a lone one
        # among unrelated ones counts less
        padded = np.concatenate([by_paragraph[:1], by_paragraph, by_paragraph[-1:]])
        smoothed = 0.25 * padded[:-2] + 0.5 * by_paragraph + 0.25 * padded[2:]
        context = np.maximum(smoothed, np.minimum(padded[:-2], padded[2:]))
        # several documents under headings: only those about the question count, judged by
        # their best paragraphs, so a stray paragraph of another report does not
        documents = _documents(paragraphs)
        of_document = {d: np.sort(by_paragraph[documents == d])   # those with something to say
                       for d in {documents[k] for k, _ in units}}
        closeness = {d: float(np.mean(c[-3:])) for d, c in of_document.items()}
        best = max(closeness.values())
        # a section under a heading of its own ("When to get medical help") is wanted too
        # when one of its paragraphs is squarely about the question
        on_point = {d: float(c[-1]) for d, c in of_document.items()}
        wanted = {d for d, c in closeness.items() if c >= max(RELEVANT_DOCUMENT, best - 0.08)
                  or (on_point[d] >= ON_POINT and c >= best - 0.2)}
        if len(closeness) > 1:
            # a document picked out as about the question is read nearly whole, bar the
            # sentences far from it (a sign-off, a stray paragraph): its sections with few
            # words of the question ("Highlights", a list of conditions) are still the
            # information an answer should cover
            def keep(k: int, own: float) -> bool:
                return documents[k] in wanted and 0.5 * own + 0.5 * context[k] >= RELEVANT_IN

        else:
            # one document: a sentence must also be about the question itself, not only sit
            # near sentences that are ("The committee approved the minutes" between figures)
            def keep(k: int, own: float) -> bool:
                return own >= RELEVANT_ALONE and (0.5 * own + 0.5 * context[k] >= RELEVANT
                                                  or context[k] >= RELEVANT_PART)

        relevant = [s for (k, s), own in zip(units, by_sentence, strict=True) if keep(k, own)]
        relevant = list(dict.fromkeys(relevant))  # a sentence repeated is one piece
        if not relevant:
            return "No relevant information"
        return "\n".join(f"{i}. {s}" for i, s in enumerate(relevant, start=1))

    async def _coverage(self, user: str) -> str:
        points = [m.group(1).strip() for m in _POINT.finditer(_section(user, "key_points") or "")
                  if m.group(1).strip()]
        answer = _section(user, "answer") or ""
        said = sentences(answer)
        if not points:  # the document holds nothing relevant: does the answer say so?
            score = 9.0 if _ABSENCE.search(answer) else 3.0
            return f"No part holds relevant information.\n[[{score:.1f}]]"
        if not said:
            return "The answer is empty.\n[[0]]"
        vectors = await self.embed([*points, *said])
        closeness = vectors[:len(points)] @ vectors[len(points):].T
        read = [(values(s), names(s) | content_words(s), content_words(s)) for s in said]
        families = [{v.family for v in a_values} for a_values, _, _ in read]
        marks = []
        for point, row in zip(points, closeness, strict=True):
            figures, named, words = values(point), names(point), content_words(point)
            counted = {v.family for v in figures}
            # the point is covered by the sentence that states most of its facts and is most
            # about it: its figures above all, its names for whose they are, else its words
            best = 0.0
            for (a_values, a_words, a_content), a_families, near in zip(read, families, row,
                                                                        strict=True):
                parts = [(0.7, [_has(a_values, v) for v in figures]),
                         (0.3, [n in a_words for n in named])]
                weight = sum(w for w, found in parts if found)
                # a paraphrase keeps some of the words, rarely all
                worded = _ramp(len(words & a_content) / max(len(words), 1), 0, 0.6)
                stated = (sum(w * sum(found) / len(found) for w, found in parts if found) / weight
                          if weight else worded)
                # one that leaves out an incidental figure ("its 737 fleet") still covers part;
                # one that gives other figures of the same kind is about another fact
                if not a_families & counted:
                    stated = max(stated, PARAPHRASE * worded)
                best = max(best, 0.4 * _ramp(float(near), 0.4, 0.8) + 0.6 * stated)
            marks.append(_ramp(best, 0.2, 0.8))
        score = 10 * sum(marks) / len(marks)
        verdict = lambda m: "covered" if m >= 0.75 else "partly" if m >= 0.4 else "missed"  # noqa: E731
        notes = [f"- key point {i + 1}: {verdict(m)} ({m:.2f})" for i, m in enumerate(marks)]
        return "\n".join(notes) + f"\n[[{score:.1f}]]"


RELEVANT = 0.33       # a sentence's and its paragraph's closeness to the question, averaged
AGAINST = 0.3         # a disagreement this strong with the evidence lowers support a level
RELEVANT_PART = 0.38  # a paragraph this close to the question is relevant as a whole
RELEVANT_ALONE = 0.38  # in a single document, a sentence's own closeness to the question
ANCHOR = 0.6          # an evidence sentence this close to a statement is about the same thing
RELEVANT_DOCUMENT = 0.3  # a document whose best paragraphs are this close is about the question
ON_POINT = 0.55      # a paragraph this close to the question is squarely about it
PARAPHRASE = 0.6     # what a point's words alone, without its figures, cover of it
RELEVANT_IN = 0.15   # inside a document about the question, a sentence this far from it is not


def _checkable(sentence: str) -> bool:
    """Whether a sentence states something the evidence could bear out: a figure, a name, or
    more than a few words of content ("There were bright spots." links, it does not state)."""
    return bool(values(sentence) or names(sentence) or len(content_words(sentence)) > 3)


def _joined(evidence: str) -> str:
    """The evidence passages without their headers, adjacent segments joined back into one
    text (segments tile the context, so a sentence cut between two is whole again)."""
    parts = re.split(r"^\[segment (\d+)\]\n", evidence, flags=re.M)
    out, last = parts[0].strip(), None
    for number, text in zip(parts[1::2], parts[2::2], strict=True):
        index, text = int(number), text.removesuffix("\n\n")  # the separator between two
        out += text if last is not None and index == last + 1 else "\n\n" + text
        last = index
    return out.strip()


def _title_cased(text: str) -> bool:
    content = [w for w in re.findall(r"[A-Za-z][\w'’&-]*", text) if w.lower() not in STOPWORDS]
    return bool(content) and sum(w[0].isupper() for w in content) >= 0.6 * len(content)


def _heading(paragraph: str) -> bool:
    """A title, byline or section heading: a few short lines that do not end a sentence, or a
    title-cased line that does ("Minutes of the Governing Board, 14 September.")."""
    lines = [line for line in paragraph.strip().split("\n") if line.strip()]
    if len(lines) > 4 or (len(lines) > 1 and any(len(line.split()) > 16 for line in lines)):
        return False
    text = " ".join(lines).rstrip().rstrip("\"')")
    if not text.endswith((".", "!", "?", ";", ":")):
        return len(text.split()) <= 40   # a title block run into one line, byline and all
    return text.endswith(".") and len(text.split()) <= 30 and _title_cased(text)


def _documents(paragraphs: list[str]) -> np.ndarray:
    """A document number per paragraph: headings in a row (a title, then its byline) open a
    new document when they name something (five words or more); a shorter heading
    ("Highlights", "Outlook") is a section of the document it sits in."""
    heading = [_heading(p) for p in paragraphs]
    return np.cumsum([h and k > 0 and not heading[k - 1] and len(paragraphs[k].split()) >= 5
                      for k, h in enumerate(heading)])


def _against(read: list[list[Claim]], windows: np.ndarray, statement_vector: np.ndarray,
             near_vectors: list[np.ndarray]) -> str | None:
    """Why one of the nearest evidence sentences (``read[1:]``) contradicts the statement
    (``read[0]``): a figure, trend or negation of the same thing that differs; or None."""
    starts = np.cumsum([0] + [len(r) for r in read])
    parts = [windows[starts[k]:starts[k + 1]] for k in range(len(read))]
    for k, evidence_vector in enumerate(near_vectors, start=1):
        cue = disagreement(read[k], read[0], (parts[k], parts[0]),
                           (evidence_vector, statement_vector),
                           float(evidence_vector @ statement_vector))
        # figures and trends only: a denial is too often a paraphrase ("unused" / "no
        # longer used") to hold against a statement
        if cue and cue[0] >= AGAINST and not cue[1].startswith(("one denies", "an absolute")):
            return cue[1]
    return None


def _around(tokens: list[str], start: int, span: int = 4) -> set[str]:
    """The content words within ``span`` tokens of a figure ('per cent' takes two): what it
    counts."""
    return content_words(" ".join(tokens[max(0, start - span):start + span + 1]))


def _derived(value: Value, anchored: list[Value]) -> bool:
    """A figure that two anchored figures of the statement give: their difference, of the
    same kind as both ("from 61 to 44 million, 17 million fewer"), or the percentage change
    between them ("a cut of 28 per cent"). A year and a duration give nothing."""
    for a in anchored:
        for b in anchored:
            if a is b or not b.number or a.family != b.family:
                continue
            change = abs(a.number - b.number)
            if value.family == a.family and value.matches(change) or \
                    value.family == "percent" and value.matches(round(100 * change / b.number)):
                return True
    return False
