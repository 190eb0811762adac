"""A scripted model behind an OpenAI-compatible endpoint: both the policy and the judge, so the
LLM path can be run end to end on a laptop with no model (README, "Run it for real").

As policy it answers from the request's own context: a few of its sentences, picked by the
request's seed, so the K samples of a prompt differ. As judge it follows the protocol of every
step: scores from how much of the answer's wording the question shares, statements as the
answer's sentences, support by word overlap with the evidence, extraction as the chunk's first
sentences. It is a script, not a model: its scores mean nothing about quality.

    python -m tests.fakes.scripted_model --port 8000     # serves until interrupted
"""

from __future__ import annotations

import argparse
import random
import re
import time
from typing import Any

from tasks.score.judge import step_of
from tests.fakes.openai_server import FakeOpenAI

_SENTENCE = re.compile(r"(?<=[.!?。])\s+")
_WORD = re.compile(r"\w+")


def _section(text: str, tag: str) -> str:
    found = re.search(rf"<{tag}[^>]*>\n?(.*?)\n?</{tag}>", text, re.S)
    return found.group(1) if found else text


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 3}


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if len(s.split()) >= 4]


def _answer(request: dict[str, Any]) -> str:
    """The policy: three or four sentences of the prompt, chosen by the request's seed."""
    prompt = str(request["messages"][-1]["content"])
    sentences = _sentences(prompt) or [prompt[:200]]
    rng = random.Random(request.get("seed", 0))
    picked = rng.sample(sentences, k=min(len(sentences), rng.choice((3, 4))))
    return " ".join(picked)


def _judge(step: str, user: str) -> str:
    answer = _section(user, "answer")
    if step == "faithfulness_statements":
        return "\n".join(f"<statement>{s}</statement>" for s in _sentences(answer)) or \
            "No factual statements."
    if step == "faithfulness_support":
        statement, evidence = _words(_section(user, "statement")), _words(
            _section(user, "evidence"))
        share = len(statement & evidence) / max(1, len(statement))
        label = "Fully supported" if share > 0.8 else "Partially supported" if share > 0.4 \
            else "No support"
        return f"The evidence shares {share:.0%} of the statement's words.\n[[{label}]]"
    if step == "completeness_extract":
        chunk = _sentences(_section(user, "chunk"))[:2]
        return "\n".join(f"{i}. {s}" for i, s in enumerate(chunk, 1)) or \
            "No relevant information."
    query = _words(_section(user, "query"))
    share = len(query & _words(answer)) / max(1, len(query))
    return f"The answer uses {share:.0%} of the question's words.\n[[{round(3 + 6 * share)}]]"


def reply(request: dict[str, Any]) -> str:
    """One reply: the judge's when the request is a judge step, the policy's otherwise."""
    step = step_of(request.get("messages") or [])
    if step is None:
        return _answer(request)
    return _judge(step, str(request["messages"][-1]["content"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    with FakeOpenAI(reply, port=args.port) as server:
        print(f"scripted policy and judge at {server.url} (models: any name)", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
