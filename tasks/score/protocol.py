"""Pure parsers for the judge output protocol (DESIGN.md, "Judge output protocol").

Real judges vary the form of an answer; these read it as a careful person would and refuse to
guess:

- score: the last numeric ``[[N]]`` (integer or decimal, bold or not); outside 0-10 is a break;
- statements: ``<statement>...</statement>`` tags wherever they stand; a reply without tags
  means "no statements" only when it says so in the agreed sentence (:data:`NO_STATEMENTS`);
- support: the last ``[[label]]`` (any case, bold or not): fully / partially supported, or
  no / not / un-supported; a bold label alone stands for the marker;
- extraction: a numbered or bulleted list, or prose; "no relevant information" anywhere means
  none; a refusal is a break.

Each parser raises :class:`ProtocolError` when the text breaks the protocol, so the caller can
re-ask (bounded) and then record a failure. The raw text stays with the caller. A reply cut
off at ``max_tokens`` is a break whatever it holds; the caller checks that (it is not in the
text).
"""

from __future__ import annotations

import math
import re

SCORE_MIN, SCORE_MAX = 0.0, 10.0
NO_RELEVANT_INFORMATION = "No relevant information"
NO_STATEMENTS = "No factual statements."

_MARKER = re.compile(r"\[\[([^\[\]]*)\]\]")
_EMPHASIS = re.compile(r"[*_`]+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_OUT_OF_TEN = re.compile(r"(?P<n>[+-]?(?:\d+(?:\.\d*)?|\.\d+))/10")
_STATEMENT = re.compile(r"<statement(?:\s[^<>]*)?>(.*?)</statement\s*>", re.DOTALL | re.I)
_OPEN = re.compile(r"<statement(?:\s[^<>]*)?>", re.I)
_CLOSE = re.compile(r"</statement\s*>", re.I)
_NO_STATEMENTS = re.compile(r"^(no factual statements?|没有事实性陈述|无事实性陈述)$", re.I)
_SUPPORT = {
    "fully supported": "full", "full support": "full", "fully": "full",
    "完全支持": "full",
    "partially supported": "partial", "partial support": "partial", "partially": "partial",
    "部分支持": "partial",
    "no support": "none", "not supported": "none", "unsupported": "none",
    "不支持": "none", "无支持": "none", "没有支持": "none",
}
_BOLD = re.compile(r"\*\*([^*\n]+)\*\*|__([^_\n]+)__")
_NO_INFO = re.compile(r"no\s+relevant\s+information|没有相关信息|无相关信息", re.I)
_ITEM = re.compile(  # "1." "2)" "(3)" "4、" or a bullet; "1.5 million" is not item 1
    r"^\s*(?:\d{1,3}\s*[.)、](?!\d)|\(\d{1,3}\)|[-*•·+–](?=\s))\s*(.*)$")
_REFUSAL = re.compile(
    r"^\W*(i['’]?m sorry|i am sorry|sorry,|i can(?:no|['’])t|i won['’]?t|i['’]?m unable|"
    r"i am unable|i['’]?m not able|i am not able|as an ai|unfortunately,? i |抱歉|对不起|我无法|"
    r"我不能)", re.I)


class ProtocolError(ValueError):
    """The judge's answer does not follow the output protocol."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _require_text(text: str | None) -> str:
    if text is None or not text.strip():
        raise ProtocolError("empty judge output")
    return text


def _plain(text: str) -> str:
    """A marker's content without emphasis, surrounding punctuation, case or extra spaces."""
    return " ".join(_EMPHASIS.sub("", text).strip(" .:;!\"'“”").lower().split())


def _score_value(content: str) -> float | None:
    """The number in a marker's content, or None when it is not a score (a label, a word)."""
    plain = "".join(_EMPHASIS.sub("", content).split()).removesuffix("分")
    match = _NUMBER.fullmatch(plain) or _OUT_OF_TEN.fullmatch(plain)
    if match is None:
        return None
    return float(match.group("n") if "n" in match.groupdict() else match.group(0))


def parse_score(text: str) -> float:
    """The last numeric ``[[N]]`` (``[[7]]``, ``[[7.5]]``, ``**[[8]]**``, ``[[6/10]]``).

    Non-numeric markers (a quoted ``[[score]]`` placeholder) are skipped; a number outside
    0-10 is a break, never clamped: the judge did not follow the scale.
    """
    markers = _MARKER.findall(_require_text(text))
    if not markers:
        raise ProtocolError("no [[N]] score marker")
    values = [v for v in map(_score_value, markers) if v is not None]
    if not values:
        raise ProtocolError(f"no [[...]] marker holds a number: {markers[-1][:40]!r}")
    value = values[-1]
    if not math.isfinite(value) or not SCORE_MIN <= value <= SCORE_MAX:
        raise ProtocolError(f"score {value:g} is outside {SCORE_MIN:g}-{SCORE_MAX:g}")
    return value


def says_no_statements(text: str) -> bool:
    """Whether a line of the reply is the agreed sentence (any case, emphasis, punctuation)."""
    return any(_NO_STATEMENTS.match(_plain(line)) for line in text.splitlines())


def parse_statements(text: str) -> list[str]:
    """The stripped, non-empty ``<statement>`` blocks, in order, wherever they stand.

    A reply without tags is "no factual statement" (``[]``) only when a line of it is the
    agreed sentence; anything else without tags (a refusal, prose, a plain list) is a break,
    as is an unclosed or nested tag.
    """
    text = _require_text(text)
    opens, closes = len(_OPEN.findall(text)), len(_CLOSE.findall(text))
    if opens != closes:
        raise ProtocolError(f"unbalanced <statement> tags ({opens} open, {closes} close)")
    blocks = _STATEMENT.findall(text)
    if len(blocks) != opens or any(_OPEN.search(b) for b in blocks):
        raise ProtocolError("nested or misordered <statement> tags")
    statements = [" ".join(b.split()) for b in blocks if b.strip()]
    statements = [s for s in statements if not _NO_STATEMENTS.match(_plain(s))]
    if statements or blocks:
        return statements
    if says_no_statements(text):
        return []
    raise ProtocolError(f"no <statement> tags and not the sentence {NO_STATEMENTS!r}")


def _support_label(content: str) -> str | None:
    """The grade a label names; None for anything else ("not fully supported" is ambiguous
    between partial and none, so it names nothing)."""
    return _SUPPORT.get(_plain(content))


def parse_support(text: str) -> str:
    """``full`` | ``partial`` | ``none`` from the last support label.

    Bracketed labels (``[[Fully supported]]``, ``[[partially supported]]``, ``**[[No
    Support]]**``, ``[[Unsupported]]``) win; without one, the last bold label alone
    (``**Partially supported**``) is the verdict. A label merely written in prose ("the
    statement is not fully supported") is never read as one.
    """
    text = _require_text(text)
    for found in (_MARKER.findall(text), [a or b for a, b in _BOLD.findall(text)]):
        grades = [g for g in map(_support_label, found) if g is not None]
        if grades:
            return grades[-1]
    raise ProtocolError("no [[Fully supported]] / [[Partially supported]] / [[No support]]")


def _strip_item(text: str) -> str:
    return " ".join(text.replace("**", "").split())


def _is_heading(line: str) -> bool:
    """A line that introduces a list rather than holding information ("Relevant info:")."""
    plain = _strip_item(line).strip("#").strip()
    return not plain or (plain.endswith((":", "：")) and len(plain) < 80)


def parse_extraction(text: str) -> list[str]:
    """The pieces of query-relevant information, or ``[]`` for "no relevant information".

    A numbered or bulleted list gives one item per entry (an entry runs on until a blank line
    or the next entry; a heading before the list is dropped); a reply without a list gives one
    item per paragraph. "No relevant information" anywhere, in any case, means none, as the
    published implementation reads it. A refusal is a break, not information.
    """
    text = _require_text(text)
    if _NO_INFO.search(text):
        return []
    if _REFUSAL.match(text.strip()):
        raise ProtocolError(f"the judge declined: {text.strip()[:60]!r}")
    items: list[list[str]] = []
    open_item = False
    for line in text.splitlines():
        match = _ITEM.match(line)
        if match:
            items.append([match.group(1)])
            open_item = True
        elif not line.strip():
            open_item = False
        elif open_item:
            items[-1].append(line.strip())
    if not items:  # prose: one piece per paragraph
        items = [[p] for p in re.split(r"\n\s*\n", text) if not _is_heading(p)]
    kept = [_strip_item(" ".join(parts)) for parts in items]
    kept = [item for item in kept if item and not _is_heading(item)]
    if not kept:
        raise ProtocolError("neither information nor 'No relevant information'")
    return kept
