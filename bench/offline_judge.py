"""Benchmark: how often the offline judge ranks a clean answer above a planted defect.

Scores the hand-written evaluation set (``tests/score/offline_eval``: a question about one
report among unrelated documents, a clean answer and four planted defects per item) through the
real scoring stage with the offline judge, and prints, per split (which were tuned on: see
``tests/score/offline_eval``), the share of items where the clean answer scores strictly higher
than each defect on the defect's own dimension and on the reward (mean of the four), plus
seconds per item (five answers, the context embedded once).

    python bench/offline_judge.py              # every split
    python bench/offline_judge.py --split held_out --verbose
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.embeddings import LocalEmbedder  # noqa: E402
from tasks.offline_judge import OfflineJudge  # noqa: E402
from tasks.schemas import DIMENSIONS  # noqa: E402
from tests.score.offline_eval import DEFECTS, SPLITS, evaluate, load_items, win_rates  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=SPLITS, help="one split only (default: all)")
    parser.add_argument("--verbose", action="store_true", help="every answer's four scores")
    args = parser.parse_args()
    embedder = LocalEmbedder()
    embedder.embed_sync(["warm up"])  # the model load is not the judge's time
    # one judge for every split, and its per-text cache for the segment index too: the
    # distractors and most answer sentences recur (as in a nightly run, K answers per prompt)
    judge = OfflineJudge(embedder)
    for split in (args.split,) if args.split else SPLITS:
        items = load_items(split)
        started = time.perf_counter()
        scored = evaluate(judge, judge, items)
        seconds = time.perf_counter() - started
        print(f"\n{split}: {len(items)} items, {seconds / len(items):.1f} s per item "
              f"({len(items[0].answers)} answers each)")
        print(f"  {'defect':<14}{'own dimension':>15}{'reward':>10}")
        for defect, (own, reward) in win_rates(scored).items():
            print(f"  {defect:<14}{own:>15.0%}{reward:>10.0%}")
        if args.verbose:
            for s in scored:
                print(f"  {s.item.id}")
                for kind in ("clean", *DEFECTS):
                    row = " ".join(f"{s.scores[kind][d]:5.1f}" for d in DIMENSIONS)
                    print(f"    {kind:<13} {row}   reward {s.reward(kind):5.2f}")


if __name__ == "__main__":
    main()
