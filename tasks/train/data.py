"""A published preference dataset version as token ids: prompt, chosen answer, rejected answer.

Prompts: a ``conversational`` row's prompt is a list of messages (JSON text in versions
published before lists were stored), rendered with the
tokenizer's chat template and ``add_generation_prompt=True`` (so it ends by opening the
assistant turn); a ``plain`` row's prompt is used as is. Both are encoded without special
tokens: whatever a model needs at the start belongs in its chat template. Answers: the content
of the one assistant message (conversational) or the text (plain), followed by the tokenizer's
end-of-sequence token, so the model learns to stop.

Truncation, counted, never silent:

- ``max_prompt_tokens``: ``truncate="keep_end"`` (default) keeps the LAST tokens of the prompt.
  In the default layout (``tasks/sample/layout.py``: context, blank line, query, in one user
  turn) the end holds the query and the assistant marker, so keep_end drops the beginning of
  the context. ``keep_start`` keeps the first tokens: only right for a layout that puts the
  query first, since it cuts the query and the assistant marker of the default layout.
- ``max_answer_tokens``: answers always keep their start; a cut answer loses its
  end-of-sequence token too (it did not end there).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

import pyarrow as pa
import torch

Truncate = Literal["keep_end", "keep_start"]
TRUNCATE_MODES: tuple[str, ...] = ("keep_end", "keep_start")


@dataclass(frozen=True)
class TokenizedPair:
    prompt_id: str
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass
class TruncationStats:
    """What the length limits cut from one dataset version."""

    pairs: int = 0  # pairs with anything cut
    prompts_truncated: int = 0
    prompt_tokens_cut: int = 0
    answers_truncated: int = 0  # chosen and rejected answers counted separately
    answer_tokens_cut: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _messages(value: str | list[dict]) -> list[dict]:
    """A message list; versions published before lists were stored hold it as JSON text."""
    return json.loads(value) if isinstance(value, str) else value


def _answer_text(value: str | list[dict], fmt: str, prompt_id: str) -> str:
    if fmt == "plain":
        return value
    messages = _messages(value)
    if len(messages) != 1 or messages[0].get("role") != "assistant":
        raise ValueError(f"{prompt_id}: an answer must be one assistant message, got {value!r:.80}")
    return messages[0]["content"]


def _prompt_text(value: str | list[dict], fmt: str, tokenizer) -> str:
    if fmt == "plain":
        return value
    return tokenizer.apply_chat_template(
        _messages(value), add_generation_prompt=True, tokenize=False
    )


def _cut(ids: list[int], limit: int | None, keep: Truncate) -> tuple[list[int], int]:
    if limit is None or len(ids) <= limit:
        return ids, 0
    kept = ids[-limit:] if keep == "keep_end" else ids[:limit]
    return kept, len(ids) - limit


def tokenize_pairs(
    table: pa.Table,
    tokenizer,
    max_prompt_tokens: int | None = None,
    max_answer_tokens: int | None = None,
    truncate: Truncate = "keep_end",
) -> tuple[list[TokenizedPair], TruncationStats]:
    """Token ids for every row of a dataset version table, in table order, and what was cut.

    ``table`` has the columns of ``tasks.pair.preference_table`` (prompt_id, prompt, chosen,
    rejected, format); ``tokenizer`` is a transformers tokenizer with an eos token (and a chat
    template for conversational rows).
    """
    if truncate not in TRUNCATE_MODES:
        raise ValueError(f"truncate must be one of {TRUNCATE_MODES}, got {truncate!r}")
    for name, limit in (("max_prompt_tokens", max_prompt_tokens),
                        ("max_answer_tokens", max_answer_tokens)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {limit}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; answers must end with one")
    rows = table.select(["prompt_id", "prompt", "chosen", "rejected", "format"]).to_pylist()
    prompts, chosen, rejected = [], [], []
    for row in rows:
        fmt = row["format"]
        if fmt not in ("conversational", "plain"):
            raise ValueError(f"{row['prompt_id']}: unknown format {fmt!r}")
        prompts.append(_prompt_text(row["prompt"], fmt, tokenizer))
        chosen.append(_answer_text(row["chosen"], fmt, row["prompt_id"]))
        rejected.append(_answer_text(row["rejected"], fmt, row["prompt_id"]))

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    eos = tokenizer.eos_token_id
    stats = TruncationStats()
    pairs = []
    for row, p_ids, c_ids, r_ids in zip(
        rows, encode(prompts), encode(chosen), encode(rejected), strict=True
    ):
        if not p_ids:
            raise ValueError(f"{row['prompt_id']}: the prompt encodes to no token")
        p_ids, p_cut = _cut(p_ids, max_prompt_tokens, truncate)
        c_ids, c_cut = _cut(c_ids + [eos], max_answer_tokens, "keep_start")
        r_ids, r_cut = _cut(r_ids + [eos], max_answer_tokens, "keep_start")
        stats.pairs += bool(p_cut or c_cut or r_cut)
        stats.prompts_truncated += bool(p_cut)
        stats.prompt_tokens_cut += p_cut
        stats.answers_truncated += bool(c_cut) + bool(r_cut)
        stats.answer_tokens_cut += c_cut + r_cut
        pairs.append(TokenizedPair(row["prompt_id"], p_ids, c_ids, r_ids))
    return pairs, stats


def step_pairs(step: int, n_pairs: int, size: int, seed: int) -> list[int]:
    """Indices of the ``size`` pairs of optimizer step ``step`` (0-based): epochs are seeded
    permutations laid end to end, so the data of any step is known without replaying the run
    (what makes resuming exact) and every step is full (an epoch boundary may fall inside)."""
    out, pos = [], step * size
    while len(out) < size:
        epoch, offset = divmod(pos, n_pairs)
        gen = torch.Generator().manual_seed(seed + epoch)
        take = min(size - len(out), n_pairs - offset)
        out += torch.randperm(n_pairs, generator=gen).tolist()[offset : offset + take]
        pos += take
    return out
