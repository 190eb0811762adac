"""The offline judge's key points come from the report the question is about, read whole:
its sections under short headings belong to it, and a document after it starts where its title
stands, even a title that ends with a full stop."""

from __future__ import annotations

import pytest

from tasks.embeddings import LocalEmbedder
from tasks.offline_judge import OfflineJudge
from tasks.score.judge import delimit
from tasks.score.protocol import parse_extraction
from tests.score.offline_eval import chat


def paragraphs(*texts: str) -> str:
    return "\n\n".join(texts)


QUERY = ("How did Tallow & Reed perform in the first half of 2026, why did its margin fall, and "
         "what does it expect for the rest of the year?")

GARDEN = paragraphs(
    "Hollybank Community Garden: Summer Newsletter",
    ("The polytunnel was finally repaired in May after the spring gales tore two of its "
     "panels, and the volunteers have since raised tomatoes, chillies and a surprising crop of"
     " melons."),
    ("Our Wednesday work mornings now draw about fifteen regulars. New volunteers are welcome,"
     " and tools and gloves are provided."),
    ("The pond has been cleared of blanket weed and the dragonflies have returned. Please keep"
     " dogs on leads near the water."),
)

REPORT = paragraphs(
    "Tallow & Reed plc: Half-year report for the six months to 30 June 2026\n"
    "Stock exchange announcement, 28 July 2026",
    ("Tallow & Reed plc, the candle and home-fragrance retailer, today publishes its unaudited"
     " results for the six months to 30 June 2026."),
    "Highlights",
    "Revenue of £88.4 million, up 6.2 per cent on the first half of 2025.",
    "Operating margin of 7.1 per cent, down from 9.3 per cent a year earlier.",
    "Nine new stores opened, taking the estate to 146.",
    "Chief Executive's review",
    ("Demand for our seasonal ranges held up well, and online orders grew faster than store "
     "sales. The margin fell because the price of soy wax and glass jars rose sharply while we"
     " chose to hold shelf prices through the spring."),
    "Outlook",
    ("The board expects revenue growth to continue in the second half and the margin to "
     "recover partly as new supply contracts for wax take effect from September."),
)

MINUTES = paragraphs(
    "Minutes of the Parish Council of Little Orton, ordinary meeting of 3 June.",
    "The chair opened the meeting at 7.30 pm. Apologies were received from two councillors.",
    ("The clerk reported that the bus shelter on Mill Road has been repaired at a cost of 640 "
     "pounds, and that the defibrillator at the village hall passed its monthly check."),
    ("Councillors agreed to ask the county council to repaint the faded school crossing "
     "markings before September."),
)


@pytest.fixture(scope="module")
def judge() -> OfflineJudge:
    return OfflineJudge(LocalEmbedder())


def key_points(judge: OfflineJudge, context: str) -> list[str]:
    return parse_extraction(chat(judge, "Extracting information relevant to a question",
                                 delimit("query", QUERY),
                                 delimit("chunk", context, 'position="part 1 of 1"')))


def test_a_report_under_section_headings_is_read_whole(judge):
    points = key_points(judge, "\n\n".join([GARDEN, REPORT, MINUTES]))
    said = " ".join(points)
    # the bare figures under "Highlights" and the forecast under "Outlook" are its information
    for fact in ("£88.4 million", "7.1 per cent", "second half"):
        assert fact in said, (fact, points)
    # the documents around it are not
    for other in ("polytunnel", "dragonflies", "bus shelter", "defibrillator"):
        assert other not in said, (other, points)


def test_a_title_that_ends_with_a_full_stop_starts_another_document(judge):
    points = key_points(judge, "\n\n".join([REPORT, MINUTES]))
    assert any("soy wax" in p for p in points)
    assert not any("crossing" in p or "bus shelter" in p or "Apologies" in p for p in points)
