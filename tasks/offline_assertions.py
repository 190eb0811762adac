"""Subject-bound assertions: what a clause says about what, for the offline judge's logicality.

A sentence is cut into clauses (at commas, semicolons and joining words) and each clause is read
for five kinds of assertion, each bound to its subject, the content words that name what it
is about (the words just before the verb, else just after):

- a direction: "container traffic dropped" (down), "the rate would stay at $11.40" (stable),
  "the harvest was larger than the five-year average" (up, compared with that average);
- a state, one side of a pair that exclude each other (:data:`tasks.offline_lexicon.POLAR`):
  leaving / continuing, upheld / dismissed, in force / overturned, the first ever / a return;
- a place: "finished fourth";
- a scope: "every customer", "all 24 schools", "the only site", "no property", against a part
  of the same things elsewhere: "28,000 of the 41,600 customers", "three of the 14 sites";
- a denial: "card numbers were not in the files", against a clause stating the same subject
  plainly: "obtained the card numbers".

Two assertions conflict when they are of one kind, about one subject (shared content words), in
one mode (what happened / what is expected: "prices fell" and "prices are expected to rise" do
not conflict), of no different years, and say opposite things. It reads words, not meaning: a
contradiction by paraphrase ("nothing was placed in the grave" / "buried with a pot") goes
unseen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tasks import offline_lexicon as lex
from tasks.offline_text import (
    EPISTEMIC,
    MONTHS,
    NEGATIONS,
    NUMBER_WORDS,
    STOPWORDS,
    YEAR,
    _stem,
    is_negated,
    names,
    values,
    words,
)

_PUNCTUATION = r"(?:,(?!\d{3}))|[;:()\u2013\u2014]"   # not the comma of "41,600"
_BREAK = re.compile(_PUNCTUATION + r"|\s(?:but|while|whereas|although|though|yet|so|and|because|"
                    r"which|who|where|after|before|until|when|since|as)\s", re.I)
# a denial's parts: cut at punctuation and contrasts, not at "and" ("X and Y were not ...")
_CONTRAST = re.compile(_PUNCTUATION + r"|\s(?:but|while|whereas|although|though|where)\s")


@dataclass(frozen=True)
class Assertion:
    kind: str                 # direction | state | place | scope | denial
    value: str                # up / down / stable; group:+ / group:-; an ordinal;
                              # all / one / none / part; denied
    subject: frozenset[str]   # stems naming what it is about
    target: frozenset[str] = frozenset()   # a comparison's: what it is compared with; a
                                           # state's: the figures of its clause
    frame: frozenset[str] = frozenset()    # the years and months named in its clause
    expected: bool = False    # said of what is expected, planned or possible
    count: float | None = None  # a scope's: how many ("the only" 1, "all 24" 24)
    text: str = ""            # the clause
    named: frozenset[str] = frozenset()  # names narrowing its sentence to a part, not asked of


def _content(tokens: list[str]) -> list[str]:
    return [_stem(t.removesuffix("'s")) for t in tokens
            if t[0].isalpha() and t not in STOPWORDS and t not in lex.VAGUE and len(t) > 1
            and t not in NEGATIONS and t not in NUMBER_WORDS and not t.endswith("n't")
            and not (t.endswith("ly") and len(t) > 5)]


def _negations(tokens: list[str]) -> list[int]:
    """Where the tokens deny something ("not", "no", "n't"; not "without" or "failed", which
    report an event)."""
    return [k for k, t in enumerate(tokens)
            if (t in NEGATIONS and t not in lex.NOT_DENIALS) or t.endswith("n't")]


def _subject(tokens: list[str], k: int, span: int = 1) -> frozenset[str]:
    """What the word at ``k`` is said of: up to four content words before it, else after."""
    before = _content(tokens[:k])[-4:]
    return frozenset(before or _content(tokens[k + span:k + span + 6])[:4])


def clauses(sentence: str) -> list[str]:
    return [c.strip() for c in _BREAK.split(f" {sentence} ") if c and c.strip()]


def _count_before(tokens: list[str], k: int) -> float | None:
    for v in values(" ".join(tokens[max(0, k - 2):k])):
        return v.number
    return None


def assertions(sentence: str, topic: frozenset[str] = frozenset()) -> list[Assertion]:
    """The subject-bound assertions of one sentence; ``topic``: the question's content words
    (a name the question asks about names the whole answer's subject, not a part of it)."""
    found: list[Assertion] = []
    sentence_tokens = words(sentence)
    named = _narrowing_names(sentence_tokens, sentence) - topic
    frame = frozenset(t for t in sentence_tokens if YEAR.fullmatch(t) or t in MONTHS)
    expected = False  # an expectation carries into the clauses after it
    for clause in clauses(sentence):
        tokens = words(clause)
        if not tokens:
            continue
        expected = expected or _expected(tokens)
        common = dict(frame=frame, expected=expected, text=clause, named=named)
        negated = _negations(tokens)
        figures: frozenset[str] | None = None   # read once, when a state needs them
        for k, token in enumerate(tokens):
            following = tokens[k + 1] if k + 1 < len(tokens) else ""
            state = _state(tokens, k)
            if state:
                group, sign, span = state
                if negated and negated[0] < k:
                    sign = "-" if sign == "+" else "+"   # "did not continue": left
                subject = _subject(tokens, k, span)
                if group in lex.BOTH_SIDES:
                    subject |= frozenset(_content(tokens[k + span:k + span + 6])[:4])
                if figures is None:
                    figures = frozenset(f"{v.number:g} {v.kind}" for v in values(clause)
                                        if v.kind not in ("year", "month", "day"))
                found.append(Assertion("state", f"{group}:{sign}", subject, figures,
                                       **common))
            if token in lex.PLACED and following in lex.ORDINALS:  # "finished fourth"
                found.append(Assertion("place", following, _subject(tokens, k, 2), **common))
            compared = _comparison(tokens, k)
            if compared:
                direction, target = compared
                found.append(Assertion("direction", direction, _subject(tokens, k), target,
                                       **common))
            elif token in ("grew", "grow", "grows", "growing") and following == "up":
                continue  # "she grew up locally"
            elif token in lex.UP or token in lex.DOWN or token in lex.STABLE or \
                    (token in ("up", "down") and (following in ("from", "by", "to")
                                                   or k and tokens[k - 1] in lex.MOVED)):
                value = ("up" if token in lex.UP or token == "up" else
                         "down" if token in lex.DOWN or token == "down" else "stable")
                if negated and value != "stable":
                    continue  # "did not rise": not a direction of its own
                if token.endswith("ed") and following[:1].isalpha() and \
                        following not in STOPWORDS and following not in lex.AFTER_TREND and \
                        not following.endswith("ly"):
                    continue  # "the declined claims": which claims, not a change
                found.append(Assertion("direction", value, _subject(tokens, k), **common))
            elif token in lex.CHANGE and negated and negated[0] < k:   # "would not change"
                found.append(Assertion("direction", "stable", _subject(tokens, k), **common))
            elif token in ("more", "fewer") and following[:1].isalpha() and \
                    following not in STOPWORDS and "than" not in tokens[k + 1:k + 4]:
                # "more lorries on the roads": up, of the lorries
                found.append(Assertion("direction", "up" if token == "more" else "down",
                                       frozenset(_content(tokens[k + 1:k + 3])), **common))
        found += _scopes(tokens, sentence_tokens, common)
    found += _denials(sentence, frame)
    return found


def _state(tokens: list[str], k: int) -> tuple[str, str, int] | None:
    """(group, sign, words) of a state word or phrase starting at ``k``."""
    for span in (3, 2, 1):
        hit = lex.POLAR_WORDS.get(tuple(tokens[k:k + span]))
        if hit and not (tokens[k].startswith("stop") and tokens[k + 1:k + 2]
                        and tokens[k + 1] in lex.STOP_AT):
            return (*hit, span)
    return None


def _comparison(tokens: list[str], k: int) -> tuple[str, frozenset[str]] | None:
    """("up" | "down", what it is compared with) of a comparison at ``k``: "more sediment than
    the model predicted", "above the legal limit"; not a bound on a figure ("more than 15")."""
    token = tokens[k]
    if token in lex.MORE or token in lex.LESS:
        than = next((j for j in range(k + 1, min(k + 4, len(tokens))) if tokens[j] == "than"),
                    None)
        if than is None:
            return None
        start, direction = than + 1, "up" if token in lex.MORE else "down"
    elif token in lex.ABOVE or token in lex.BELOW:
        start, direction = k + 1, "up" if token in lex.ABOVE else "down"
    else:
        return None
    if values(" ".join(tokens[start:start + 2])):   # "within two hours": a bound on a figure
        return None
    target = frozenset(_content(tokens[start:start + 6])[:3])
    return (direction, target) if target else None


def expects(text: str) -> bool:
    """Whether a text speaks of what is expected, planned or possible."""
    return _expected(words(text))


def _narrowing_names(tokens: list[str], sentence: str) -> frozenset[str]:
    """Names after a preposition ("applications from Nigeria", "lapwing on Eastfield"): they
    narrow what a clause is about to a part; a name before its noun ("Wealdon District
    Council's refusal") only says whose."""
    known = {n.removesuffix("'s") for n in names(sentence)}
    found = set()
    for k, token in enumerate(tokens[:-1]):
        if token in lex.NARROWING:
            following = tokens[k + 2] if tokens[k + 1] == "the" and k + 2 < len(tokens) \
                else tokens[k + 1]
            if following.removesuffix("'s") in known:
                found.add(_stem(following.removesuffix("'s")))
    return frozenset(found)


def _expected(tokens: list[str]) -> bool:
    return any(t in lex.EXPECTED or (t in lex.INTENDS and tokens[k + 1:k + 2] == ["to"])
               for k, t in enumerate(tokens))


def _denials(sentence: str, frame: frozenset[str]) -> list[Assertion]:
    """A denial is about its whole coordinated phrase ("card numbers and banking passwords
    were not in the files"), so it is read in parts cut at punctuation and contrasts only;
    what it is about is the words before the negation when there are two or more ("card
    numbers ... passwords"), else the words after it ("there was no procedure for ...")."""
    found = []
    for part in _CONTRAST.split(sentence):
        tokens = words(part)
        negated = _negations(tokens)
        if not negated or any(t in EPISTEMIC for t in tokens[negated[0]:negated[0] + 4]):
            continue
        before = frozenset(_content(tokens[:negated[0]]))
        subject = before if len(before) >= 2 else frozenset(_content(tokens))
        if subject:
            found.append(Assertion("denial", "denied", subject, frame=frame,
                                   expected=_expected(tokens), text=part.strip()))
    return found


def _scopes(tokens: list[str], sentence_tokens: list[str], common: dict) -> list[Assertion]:
    found = []
    for k, token in enumerate(tokens):
        pair = tuple(tokens[k:k + 2])
        noun_at = None
        if pair in lex.ONE:
            noun_at, value, count = k + 2, "one", 1.0
        elif token in lex.UNIVERSAL and token != "each":
            count = None
            noun_at = k + 1
            counted = values(tokens[noun_at]) if noun_at < len(tokens) else []
            if counted:  # "all 24 schools"
                count = counted[0].number
                noun_at += 1
            value = "all"
        elif token in ("no", "none", "nothing", "nobody") and k + 1 < len(tokens):
            noun_at, value, count = (k + 1 if token == "no" else k + 3), "none", 0.0
        elif token in lex.PART or (token == "of" and (k == 0 or values(tokens[k - 1]))):
            noun_at, value = k + 1, "part"
            count = _count_before(tokens, k) if token == "of" else None
        if noun_at is None or noun_at >= len(tokens):
            continue
        # the things counted: the content words of the noun phrase that follows
        noun = frozenset(_content(tokens[noun_at:noun_at + 4]))
        if not noun:
            continue
        rest = frozenset(_content(sentence_tokens)) - noun   # what is said of them
        found.append(Assertion("scope", value, noun, rest, count=count, **common))
    return found


def _same_subject(a: Assertion, b: Assertion) -> float:
    """How plainly two assertions are about one thing: the share of the smaller subject that
    the other names."""
    if not a.subject or not b.subject:
        return 0.0
    return len(a.subject & b.subject) / min(len(a.subject), len(b.subject))


def _narrowed(a: Assertion, b: Assertion) -> bool:
    """Whether one subject is narrowed to a named part the other does not name: "applications
    from Nigeria dropped" is not "applications rose"."""
    return bool((a.subject & a.named) - b.subject or (b.subject & b.named) - a.subject)


def conflict(a: Assertion, b: Assertion) -> tuple[float, str] | None:
    """(strength, reason) when assertions ``a`` and ``b`` cannot both hold; None otherwise."""
    if a.kind in ("direction", "state", "scope") and _narrowed(a, b):
        return None
    timeless = a.kind == b.kind == "state" and a.value.split(":")[0] in lex.TIMELESS
    if (a.expected != b.expected or (a.frame and b.frame and not a.frame & b.frame)) and \
            not timeless:
        return None
    if a.kind == b.kind == "direction" and a.value != b.value:
        same = _same_subject(a, b)
        if a.target or b.target:   # a comparison: with the same thing, or it is no conflict
            if not (a.target and b.target and a.target & b.target):
                return None
            same = max(same, 0.5)
        if same >= 0.5:
            return 0.9 * same, f"one says {a.value}, the other {b.value}, of the same thing"
    if a.kind == b.kind == "place" and a.value != b.value:
        # one answer's places are mostly of one subject: another's place names it
        return 0.6 + 0.3 * min(1.0, _same_subject(a, b)), \
            f"placed {a.value} and {b.value}"
    if a.kind == b.kind == "state" and a.value != b.value and \
            a.value.split(":")[0] == b.value.split(":")[0]:
        # of one subject, or of one figure ("41 per cent in favour" / "41 per cent opposed")
        same = max(_same_subject(a, b), 0.8 * bool(a.target & b.target))
        if same >= 0.5:
            return 0.9 * same, f"opposite states of the same thing ({a.text!r} / {b.text!r})"
    if a.kind == b.kind == "scope" and a.subject & b.subject and a.value != b.value:
        values_ = {a.value, b.value}
        shared = len(a.target & b.target)
        if "part" in values_ and values_ & {"all", "one"} and shared >= 1:
            whole = a if a.value != "part" else b
            part = b if whole is a else a
            if whole.value == "one" and part.count in (None, 1.0):
                return None
            things = " ".join(sorted(a.subject & b.subject))
            return min(1.0, 0.5 + 0.25 * shared), \
                f"{whole.value} of them against a part of them ({things})"
        if values_ == {"one", "all"} and shared >= 2:
            return 0.6, "the only one against all of them"
    return None


def denial_against(denial: Assertion, sentence: str) -> tuple[float, str] | None:
    """A denial against a clause of ``sentence`` that states its subject plainly (no
    negation): strong when the clause names most of what the denial is about."""
    best, expected = 0.0, False
    for clause in clauses(sentence):
        tokens = words(clause)
        expected = expected or _expected(tokens)
        if is_negated(clause) or expected != denial.expected:
            continue
        shared = denial.subject & set(_content(tokens))
        if len(shared) >= 2 and len(shared) / len(denial.subject) >= 0.5:
            # halved, as the other reader's denials are: most alarms were false
            best = max(best, 0.25 + 0.2 * len(shared) / len(denial.subject))
    return (best, "one denies what the other states") if best else None


def sentence_conflict(first: list[Assertion], second: list[Assertion],
                      texts: tuple[str, str]) -> tuple[float, str] | None:
    """The strongest conflict between two sentences' assertions (``texts``: the sentences):
    a pair of assertions, or a denial of one against what the other states."""
    cues = [conflict(a, b) for a in first for b in second]
    cues += [denial_against(d, texts[1]) for d in first if d.kind == "denial"]
    cues += [denial_against(d, texts[0]) for d in second if d.kind == "denial"]
    return max((c for c in cues if c), key=lambda c: c[0], default=None)
