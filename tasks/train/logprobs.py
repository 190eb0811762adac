"""Summed answer log-probabilities under a causal LM, with or without a shared prompt.

``sequence_logprobs`` scores ``prompt + answer`` rows the usual way (one row per answer).
``pair_logprobs_shared`` packs ``[prompt | chosen | rejected]`` into ONE row so a long prompt
is encoded once for both answers (DESIGN.md, "Training"). The packed row's attention (the
rejected answer sees the prompt and itself, never the chosen one) is computed by
``tasks.train.attention`` from the rows' segment lengths, with fused kernels and no L x L mask;
the rejected positions restart after the prompt, so each answer sees exactly the context it
would see alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tasks.train.attention import (
    LAYOUT_KWARG,
    PairLayout,
    placeholder_mask,
    use_shared_prefix_attention,
)

Ids = Sequence[int] | Tensor
IGNORE = -100  # label of a position that scores nothing


@dataclass(frozen=True)
class AnswerLogProbs:
    """Per-answer sums, each of shape ``[B]``."""

    logps: Tensor  # sum over answer tokens of log p(token | everything before it)
    nll_sum: Tensor  # summed token NLL (= -logps); what the CE term averages
    n_tokens: Tensor  # answer length in tokens (long)


def _as_lists(batch: Sequence[Ids], name: str) -> list[list[int]]:
    rows = [row.tolist() if isinstance(row, Tensor) else list(row) for row in batch]
    if not rows:
        raise ValueError(f"{name} is empty")
    if any(len(row) == 0 for row in rows):
        # An empty prompt leaves no logit for the first answer token; an empty answer scores 0.
        raise ValueError(f"every {name} row needs at least one token")
    return rows


def _score(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor | None,
    labels: Sequence[Tensor],
    **model_kwargs: object,
) -> list[AnswerLogProbs]:
    """One forward; for each ``labels`` tensor ``[B, L]`` (token position t must predict,
    or IGNORE), the summed log-probs. Several label tensors may read the same logit."""
    scored = torch.stack([lab != IGNORE for lab in labels]).any(dim=0).any(dim=0)
    start = int(scored.nonzero()[0])
    # Only the answer region needs logits: skipping the (long) prompt saves B·P·V floats.
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=input_ids.size(1) - start,
        use_cache=False,
        **model_kwargs,
    )
    logits = out.logits.float()  # log-probs in float32 whatever the model dtype
    log_norm = logits.logsumexp(dim=-1)  # avoids a second [B, K, V] tensor from log_softmax
    results = []
    for lab in labels:
        lab = lab[:, start:]
        keep = lab != IGNORE
        picked = logits.gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        token_logps = (picked - log_norm).masked_fill(~keep, 0.0)
        logps = token_logps.sum(dim=-1)
        results.append(AnswerLogProbs(logps=logps, nll_sum=-logps, n_tokens=keep.sum(dim=-1)))
    return results


def sequence_logprobs(
    model: nn.Module, prompt_ids: Sequence[Ids], answer_ids: Sequence[Ids]
) -> AnswerLogProbs:
    """Score ``answer_ids[i]`` after ``prompt_ids[i]``: rows ``prompt + answer``, right-padded
    to the batch max, with the model's own causal + padding mask."""
    prompts, answers = _as_lists(prompt_ids, "prompt"), _as_lists(answer_ids, "answer")
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    device = next(model.parameters()).device
    width = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        n = len(p) + len(a)
        input_ids[i, :n] = torch.tensor(p + a)
        attention_mask[i, :n] = 1
        # Position t predicts token t+1: the last prompt token predicts the first answer token.
        labels[i, len(p) - 1 : n - 1] = torch.tensor(a)
    (result,) = _score(
        model, input_ids.to(device), attention_mask.to(device), None, [labels.to(device)]
    )
    return result


def pair_logprobs_unshared(
    model: nn.Module,
    prompt_ids: Sequence[Ids],
    chosen_ids: Sequence[Ids],
    rejected_ids: Sequence[Ids],
) -> tuple[AnswerLogProbs, AnswerLogProbs]:
    """Baseline layout (TRL's): one forward over ``2B`` rows, chosen rows then rejected rows."""
    prompts = list(prompt_ids)
    both = sequence_logprobs(model, prompts + prompts, list(chosen_ids) + list(rejected_ids))
    chosen, rejected = (
        AnswerLogProbs(logps=lp, nll_sum=nll, n_tokens=n)
        for lp, nll, n in zip(
            both.logps.chunk(2), both.nll_sum.chunk(2), both.n_tokens.chunk(2), strict=True
        )
    )
    return chosen, rejected


def pair_logprobs_shared(
    model: nn.Module,
    prompt_ids: Sequence[Ids],
    chosen_ids: Sequence[Ids],
    rejected_ids: Sequence[Ids],
) -> tuple[AnswerLogProbs, AnswerLogProbs]:
    """Score chosen and rejected answers from ONE packed row ``[prompt | chosen | rejected]``
    per pair (rows right-padded to the batch max); returns ``(chosen, rejected)``.

    Positions are ``0..P+C-1`` for prompt + chosen and ``P..P+R-1`` for rejected, so with
    the shared-prefix attention each answer's logits equal those of ``sequence_logprobs``. An
    ``sdpa`` model is switched to that attention (``use_shared_prefix_attention``). The
    first rejected token is predicted by the LAST PROMPT token's logit, the same logit that
    predicts the first chosen token; later rejected tokens by the preceding rejected token.
    """
    prompts = _as_lists(prompt_ids, "prompt")
    chosens, rejecteds = _as_lists(chosen_ids, "chosen"), _as_lists(rejected_ids, "rejected")
    if not len(prompts) == len(chosens) == len(rejecteds):
        raise ValueError("prompt_ids, chosen_ids and rejected_ids must have the same length")
    use_shared_prefix_attention(model)

    batch = len(prompts)
    triples = list(zip(prompts, chosens, rejecteds, strict=True))
    width = max(len(p) + len(c) + len(r) for p, c, r in triples)
    input_ids = torch.zeros(batch, width, dtype=torch.long)
    position_ids = torch.zeros_like(input_ids)  # pad positions are never attended to
    chosen_labels = torch.full_like(input_ids, IGNORE)
    rejected_labels = torch.full_like(input_ids, IGNORE)
    for i, (p, c, r) in enumerate(triples):
        n_p, n_c, n_r = len(p), len(c), len(r)
        end = n_p + n_c + n_r
        input_ids[i, :end] = torch.tensor(p + c + r)
        position_ids[i, : n_p + n_c] = torch.arange(n_p + n_c)
        position_ids[i, n_p + n_c : end] = torch.arange(n_p, n_p + n_r)  # restart after prompt
        chosen_labels[i, n_p - 1 : n_p + n_c - 1] = torch.tensor(c)
        # The last prompt token (index n_p - 1) predicts rejected[0]; rejected[j - 1], at
        # index n_p + n_c + j - 1, predicts rejected[j]. The last chosen token predicts nothing.
        rejected_labels[i, n_p - 1] = r[0]
        rejected_labels[i, n_p + n_c : end - 1] = torch.tensor(r[1:], dtype=torch.long)

    device = next(model.parameters()).device
    layout = PairLayout.of(*([len(x) for x in seg] for seg in (prompts, chosens, rejecteds)))
    chosen, rejected = _score(
        model,
        input_ids.to(device),
        placeholder_mask(batch, width, device),  # keeps transformers from building a mask
        position_ids.to(device),
        [chosen_labels.to(device), rejected_labels.to(device)],
        **{LAYOUT_KWARG: layout},
    )
    return chosen, rejected
