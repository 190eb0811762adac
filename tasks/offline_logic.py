"""The offline judge's logicality evidence: sentences that seem to contradict an earlier one.

Each sentence is read as a few claims, each with the words around it (figures masked): its
figures (with what they count), its trend words ("rose", "fell", "unchanged"), its negations
and its absolute words ("unanimous", "exactly"). A later sentence is suspect when one of its
claims is about the same thing as a claim of an earlier sentence (their surrounding words are
close in embedding space) and disagrees with it:

- figures of one kind (counting the same thing) that differ, within a factor of five, neither
  a bound ("more than 15"): "rose from 81 to 92 per cent" / "ended at 86 per cent"; an agreeing
  figure nearby excuses them only if it is as plainly about the same thing (its own words);
- places: "finished fourth" / "finishing second";
- opposite trends: "rose" / "fell", or "stayed" / "rose"; opposite outcomes: "upheld" /
  "dismissed";
- a negation against the same statement made plainly: "no property flooded" / "64 properties
  flooded", stronger when it denies the other's own words ("no need to stop using it" / "stop
  using it"), none when it denies knowing ("does not show whether");
- an absolute claim against a counted or qualified one: "unanimous" / "five votes to two";
- a sentence opening with a correction ("In fact", "Actually") close to an earlier one.

A suspect pair weighs the closeness of its claims times the strength of its cue; a sentence
counts once (its strongest pair). It reads no meaning: a contradiction by paraphrase goes
unseen, and two different facts phrased alike can be flagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tasks import offline_lexicon as lex
from tasks.offline_assertions import assertions, sentence_conflict
from tasks.offline_assertions import expects as _expects
from tasks.offline_text import (
    EPISTEMIC,
    NEGATIONS,
    STOPWORDS,
    YEAR,
    Value,
    _stem,
    content_words,
    values,
    words,
    wordset,
)

_UP = wordset(
    "rose rise risen rising increase increased increases grew grow growing higher above "
    "climbed climb gain gained improved boost boosted largest biggest highest surged "
    "jumped doubled exceeded expanded")
_DOWN = wordset(
    "fell fall fallen falling drop dropped declined decline decrease decreased cut cuts "
    "lower fewer below reduced reduce reduction shrank shrunk slipped smallest lowest "
    "weaker")
_STABLE = wordset(
    "unchanged stable steady flat stay stays stayed remain remains remained")
# outcomes of a decision: a claim upheld and the same claim dismissed cannot both hold
_GRANTED = wordset(
    "upheld uphold upholds accepted accept accepts approved approve approves granted grant "
    "grants succeeded succeeds awarded allowed")
_REFUSED = wordset(
    "dismissed dismiss dismisses rejected reject rejects refused refuse refuses denied deny "
    "denies overturned withdrawn")
_ABSOLUTE = wordset(
    "unanimous unanimously every entirely exactly consistently always fully completely "
    "wholly invariably all")
_QUALIFIED = wordset(
    "only partly partially some less short majority minority although though except "
    "against votes")
_LOWER = wordset("over above least exceeding")  # "more than 15", "at least 15"
_UPPER = wordset("under below within most")      # "less than 15", "up to 15", "at most"
_OR_MORE = {("or", "more"), ("or", "over"), ("or", "above"), ("and", "over"), ("and", "above"),
            ("or", "higher"), ("plus",)}
_OR_LESS = {("or", "less"), ("or", "fewer"), ("or", "under"), ("or", "below"), ("and", "under"),
            ("or", "lower")}
# a number after these names a thing ("route 5", "platform 2"), it does not count one
_LABELS = wordset(
    "route line platform level grade gate bay junction exit flight ward phase stage section "
    "article clause chapter page table figure room block unit zone channel lane pier berth "
    "terminal no number model version series class category type tier band step")
_ORDINAL_PLACE = {w: k for k, w in enumerate(lex.ORDINAL_ORDER, 1)}
_CORRECTION = re.compile(r"^(in fact|actually|in reality|on the contrary|contrary to)\b", re.I)
# how far each cue is to be trusted; figures and denials are halved because, on the evaluation
# set's clean answers, most of their alarms were false (two figures of one report often differ
# for good reasons, and a good answer often says what something is not)
_STRENGTH = {"figure": 0.5, "month": 0.5, "trend": 0.4, "outcome": 0.4, "negation": 0.35,
             "absolute": 0.5, "correction": 0.4}
_SKIPPED_KINDS = ("day", "year")  # dates of different events differ: not a contradiction


@dataclass(frozen=True)
class Claim:
    kind: str            # figure | trend | outcome | negation | absolute
    detail: str          # the figure's kind, the trend's direction or the outcome
    value: Value | None
    window: str          # the words around it, figures masked
    bound: str = ""      # a figure's "lower" ("more than 15") or "upper" ("within 40") bound
    frame: frozenset[str] = frozenset()  # the years named around it
    denied: frozenset[str] = frozenset()  # a negation's: the content words it denies
    slot: frozenset[str] = frozenset()  # a figure's: the words between it and its neighbours


def _time_frame(tokens: list[str]) -> frozenset[str]:
    """The years some words name: figures of different times ("61 million in 2019" / "below
    38 million by 2028") do not contradict."""
    return frozenset(t for t in tokens if YEAR.fullmatch(t))


def _bound(tokens: list[str], start: int, span: int = 1) -> str:
    before = tokens[max(0, start - 2): start]
    after = tuple(tokens[start + span:start + span + 2])
    if after in _OR_MORE:     # "three or more inhalers"
        return "lower"
    if after in _OR_LESS:
        return "upper"
    if before[-1:] and (before[-1] in _LOWER or before == ["more", "than"]):
        return "lower"
    if before[-1:] and (before[-1] in _UPPER or before in (["less", "than"], ["fewer", "than"],
                                                           ["up", "to"])):
        return "upper"
    return ""


def _consistent(a: Claim, b: Claim) -> bool:
    """Whether two figures of one kind can both hold, a bound being a range."""
    x, y = a.value.number, b.value.number
    if not a.bound and not b.bound:
        return a.value.matches(y) or b.value.matches(x)
    if a.bound and b.bound:
        return a.bound == b.bound or (x <= y if a.bound == "lower" else y <= x)
    bounded, plain = (a, b) if a.bound else (b, a)
    limit, other = bounded.value.number, plain.value.number
    return other >= limit if bounded.bound == "lower" else other <= limit


def claims(sentence: str) -> list[Claim]:
    """The checkable claims of one sentence."""
    tokens = words(sentence)

    def around(k: int, before: int = 9, after: int = 6) -> str:
        return re.sub(r"\d", "0", " ".join(tokens[max(0, k - before): k + after]))

    found = []
    figures = values(sentence)
    starts = [0] + [v.start for v in figures] + [len(tokens)]
    for n, v in enumerate(figures, start=1):
        if v.kind not in _SKIPPED_KINDS and not (v.start and tokens[v.start - 1] in _LABELS):
            frame = _time_frame(tokens[max(0, v.start - 9): v.start + 6])
            # whose figure it is: the words up to the figures either side of it
            slot = tokens[max(starts[n - 1] + 1, v.start - 8): min(starts[n + 1], v.start + 8)]
            found.append(Claim("figure", v.kind, v, around(v.start),
                               _bound(tokens, v.start, len(v.text.split())),
                               frame, slot=frozenset(content_words(" ".join(slot)))))
    for k in range(len(tokens) - 2):
        if tuple(tokens[k:k + 2]) in lex.ONE and tokens[k + 2][0].isalpha():
            counted = f"count:{_stem(tokens[k + 2])}"
            one = Value(1.0, counted, k + 1, 1.0, " ".join(tokens[k:k + 2]))
            found.append(Claim("figure", counted, one, around(k + 1),
                               frame=_time_frame(tokens[max(0, k - 8): k + 7])))
    for k, token in enumerate(tokens):
        # a place in an order ("finished fourth", "finishing second, ..."); not one naming
        # which thing ("the fourth round"), nor a list's "First, ..."
        noun = tokens[k + 1] if k + 1 < len(tokens) else ""
        if token in lex.ORDINALS and k and (not noun or noun in STOPWORDS):
            place = float(_ORDINAL_PLACE[token])
            found.append(Claim("figure", "rank", Value(place, "rank", k, place, token),
                               around(k)))
    for k, token in enumerate(tokens):
        following = tokens[k + 1] if k + 1 < len(tokens) else ""
        direction = ("up" if token in _UP or (token == "up" and following in ("from", "by"))
                     else "down" if token in _DOWN or (token == "down" and following in
                                                        ("from", "by", "to"))
                     else "stable" if token in _STABLE else None)
        if direction:
            found.append(Claim("trend", direction, None, around(k),
                               frame=_time_frame(tokens)))
        elif token in _GRANTED or token in _REFUSED:
            found.append(Claim("outcome", "granted" if token in _GRANTED else "refused", None,
                               around(k)))
        elif token == "failed" and following != "to":  # "the claim failed": an outcome
            found.append(Claim("outcome", "refused", None, around(k)))
        elif (token in NEGATIONS and token != "without") or token.endswith("n't"):
            # what it denies follows it, unless it denies knowing ("does not show whether")
            after = [t for t in tokens[k + 1:k + 6] if t not in STOPWORDS]
            denied = (frozenset() if after[:1] and after[0] in EPISTEMIC
                      else frozenset(content_words(" ".join(after))) - EPISTEMIC)
            found.append(Claim("negation", "", None, around(k, 3, 10), denied=denied))
        elif token in _ABSOLUTE:
            found.append(Claim("absolute", "", None, around(k)))
    return found


def _alike(kind: str, other: str) -> bool:
    """Figures of one kind: a count of something and a bare count may be one figure, counts
    of different things ("20 mg" / "9 mmHg") are not."""
    base = kind.split(":")[0]
    return kind == other or (base == other.split(":")[0] and base in (kind, other))


def _frames_agree(a: Claim, b: Claim) -> bool:
    """Figures of named, different years are different facts; a figure without a year may be
    about any of them."""
    return a.frame == b.frame or not a.frame or not b.frame or a.detail == "month"


def _disagree(a: Claim, b: Claim, mine: list[Claim], theirs: list[Claim]) -> str | None:
    """Why claim ``b`` disagrees with claim ``a`` (None when it does not)."""
    if a.kind == b.kind == "figure" and _alike(a.detail, b.detail) and a.value and b.value \
            and _frames_agree(a, b):
        same = [c for c in mine if c.kind == "figure" and _alike(c.detail, a.detail)]
        other = [c for c in theirs if c.kind == "figure" and _alike(c.detail, b.detail)]
        # agreeing figures excuse a disagreeing pair unless that pair is more plainly about
        # one thing: "5 mmHg with dorzepril" is not the "5.1 mmHg with placebo" beside it
        bound = len(a.slot & b.slot)
        if any(_consistent(x, y) and len(x.slot & y.slot) >= bound
               for x in same for y in other):
            return None
        low, high = sorted((abs(a.value.number), abs(b.value.number)))
        if a.detail == "month" or (low and high / low <= 5):
            return f"{a.detail.split(':')[0]} figures differ ({a.value.text} / {b.value.text})"
    if a.kind == b.kind and a.kind in ("trend", "outcome") and a.detail != b.detail and \
            _expects(a.window) == _expects(b.window) and _frames_agree(a, b):
        return f"one says {a.detail}, the other {b.detail}"
    return None


def _excused(x: int, y: int, first: list[Claim], second: list[Claim],
             closeness: np.ndarray) -> bool:
    """Opposite directions are no contradiction when the two sentences also agree, about
    something as close, in that same direction ("rose, helped by reduced prices" / "rose")."""
    kind, near = first[x].kind, float(closeness[x, y]) - 0.05
    if kind not in ("trend", "outcome"):
        return False
    return any(first[i].kind == second[j].kind == kind
               and first[i].detail == second[j].detail and closeness[i, j] >= near
               for i in range(len(first)) for j in range(len(second)))


def _cue(first: list[Claim], second: list[Claim], closeness: np.ndarray, plain: tuple[bool, bool],
         whole: np.ndarray, lexicon: tuple[set[str], set[str]] | None = None,
         ) -> tuple[float, str] | None:
    """The strongest (weight, reason) that the second sentence disagrees with the first.
    ``closeness[x, y]``: claim windows; ``whole[x]``: a claim window of one sentence against the
    whole other sentence (first's claims, then second's); ``plain``: (first, second) negated;
    ``lexicon``: the two sentences' content words, when known."""
    best: tuple[float, str] | None = None

    def offer(weight: float, why: str) -> None:
        nonlocal best
        if weight > 0 and (best is None or weight > best[0]):
            best = (weight, why)

    for x, a in enumerate(first):
        for y, b in enumerate(second):
            if (why := _disagree(a, b, first, second)) and \
                    not _excused(x, y, first, second, closeness):
                kind = "month" if a.detail == "month" else a.kind
                # figures plainly about one thing share the words bound to them
                bound = 1.0 if kind != "figure" or a.slot & b.slot else UNBOUND
                offer(_STRENGTH[kind] * bound * _ramp(float(closeness[x, y]), *CLAIMS_ALIKE),
                      why)
    for claims_of, other_negated, offset in ((first, plain[1], 0), (second, plain[0], len(first))):
        for k, claim in enumerate(claims_of):
            near = float(whole[offset + k])
            if claim.kind == "negation" and not other_negated:
                offer(_denial(claim, near, None if lexicon is None else
                              lexicon[1 if claims_of is first else 0]),
                      "one denies what the other states")
            other = second if claims_of is first else first
            if claim.kind == "absolute" and any(c.kind == "figure" and c.detail.startswith("count")
                                                for c in other):
                offer(_STRENGTH["absolute"] * _ramp(near, 0.35, 0.6),
                      "an absolute claim against a counted one")
    return best


def _denial(claim: Claim, near: float, other: set[str] | None) -> float:
    """How strongly a negation denies what the other sentence states: its window's closeness
    to that sentence, and (when known) whether the words it denies are the other's words, the
    same predicate ("no need to stop using it" / "stop using it"). Closeness alone is weak
    evidence: a sentence that says what something is not is common in a good answer."""
    if other is None:
        return _STRENGTH["negation"] * _ramp(near, 0.4, 0.7)
    shared = min(1.0, len(claim.denied & other) / 2)
    return _STRENGTH["negation"] * max(_ramp(near, 0.4, 0.7) * (0.5 + 0.5 * shared),
                                       0.6 * (shared == 1.0))


def _ramp(x: float, low: float, high: float) -> float:
    return max(0.0, min(1.0, (x - low) / (high - low)))


UNBOUND = 0.4
SAME_TOPIC = (0.3, 0.55)  # sentence closeness from which a pair can be about one fact
CLAIMS_ALIKE = (0.45, 0.75)  # closeness of two claims' words from which they may be one fact


def disagreement(first: list[Claim], second: list[Claim], windows: tuple[np.ndarray, np.ndarray],
                 sentence_vectors: tuple[np.ndarray, np.ndarray], similarity: float,
                 opens_with_correction: bool = False, texts: tuple[str, str] | None = None,
                 ) -> tuple[float, str] | None:
    """(weight, reason) that a sentence with claims ``second`` disagrees with one with claims
    ``first``; ``windows``: their claims' window vectors; ``sentence_vectors``: the two
    sentences' vectors; ``similarity``: their cosine; ``texts``: the two sentences."""
    negated = (any(c.kind == "negation" for c in first), any(c.kind == "negation" for c in second))
    whole = np.concatenate([windows[0] @ sentence_vectors[1], windows[1] @ sentence_vectors[0]])
    lexicon = None if texts is None else (content_words(texts[0]), content_words(texts[1]))
    cue = _cue(first, second, windows[0] @ windows[1].T, negated, whole, lexicon)
    if cue:  # claims alike in sentences about different things are rarely one fact
        if lexicon and min(map(len, lexicon)):  # sharing words is being about one thing too
            shared = len(lexicon[0] & lexicon[1]) / min(map(len, lexicon))
            similarity = max(similarity, shared)
        cue = (cue[0] * _ramp(similarity, *SAME_TOPIC), cue[1])
    if opens_with_correction:
        correction = _STRENGTH["correction"] * _ramp(similarity, 0.35, 0.6)
        if cue is None or correction > cue[0]:
            cue = (correction, "it corrects the earlier sentence")
    return cue if cue and cue[0] > 0 else None


def contradictions(said: list[str], read: list[list[Claim]], similarity: np.ndarray,
                   windows: list[np.ndarray], sentence_vectors: np.ndarray,
                   topic: frozenset[str] = frozenset(),
                   ) -> list[tuple[int, int, float, str]]:
    """(earlier, later, weight, reason) for each sentence that seems to contradict an earlier
    one, its strongest pair only. ``read[i]``: claims of sentence i; ``windows[i]``: their
    window vectors; ``similarity``: the sentences' cosine matrix."""
    found = []
    asserted = [assertions(s, topic) for s in said]
    for j in range(1, len(said)):
        best: tuple[float, int, str] | None = None
        for i in range(j):
            if said[i] == said[j]:
                continue
            cue = disagreement(read[i], read[j], (windows[i], windows[j]),
                               (sentence_vectors[i], sentence_vectors[j]),
                               float(similarity[i, j]), bool(_CORRECTION.match(said[j])),
                               (said[i], said[j]))
            plain = sentence_conflict(asserted[i], asserted[j], (said[i], said[j]))
            if plain and (cue is None or plain[0] > cue[0]):
                cue = plain
            if cue and (best is None or cue[0] > best[0]):
                best = (cue[0], i, cue[1])
        if best:
            found.append((best[1], j, round(best[0], 2), best[2]))
    return found
