"""The offline judge's logicality finds a contradiction by what is said of one subject, and lets
alone what only looks like one: other subjects, other years, what is expected against what
happened.

Each case is a short clean answer and one sentence planted in it, through the real logicality
scorer (prompt, judge reply, parser).
"""

from __future__ import annotations

import asyncio

import pytest

from tasks.embeddings import LocalEmbedder
from tasks.offline_judge import OfflineJudge
from tasks.score.logicality import score_logicality

QUERY = "What happened, and why?"


@pytest.fixture(scope="module")
def judge() -> OfflineJudge:
    return OfflineJudge(LocalEmbedder())


def logicality(judge: OfflineJudge, answer: str) -> float:
    result = asyncio.run(score_logicality(judge, QUERY, answer))
    assert result.score is not None, result.rationale
    return result.score


CONTRADICTED = {
    "opposite directions, one subject": (
        "Container traffic at the port dropped 12 per cent last year, while bulk cargo held "
        "steady and cruise calls went up. Revenue was 6 per cent lower. The main cause was a "
        "shipping line moving its weekly service to a rival port.",
        "Container volumes rose slightly over the year."),
    "one comparison, opposite ways": (
        "The growers picked 4,380 tonnes, 27 per cent less than the five-year average. Frost in "
        "April and cool weather at flowering cut the crop. The reds are very good.",
        "Overall the harvest was larger than the five-year average."),
    "opposite states of one subject": (
        "The breakfast pilot ran in 24 primary schools for a year. Attendance rose and late "
        "arrivals fell. Five of the 24 schools are leaving the pilot because of staffing.",
        "All 24 schools have agreed to continue next year."),
    "two places in one table": (
        "The club finished fourth with 71 points, behind the two promoted sides. They lost in "
        "the play-offs on aggregate. The captain's injury was the main reason.",
        "Finishing second, the club missed promotion only on goal difference."),
    "the only one against a count": (
        "In 2025 three of the borough's 14 monitoring sites were above the legal limit, down "
        "from five in 2024. Station Road is the worst. Traffic measures helped elsewhere.",
        "Station Road is now the only site in the borough still above the legal limit."),
    "all against a part": (
        "Nine of the 14 weirs on the river have been removed and three given fish passes. "
        "Salmon numbers are the highest since counting began.",
        "All 14 weirs on the river have now been removed."),
    "a decision undone and still in force": (
        "The inspector allowed the appeal and granted permission for the solar farm, overturning "
        "the district council's refusal. Conditions protect the hall's setting.",
        "The council's refusal of the scheme therefore stands."),
    "the first ever against a return": (
        "Sunday trains return for the first time since they were withdrawn in 2019. Fares are "
        "unchanged and a new day ticket is on sale.",
        "It can be used on Sundays, when the line will have trains for the first time in its "
        "history."),
    "one figure, opposite stances": (
        "A majority backed the idea: 54 per cent supported the limit and 41 per cent opposed it. "
        "Support was strongest near schools.",
        "With 41 per cent of respondents in favour, officers have scaled the plan back."),
    "a direction said without a figure": (
        "Reports of damp and mould went up from 903 to 1,412 after the association urged tenants "
        "to report them. The repairs backlog grew.",
        "One bright spot was damp and mould, where the number of reports went down."),
    "more of what would not change": (
        "The extension would keep output at up to 500,000 tonnes a year. Lorry traffic would not "
        "change from its average of 110 movements a day.",
        "With the extension the quarry would send more lorries onto the local roads."),
    "a denial of what was said": (
        "The attackers copied loan files holding names, addresses and dates of birth. Card "
        "numbers and banking passwords were not in the files. Members are offered credit "
        "monitoring.",
        "The attackers did, however, obtain the card numbers of the affected members."),
}


@pytest.mark.parametrize("clean, planted", CONTRADICTED.values(), ids=CONTRADICTED.keys())
def test_a_planted_contradiction_lowers_logicality(judge, clean, planted):
    before = logicality(judge, clean)
    after = logicality(judge, f"{clean} {planted}")
    # each kind of cue costs what its precision earns: a denial or a differing figure, wrong
    # more often than not on clean answers, about one point; opposite states, more
    assert after <= before - 0.5, (before, after)


NOT_CONTRADICTED = {
    "different subjects": (
        "Revenue rose 8 per cent to £54 million.",
        "Staff costs fell after the restructuring."),
    "what happened and what is expected": (
        "Grape prices fell last year as the market was oversupplied.",
        "With a small harvest, grape prices are expected to rise by about 8 per cent."),
    "different years": (
        "Visitor numbers fell in 2023 after the bridge closed.",
        "Visitor numbers rose in 2024 once it reopened."),
    "an idiom, not a trend": (
        "Isotope analysis of her teeth should show whether she grew up locally.",
        "The excavation itself remained on schedule."),
    "the whole and a named part of it": (
        "Applications rose 3 per cent to 24,310, with home applications up 5 per cent.",
        "Applications from Nigeria dropped 31 per cent after the naira was devalued."),
    "which claims, not a change": (
        "Claims jumped to 3,870 in a year from 1,140 the year before.",
        "Of the 108 declined claims in the sample, reviewers thought 22 should have been "
        "accepted."),
    "a train calling at a station": (
        "The new station opens in May, and trains will start calling there then.",
        "Only every other train will stop at the old halt, whose platform is too short."),
    "a tally of events, not a state": (
        "In the play-offs they lost away from home and went out on aggregate.",
        "They won just six of 23 away games all season."),
}


@pytest.mark.parametrize("first, second", NOT_CONTRADICTED.values(),
                         ids=NOT_CONTRADICTED.keys())
def test_what_only_looks_like_a_contradiction_costs_little(judge, first, second):
    assert logicality(judge, f"{first} {second}") >= 9.0


def test_how_often_is_not_how_long(judge):
    # "12 monthly instalments" once crashed the figure reader (a frequency read as a duration)
    assert logicality(judge, "The loan is repaid in 12 monthly instalments. It costs £9,000 "
                             "over three years.") >= 9.0
