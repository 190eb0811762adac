"""Summed answer log-probabilities under a causal LM, with or without a shared prompt.

``sequence_logprobs`` scores ``prompt + answer`` rows the usual way (one row per answer).
``pair_logprobs_shared`` packs ``[prompt | chosen | rejected]`` into ONE row so a long prompt
is encoded once for both answers (DESIGN.md, "Training"): an explicit 4-D additive mask hides
the chosen tokens from the rejected ones, and the rejected positions restart after the prompt,
so each answer sees exactly the context it would see alone.

The custom mask needs ``attn_implementation`` "sdpa" (transformers' default on CPU and the one
used in tests and bench) or "eager": transformers 5.x ``create_causal_mask`` returns any 4-D
mask as-is (``masking_utils._preprocess_mask_arguments``) and both kernels add it to the
attention scores. Flash attention ignores such masks and flex attention wants a ``BlockMask``,
so they are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Ids = Sequence[int] | Tensor
IGNORE = -100  # label of a position that scores nothing
_PROMPT, _CHOSEN, _REJECTED, _PAD = 0, 1, 2, 3  # segment ids inside a packed row
MASKABLE_ATTENTION = ("sdpa", "eager")


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


def shared_prefix_mask(segments: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive mask ``[B, 1, L, L]`` (0 = attend, -inf = blocked) for packed rows whose
    ``segments`` ``[B, L]`` mark prompt / chosen / rejected / pad tokens.

    Index-causal everywhere; a query sees prompt keys plus keys of its own segment, so the
    rejected answer never sees the chosen one. Pad queries see only themselves, which keeps
    every softmax row finite (an all -inf row would give NaN, and NaN·0 still poisons grads).
    """
    width = segments.size(1)
    idx = torch.arange(width, device=segments.device)
    causal = idx[None, :] <= idx[:, None]  # [q, k]
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    allowed = causal & ((seg_k == _PROMPT) | (seg_k == seg_q))
    itself = torch.eye(width, dtype=torch.bool, device=idx.device)
    allowed = torch.where(seg_q == _PAD, itself, allowed)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, float("-inf")).unsqueeze(1)


def pair_logprobs_shared(
    model: nn.Module,
    prompt_ids: Sequence[Ids],
    chosen_ids: Sequence[Ids],
    rejected_ids: Sequence[Ids],
) -> tuple[AnswerLogProbs, AnswerLogProbs]:
    """Score chosen and rejected answers from ONE packed row ``[prompt | chosen | rejected]``
    per pair (rows right-padded to the batch max); returns ``(chosen, rejected)``.

    Positions are ``0..P+C-1`` for prompt + chosen and ``P..P+R-1`` for rejected, so with
    ``shared_prefix_mask`` each answer's logits equal those of ``sequence_logprobs``. The
    first rejected token is predicted by the LAST PROMPT token's logit, the same logit that
    predicts the first chosen token; later rejected tokens by the preceding rejected token.
    """
    prompts = _as_lists(prompt_ids, "prompt")
    chosens, rejecteds = _as_lists(chosen_ids, "chosen"), _as_lists(rejected_ids, "rejected")
    if not len(prompts) == len(chosens) == len(rejecteds):
        raise ValueError("prompt_ids, chosen_ids and rejected_ids must have the same length")
    attn = getattr(model.config, "_attn_implementation", None)
    if attn not in MASKABLE_ATTENTION:
        raise ValueError(f"shared-prefix scoring needs attn_implementation in {MASKABLE_ATTENTION}")

    batch = len(prompts)
    triples = list(zip(prompts, chosens, rejecteds, strict=True))
    width = max(len(p) + len(c) + len(r) for p, c, r in triples)
    input_ids = torch.zeros(batch, width, dtype=torch.long)
    position_ids = torch.zeros_like(input_ids)  # pad positions are never attended to
    segments = torch.full_like(input_ids, _PAD)
    chosen_labels = torch.full_like(input_ids, IGNORE)
    rejected_labels = torch.full_like(input_ids, IGNORE)
    for i, (p, c, r) in enumerate(triples):
        n_p, n_c, n_r = len(p), len(c), len(r)
        end = n_p + n_c + n_r
        input_ids[i, :end] = torch.tensor(p + c + r)
        position_ids[i, : n_p + n_c] = torch.arange(n_p + n_c)
        position_ids[i, n_p + n_c : end] = torch.arange(n_p, n_p + n_r)  # restart after prompt
        segments[i, :n_p] = _PROMPT
        segments[i, n_p : n_p + n_c] = _CHOSEN
        segments[i, n_p + n_c : end] = _REJECTED
        chosen_labels[i, n_p - 1 : n_p + n_c - 1] = torch.tensor(c)
        # The last prompt token (index n_p - 1) predicts rejected[0]; rejected[j - 1], at
        # index n_p + n_c + j - 1, predicts rejected[j]. The last chosen token predicts nothing.
        rejected_labels[i, n_p - 1] = r[0]
        rejected_labels[i, n_p + n_c : end - 1] = torch.tensor(r[1:], dtype=torch.long)

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    mask = shared_prefix_mask(segments.to(device), dtype)
    chosen, rejected = _score(
        model,
        input_ids.to(device),
        mask,
        position_ids.to(device),
        [chosen_labels.to(device), rejected_labels.to(device)],
    )
    return chosen, rejected
