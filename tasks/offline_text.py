"""What the offline judge reads in a text: sentences, content words, values and names.

Plain string work, no model: sentence splitting that survives "Dr." and "p.m."; content words
(lowercased, stopwords out, a crude stem); and the checkable facts of a sentence: its numbers
(digits or words, with "million" and friends applied, tagged with what they count: per cent,
money, a year, a duration, or the noun that follows), its month names, and its capitalised
names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def _wordlist(text: str) -> list[str]:
    return text.split()  # a word list reads best as prose


def wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = wordset(
    "a an the and or but of to in on at by for with from as is are was were be been being it "
    "its this that these those there their they them he she his her we our you your i what "
    "which who whom how why when where does did do done has have had not no yes so than then "
    "also about into over under up down out any all some each most more many much very can "
    "could would should may might will just only own same such too report document says say "
    "according give gives given while after before since until during per cent percent "
    "million billion thousand hundred around roughly almost nearly approximately one its "
    "because through against between both if once other further here us who's whose")
_TOKEN = re.compile(r"[£$€%]|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:s\b)?|"
                    r"[A-Za-z][A-Za-z'’-]*")
_ABBREVIATION = re.compile(r"(?:\b(?:Dr|Mr|Mrs|Ms|St|No|Prof|Ltd|Inc|Co|vs|etc|approx|p\.m|"
                           r"a\.m|e\.g|i\.e)|\b[A-Z])\.$")
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(£$€]?[A-Z0-9])")
_UNITS = {"%": "percent", "per cent": "percent", "percent": "percent",
          "percentage points": "percent", "points": "percent"}
_DURATION = {"minute": 1, "hour": 60, "day": 1440, "week": 10080, "month": 43800,
             "year": 525600}
_SCALE = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "m": 1e6, "bn": 1e9}
_CURRENCY = {"£", "$", "€", "sek", "usd", "eur", "gbp", "nok", "dkk"}
_SMALL_MONEY = {"p", "pence", "cents"}
_SMALL = _wordlist(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen")
_TENS = _wordlist(
    "twenty thirty forty fifty sixty seventy eighty ninety")
NUMBER_WORDS = {w: i for i, w in enumerate(_SMALL)} | {w: 20 + 10 * i for i, w in
                                                        enumerate(_TENS)}
NUMBER_WORDS.pop("one")  # "one of", "no one": rarely a figure
MONTHS = _wordlist(
    "january february march april may june july august september october november "
    "december")
NEGATIONS = wordset(
    "not no never none nothing nobody neither nor without cannot n't unable failed")
# what follows a negation of these is not denied: "nobody knows why the ditch was recut"
EPISTEMIC = wordset(
    "know knows knew known show shows showed shown say says said mention mentions mentioned "
    "clear sure certain explain explains explained tell tells told whether yet")


def _stem(word: str) -> str:
    """A crude suffix strip so 'changes', 'changed' and 'change' meet."""
    if len(word) > 5 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "e", "s", "ly"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def words(text: str) -> list[str]:
    """Lowercased word and number tokens, in order."""
    return [t.lower().replace("’", "'") for t in _TOKEN.findall(text)]


def content_words(text: str) -> set[str]:
    """Stems of the words that carry content (no stopwords, no figures)."""
    return {_stem(w) for w in words(text)
            if w[0].isalpha() and w not in STOPWORDS and len(w) > 1
            and not all(part in NUMBER_WORDS for part in w.split("-"))}


def sentences(text: str) -> list[str]:
    """Sentences; a paragraph or line break always ends one, an abbreviation never does."""
    out: list[str] = []
    for block in re.split(r"\n+", text):
        block = " ".join(block.split())
        pending = ""
        for piece in _BOUNDARY.split(block):
            pending = f"{pending} {piece}".strip() if pending else piece
            if not _ABBREVIATION.search(pending):
                out.append(pending)
                pending = ""
        if pending:
            out.append(pending)
    return [s for s in out if s]


@dataclass(frozen=True)
class Value:
    """A figure as written: its number and what it counts (``kind``)."""

    number: float   # scaled: "1.3 million" is 1300000.0, "two hours" 120.0 (minutes)
    kind: str       # percent | money | year | day | duration | month | count:<noun> | count
    start: int      # token index where it was found
    raw: float      # the number as written, unscaled
    text: str       # the tokens it was read from

    @property
    def family(self) -> str:
        """Its kind without what it counts: "count" for "count:bus"."""
        return self.kind.split(":")[0]

    def matches(self, other: float) -> bool:
        """Equal, or ``self`` is ``other`` rounded ("about 9 million" for 9.2 million)."""
        if other == self.number:
            return True
        if self.number == 0 or other == 0:
            return False
        digits = len(f"{abs(self.number):.10g}".replace(".", "").strip("0"))
        return float(f"{other:.{max(digits, 1)}g}") == self.number


def _number(tokens: list[str], i: int) -> tuple[float, int] | None:
    """The number starting at token i and how many tokens it spans."""
    token = tokens[i]
    if token[0].isdigit():
        if token.endswith("s") and token[:-1].isdigit():   # "1950s"
            return float(token[:-1]), 1
        try:
            value = float(token.replace(",", ""))
        except ValueError:
            return None
        span = 1
    elif token in NUMBER_WORDS:
        value, span = float(NUMBER_WORDS[token]), 1
    elif "-" in token and all(p in NUMBER_WORDS for p in token.split("-")):
        tens, unit = token.split("-", 1)
        value, span = float(NUMBER_WORDS[tens] + NUMBER_WORDS[unit]), 1
    else:
        return None
    while i + span < len(tokens) and tokens[i + span] in (*_SCALE, "hundred"):
        value *= 100 if tokens[i + span] == "hundred" else _SCALE[tokens[i + span]]
        span += 1
    return value, span


def values(text: str) -> list[Value]:
    """Every figure, date and month of a text, tagged with its kind."""
    tokens = words(text)
    found: list[Value] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in MONTHS and (token != "may" or (i > 0 and (tokens[i - 1] in ("in", "of")
                                                              or tokens[i - 1][0].isdigit()))
                                or (i + 1 < len(tokens) and tokens[i + 1][0].isdigit())):
            month = float(MONTHS.index(token) + 1)
            found.append(Value(month, "month", i, month, token))
            i += 1
            continue
        parsed = _number(tokens, i)
        if parsed is None or (i and tokens[i - 1].endswith("-")):  # "HALCYON-2": a name
            i += 1
            continue
        number, span = parsed
        raw = number if span == 1 else float(_number(tokens[i:i + 1], 0)[0])
        after = tokens[i + span: i + span + 3]
        before = tokens[i - 1] if i else ""
        kind = "count"
        if after[:1] == ["%"] or after[:2] == ["per", "cent"] or after[:1] == ["percent"] or \
                after[:2] == ["percentage", "points"]:
            kind = "percent"
        elif (after and after[0] in MONTHS or before in MONTHS and before != "may") and \
                raw <= 31 and span == 1:
            # a date: the day with its month ("14 June", "June 14"), so "14 July" is not
            # borne out by a 14 and a July found apart
            kind = "day"
            number = 100 * (MONTHS.index(after[0] if after and after[0] in MONTHS
                                         else before) + 1) + raw
        elif before in _CURRENCY or (after and after[0] in _SMALL_MONEY):   # "5.2p"
            kind = "money"
        elif after and after[0].rstrip("s") in _DURATION:  # not "monthly": how often
            kind = "duration"
            number *= _DURATION[after[0].rstrip("s")]
        elif re.fullmatch(r"1[89]\d\d|20\d\d", tokens[i].rstrip("s")) and span == 1:
            kind = "year"
        elif after and after[0][0].isalpha() and after[0] not in STOPWORDS and \
                after[0] not in NUMBER_WORDS:
            kind = f"count:{_stem(after[0])}"  # what it counts: "three teams", "20 mg"
        found.append(Value(number, kind, i, raw, " ".join(tokens[i:i + span])))
        i += span
    return found


_NAME = re.compile(r"\b[A-Z][a-zA-Z'’-]+")


def names(text: str) -> set[str]:
    """Capitalised words that are not a sentence's first word (lowercased); a first word
    counts when the text also writes it capitalised elsewhere."""
    inner: set[str] = set()
    first: set[str] = set()
    for sentence in sentences(text):
        for match in _NAME.finditer(sentence):
            word = match.group(0).lower().replace("’", "'").removesuffix("'s").rstrip("'")
            if word in STOPWORDS or word in MONTHS or word in NUMBER_WORDS:
                continue
            (first if match.start() == 0 else inner).add(word)
    return inner | (first & inner)


YEAR = re.compile(r"(?:18|19|20)\d\d")   # a token naming a year, for telling times apart


def is_negated(text: str) -> bool:
    return any(w in NEGATIONS or w.endswith("n't") for w in words(text))
