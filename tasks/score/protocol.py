"""Pure parsers for the judge output protocol (DESIGN.md, "Judge output protocol").

- score: the last ``[[N]]`` (N may be decimal), clamped to 0-10;
- statements: one ``<statement>...</statement>`` per factual statement;
- support: ``[[Fully supported]]``, ``[[Partially supported]]`` or ``[[No support]]``;
- extraction: a numbered list, or exactly ``No relevant information``.

Each parser raises :class:`ProtocolError` when the text breaks the protocol, so the caller can
re-ask (bounded) and then record a failure. The raw text stays with the caller.
"""

from __future__ import annotations

import re

SCORE_MIN, SCORE_MAX = 0.0, 10.0
NO_RELEVANT_INFORMATION = "No relevant information"

_MARKER = re.compile(r"\[\[([^\[\]]*)\]\]")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_STATEMENT = re.compile(r"<statement>(.*?)</statement>", re.DOTALL | re.IGNORECASE)
_OPEN, _CLOSE = re.compile(r"<statement>", re.I), re.compile(r"</statement>", re.I)
_SUPPORT = {
    "fully supported": "full",
    "partially supported": "partial",
    "no support": "none",
}
_SUPPORT_MARKER = re.compile(
    r"\[\[\s*(fully\s+supported|partially\s+supported|no\s+support)\s*\]\]", re.IGNORECASE)
_ITEM = re.compile(r"^\s*(\d+)\s*[.)](?!\d)\s*(.*)$")  # "1.5 million" is not item 1


class ProtocolError(ValueError):
    """The judge's answer does not follow the output protocol."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _require_text(text: str | None) -> str:
    if text is None or not text.strip():
        raise ProtocolError("empty judge output")
    return text


def parse_score(text: str) -> float:
    """The last ``[[N]]`` as a float clamped to 0-10."""
    markers = _MARKER.findall(_require_text(text))
    if not markers:
        raise ProtocolError("no [[N]] score marker")
    last = markers[-1].strip()
    if not _NUMBER.fullmatch(last):
        raise ProtocolError(f"last [[...]] marker is not a number: {last[:40]!r}")
    return min(SCORE_MAX, max(SCORE_MIN, float(last)))


def parse_statements(text: str) -> list[str]:
    """The stripped, non-empty ``<statement>`` blocks, in order.

    No block at all is a valid answer (the judge found no factual statement) and gives ``[]``;
    an unclosed or nested tag is a break.
    """
    text = _require_text(text)
    opens, closes = len(_OPEN.findall(text)), len(_CLOSE.findall(text))
    if opens != closes:
        raise ProtocolError(f"unbalanced <statement> tags ({opens} open, {closes} close)")
    blocks = _STATEMENT.findall(text)
    if len(blocks) != opens or any(_OPEN.search(b) for b in blocks):
        raise ProtocolError("nested or misordered <statement> tags")
    return [b.strip() for b in blocks if b.strip()]


def parse_support(text: str) -> str:
    """``full`` | ``partial`` | ``none`` from the last support marker."""
    found = _SUPPORT_MARKER.findall(_require_text(text))
    if not found:
        raise ProtocolError("no [[Fully supported]] / [[Partially supported]] / [[No support]]")
    return _SUPPORT[" ".join(found[-1].lower().split())]


def _is_no_info(line: str) -> bool:
    return line.strip().strip("*_`\"'").rstrip(".").strip().lower() == \
        NO_RELEVANT_INFORMATION.lower()


def parse_extraction(text: str) -> list[str]:
    """Numbered list items (a preamble before item 1 is ignored; an item runs until a blank
    line or the next number), or ``[]`` when the answer is ``No relevant information``."""
    text = _require_text(text)
    if _is_no_info(text):
        return []
    items: list[list[str]] = []
    open_item = False
    for line in text.splitlines():
        match = _ITEM.match(line)
        if match:
            items.append([match.group(2).strip()])
            open_item = True
        elif not line.strip():
            open_item = False
        elif open_item:
            items[-1].append(line.strip())
    if not items:
        raise ProtocolError("neither a numbered list nor 'No relevant information'")
    parsed = [" ".join(" ".join(parts).split()) for parts in items]
    kept = [item for item in parsed if item and not _is_no_info(item)]
    if not kept and not any(_is_no_info(item) for item in parsed):
        raise ProtocolError("numbered list with only empty items")
    return kept
