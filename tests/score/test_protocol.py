"""The judge output protocol parsers: what they accept, and every way an answer can break."""

from __future__ import annotations

import pytest

from tasks.score.protocol import (
    ProtocolError,
    parse_extraction,
    parse_score,
    parse_statements,
    parse_support,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("Analysis... Rating: [[7]]", 7.0),
    ("[[8.5]]", 8.5),
    ("[[ 6 ]]", 6.0),
    ("[[.5]]", 0.5),
    ("[[10.]]", 10.0),
    ("Earlier draft [[3]], on reflection: [[9]]", 9.0),  # the last marker wins
    ("**Score: [[4]]**\n", 4.0),
    ("[[12]]", 10.0),  # clamped
    ("[[-2]]", 0.0),
    ("[[+3]]", 3.0),
    ("an unclosed [[ bracket, then the score [[6]]", 6.0),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("   \n", "empty"),
    ("The answer deserves a 7.", "score marker"),
    ("Rating: [7]", "score marker"),
    ("Rating: [[seven]]", "not a number"),
    ("Rating: [[7/10]]", "not a number"),
    ("Rating: [[]]", "not a number"),
    ("Rating: [[nan]]", "not a number"),
    ("Rating: [[inf]]", "not a number"),
    ("[[7]] but then [[Fully supported]]", "not a number"),
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
    ("<statement>multi\nline</statement>", ["multi\nline"]),
    ("<statement>   </statement><statement>kept</statement>", ["kept"]),  # empty dropped
    ("<STATEMENT>case</Statement>", ["case"]),
    ("The answer makes no factual statement.", []),  # a defined case, not a break
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
])
def test_parse_extraction(text, expected):
    assert parse_extraction(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("   ", "empty"),
    ("The chunk talks about the treaty.", "neither a numbered list"),
    ("- bullet one\n- bullet two", "neither a numbered list"),
    ("No relevant information was found, but maybe the treaty.", "neither a numbered list"),
    ("1.\n2.", "only empty items"),
])
def test_parse_extraction_breaks(text, reason):
    with pytest.raises(ProtocolError, match=reason):
        parse_extraction(text)
