"""A corpus of judge replies written the way real models answer, each with what it must parse
to, or the protocol break it must raise (``Break("substring of the reason")``).

Every reply is ours; the styles are those seen from chat models used as judges: markdown
emphasis, quoted rubric examples before the verdict, decimals, lower-case labels, bullets and
prose instead of numbered lists, refusals, replies in Chinese, and scores off the scale.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Break:
    reason: str


SCORES: list[tuple[str, float | Break]] = [
    ("The answer names both causes and gives the figures.\n\n[[8]]", 8.0),
    ("Analysis: it answers the question but omits the 2019 figure.\nRating: [[7.0]]", 7.0),
    ("**Analysis.** Clear and specific.\n\n**Score: [[9]]**", 9.0),
    ("The rubric asks me to answer in the form [[5]]. Having read the answer, it is mostly "
     "relevant but thin.\n\nFinal rating: [[6]]", 6.0),
    ("Example of the format: \"[[score]]\". My score: [[4.5]]", 4.5),
    ("- \"fell by 12%\" contradicts \"rose sharply\".\n- The total does not add up.\n[[ 3 ]]",
     3.0),
    ("No logical errors.\n[[10]]", 10.0),
    ("The answer is coherent overall, one slip in the arithmetic.\nScore: [[**7**]]", 7.0),
    ("I would rate this [[7/10]] because one of the three reasons is missing.", 7.0),
    ("分析：回答直接回应了问题，并给出了具体数字，但遗漏了第三个原因。\n\n评分：[[7]]", 7.0),
    ("分析：回答前后一致，没有逻辑错误。\n评分：[[9分]]", 9.0),
    ("Rating: 7/10. The answer is helpful.", Break("no [[N]] score marker")),
    ("I'm sorry, but I can't evaluate this answer.", Break("no [[N]] score marker")),
    ("The answer deserves a high score: [[excellent]]", Break("holds a number")),
    ("Initially [[6]], but on reflection the answer is even better: [[11]]",
     Break("outside 0-10")),
    ("Score: [[-1]]", Break("outside 0-10")),
    ("Score: [[15/10]]", Break("outside 0-10")),
    ("", Break("empty")),
]

STATEMENTS: list[tuple[str, list[str] | Break]] = [
    ("<statement>The library opened in 1911.</statement>\n"
     "<statement>The library was designed by Edith Marr.</statement>",
     ["The library opened in 1911.", "The library was designed by Edith Marr."]),
    ("Here are the factual statements I found:\n\n1. <statement>The mill closed in 1987."
     "</statement>\n2. <statement>About 400 workers lost their jobs when the mill closed."
     "</statement>\n\nThe closing sentence is a summary, so I left it out.",
     ["The mill closed in 1987.", "About 400 workers lost their jobs when the mill closed."]),
    ("- <statement>Rainfall in May was 82 mm.</statement>\n- <Statement>Rainfall in June "
     "was 41 mm.</Statement>", ["Rainfall in May was 82 mm.", "Rainfall in June was 41 mm."]),
    ("<statement>\n  The treaty was signed in Nijmegen\n  in 1678.\n</statement>",
     ["The treaty was signed in Nijmegen in 1678."]),
    ("No factual statements.", []),
    ("**No factual statements.**", []),
    ("The answer only thanks the user and offers more help.\n\nno factual statements", []),
    ("<statement>甲骨文最早由王懿荣在1899年发现。</statement>\n"
     "<statement>殷墟出土的甲骨已超过15万片。</statement>",
     ["甲骨文最早由王懿荣在1899年发现。", "殷墟出土的甲骨已超过15万片。"]),
    ("The answer makes no factual claims.", Break("no <statement> tags")),
    ("1. The mill closed in 1987.\n2. About 400 workers lost their jobs.",
     Break("no <statement> tags")),
    ("I'm sorry, I can't help with splitting this text.", Break("no <statement> tags")),
    ("<statement>The mill closed in 1987.</statement>\n<statement>About 400 workers",
     Break("unbalanced")),
]

SUPPORT: list[tuple[str, str | Break]] = [
    ("Segment 3 states the reopening date and the eight months of repairs.\n"
     "[[Fully supported]]", "full"),
    ("The date matches, but no passage mentions the cost. [[partially supported]]", "partial"),
    ("None of the passages mentions the award.\n\n**[[No Support]]**", "none"),
    ("The evidence says the bridge reopened, which contradicts the statement.\n"
     "Verdict: [[Not supported]]", "none"),
    ("The grades are [[Fully supported]], [[Partially supported]] and [[No support]]. "
     "Here the name differs from segment 2, so: [[Partially supported]]", "partial"),
    ("Reasoning: the passages never mention the merger.\n\nFinal answer: **Unsupported**",
     "none"),
    ("Segment 1 gives the same figure, word for word.\n\n**Fully supported**", "full"),
    ("[[ **fully supported** ]]", "full"),
    ("文段1提到了重新开放的时间，但没有提到费用，所以评分为部分支持。\n\n"
     "评分：[[Partially supported]]", "partial"),
    ("文段中没有任何相关内容。\n评分：[[不支持]]", "none"),
    ("The statement is not fully supported by the evidence.", Break("no [[Fully supported]]")),
    ("Mostly supported, I would say. [[Mostly supported]]", Break("no [[Fully supported]]")),
    ("I cannot determine support without the full document.", Break("no [[Fully supported]]")),
]

EXTRACTION: list[tuple[str, list[str] | Break]] = [
    ("1. The contractor found the pipes were misplaced in March.\n2. Excavation stopped for "
     "eleven weeks.", ["The contractor found the pipes were misplaced in March.",
                       "Excavation stopped for eleven weeks."]),
    ("Relevant information:\n\n- The council approved €2.4m for repairs in 2020.\n- Work "
     "began in January 2021.", ["The council approved €2.4m for repairs in 2020.",
                                "Work began in January 2021."]),
    ("* **Budget:** €2.4m approved in 2020\n* **Start:** January 2021",
     ["Budget: €2.4m approved in 2020", "Start: January 2021"]),
    ("This part explains that the delays came from misplaced utility pipes under King Street, "
     "which halted excavation for eleven weeks.",
     ["This part explains that the delays came from misplaced utility pipes under King Street, "
      "which halted excavation for eleven weeks."]),
    ("1) Output rose 8% in 2019\n2) 1.5 million units were sold abroad",
     ["Output rose 8% in 2019", "1.5 million units were sold abroad"]),
    ("No relevant information", []),
    ("This section contains no relevant information about the question.", []),
    ("**NO RELEVANT INFORMATION.**", []),
    ("1. 国王街下方的管线位置与地图不符。\n2. 开挖因此停工十一周。",
     ["国王街下方的管线位置与地图不符。", "开挖因此停工十一周。"]),
    ("该片段中没有相关信息。", []),
    ("I'm sorry, but I can't help with that request.", Break("declined")),
    ("抱歉，我无法处理这个请求。", Break("declined")),
    ("Relevant information:", Break("neither information")),
    ("   \n", Break("empty")),
]

CORPUS_SIZE = len(SCORES) + len(STATEMENTS) + len(SUPPORT) + len(EXTRACTION)
