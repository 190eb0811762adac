"""The judge output protocol parsers: what they accept, and every way an answer can break."""

from __future__ import annotations

import re

import pytest

from tasks.score.protocol import (
    ProtocolError,
    parse_extraction,
    parse_score,
    parse_statements,
    parse_support,
)
from tests.score import judge_replies as corpus


@pytest.mark.parametrize(("text", "expected"), [
    ("Analysis... Rating: [[7]]", 7.0),
    ("[[8.5]]", 8.5),
    ("[[ 6 ]]", 6.0),
    ("[[.5]]", 0.5),
    ("[[10.]]", 10.0),
    ("Earlier draft [[3]], on reflection: [[9]]", 9.0),  # the last marker wins
    ("**Score: [[4]]**\n", 4.0),
    ("[[+3]]", 3.0),
    ("[[0]]", 0.0),
    ("[[7/10]]", 7.0),
    ("an unclosed [[ bracket, then the score [[6]]", 6.0),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("   \n", "empty"),
    ("The answer deserves a 7.", "score marker"),
    ("Rating: [7]", "score marker"),
    ("Rating: [[seven]]", "holds a number"),
    ("Rating: [[]]", "holds a number"),
    ("Rating: [[nan]]", "holds a number"),
    ("Rating: [[inf]]", "holds a number"),
    ("Rating: [[12]]", "outside 0-10"),  # off the scale: never clamped into it
    ("Rating: [[-2]]", "outside 0-10"),
    ("Rating: [[1e3]]", "holds a number"),
    ("Rating: [[7", "score marker"),
])
def test_parse_score_breaks(text, reason):
    with pytest.raises(ProtocolError, match=reason) as info:
        parse_score(text)
    assert info.value.reason


@pytest.mark.parametrize(("text", "expected"), [
    ("<statement>Paris is in France.</statement>", ["Paris is in France."]),
    ("Statements:\n<statement> A is B. </statement>\n<statement>C was born in 1901.</statement>",
     ["A is B.", "C was born in 1901."]),
    ("<statement>multi\nline</statement>", ["multi line"]),
    ("<statement>   </statement><statement>kept</statement>", ["kept"]),  # empty dropped
    ("<STATEMENT>case</Statement>", ["case"]),
    ("No factual statements.", []),  # the agreed sentence: a defined case, not a break
    ("<statement>No factual statements.</statement>", []),
    ('<statement id="1">attributes allowed</statement>', ["attributes allowed"]),
])
def test_parse_statements(text, expected):
    assert parse_statements(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("<statement>never closed", "unbalanced"),
    ("closed only</statement>", "unbalanced"),
    ("<statement>a</statement><statement>b", "unbalanced"),
    ("<statement>outer <statement>inner</statement></statement>", "nested"),
    ("</statement>x<statement>", "nested or misordered"),
    ("The answer makes no factual statement.", "no <statement> tags"),  # not the sentence
    ("There are no factual statements to list, although one could argue.", "no <statement>"),
])
def test_parse_statements_breaks(text, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse_statements(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("The segments state it directly. [[Fully supported]]", "full"),
    ("[[Partially supported]]", "partial"),
    ("Nothing in the evidence. [[No support]]", "none"),
    ("[[fully  supported]]", "full"),
    ("[[ No Support ]]", "none"),
    ("At first [[Fully supported]], but the date differs: [[Partially supported]]", "partial"),
])
def test_parse_support(text, expected):
    assert parse_support(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("Fully supported", "no \\[\\[Fully"),
    ("[[Not fully supported]]", "no \\[\\[Fully"),  # partial or none? never guessed
    ("[[Supported]]", "no \\[\\[Fully"),
    ("[[7]]", "no \\[\\[Fully"),
    ("[[Mostly supported]]", "no \\[\\[Fully"),
])
def test_parse_support_breaks(text, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse_support(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("No relevant information", []),
    ("  No relevant information.\n", []),
    ("no relevant information", []),
    ("1. The treaty was signed in 1648.\n2. It ended the war.",
     ["The treaty was signed in 1648.", "It ended the war."]),
    ("Here is what the chunk says:\n1) First point\n2) Second point", ["First point",
                                                                       "Second point"]),
    ("1. A long item\n   that wraps\n2. Short", ["A long item that wraps", "Short"]),
    ("1. Item\n\nA closing remark.", ["Item"]),  # text after a blank line is not the item
    ("1. About 1.5 million people\n2. 3.2% growth", ["About 1.5 million people",
                                                     "3.2% growth"]),
    ("1. kept\n2.\n3. also kept", ["kept", "also kept"]),  # empty items dropped
    ("1. No relevant information", []),
    ("- bullet one\n- bullet two", ["bullet one", "bullet two"]),
    ("The chunk talks about the treaty.", ["The chunk talks about the treaty."]),
    ("No relevant information was found, but maybe the treaty.", []),  # as published
    ("First paragraph.\n\nSecond paragraph.", ["First paragraph.", "Second paragraph."]),
])
def test_parse_extraction(text, expected):
    assert parse_extraction(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("   ", "empty"),
    ("1.\n2.", "neither information"),
    ("I cannot help with this request.", "declined"),
])
def test_parse_extraction_breaks(text, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse_extraction(text)


PARSERS = {"score": (parse_score, corpus.SCORES), "statements": (parse_statements,
           corpus.STATEMENTS), "support": (parse_support, corpus.SUPPORT),
           "extraction": (parse_extraction, corpus.EXTRACTION)}
CASES = [(kind, text, expected) for kind, (_, replies) in PARSERS.items()
         for text, expected in replies]


def test_the_corpus_covers_every_step_with_realistic_replies():
    assert corpus.CORPUS_SIZE >= 40
    assert all(any(isinstance(e, corpus.Break) for _, e in replies) and
               any(not isinstance(e, corpus.Break) for _, e in replies)
               for _, replies in PARSERS.values())
    assert sum("评" in t or "文段" in t or "片段" in t or "甲骨" in t or "国王" in t
               for _, t, _ in CASES) >= 5  # Chinese replies


@pytest.mark.parametrize(("kind", "text", "expected"), CASES,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_realistic_judge_replies(kind, text, expected):
    parse = PARSERS[kind][0]
    if isinstance(expected, corpus.Break):
        with pytest.raises(ProtocolError, match=re.escape(expected.reason)):
            parse(text)
    else:
        assert parse(text) == expected
