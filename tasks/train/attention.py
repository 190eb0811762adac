"""Shared-prefix attention: one packed row ``[prompt | chosen | rejected]`` per pair, no L x L mask.

Inside a packed row the chosen answer attends causally over ``[prompt | chosen]`` and the
rejected answer over the whole prompt plus itself, causally, never the chosen answer. Both are
computed with fused attention kernels and no mask in memory, per row:

- queries ``[prompt | chosen]`` against the same keys: ``scaled_dot_product_attention`` with
  ``is_causal=True``;
- rejected queries against the keys ``[prompt | rejected]``, bottom-right-aligned causal
  (query j sees the whole prompt and rejected tokens 0..j). On CUDA: PyTorch's
  ``causal_lower_right`` bias, which runs the flash or memory-efficient kernel. On CPU, whose
  fused kernel has no such variant: two flash calls, rejected x prompt (full) and rejected x
  rejected (causal), merged exactly by their log-sum-exps (``_MergedAttention``; its backward
  runs each block's flash backward against the merged output and log-sum-exp, the same
  identity ring attention uses).

Exact, not approximate: each answer's keys, values and positions are those it sees alone, so
log-probs and gradients equal the unshared layout's (``tests/train/test_logprobs.py``).

It is plugged in through transformers' registries under ``SHARED_PREFIX_ATTENTION``, so every
model family whose attention goes through ``ALL_ATTENTION_FUNCTIONS`` (Llama, Qwen2, Mistral,
...) uses it. A call without a ``shared_prefix_layout`` keyword is plain ``sdpa`` (its mask is
built by ``sdpa_mask``): a model switched to this implementation behaves as before for
everything else (plain scoring, generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

SHARED_PREFIX_ATTENTION = "longreward_shared_prefix"
LAYOUT_KWARG = "shared_prefix_layout"


@dataclass(frozen=True)
class PairLayout:
    """Segment lengths of each packed row: ``prompt[i] + chosen[i] + rejected[i]`` tokens,
    then right padding up to the batch width."""

    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    def __post_init__(self) -> None:
        if not len(self.prompt) == len(self.chosen) == len(self.rejected):
            raise ValueError("prompt, chosen and rejected lengths must describe the same rows")
        if min((*self.prompt, *self.chosen, *self.rejected), default=0) < 1:
            raise ValueError("every segment needs at least one token")

    @classmethod
    def of(cls, prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int]):
        return cls(tuple(prompt), tuple(chosen), tuple(rejected))


def placeholder_mask(batch: int, width: int, device: torch.device) -> Tensor:
    """A 4-D all-blocked mask that takes no memory (a zero-stride view of one element).

    Handed to the model as ``attention_mask``, it makes transformers' mask builders return it
    as-is instead of materialising a mask; ``shared_prefix_attention`` never reads it, and any
    other kernel given it by mistake would produce garbage loudly rather than wrong scores.
    """
    return torch.zeros((), dtype=torch.bool, device=device).expand(batch, 1, width, width)


class _MergedAttention(torch.autograd.Function):
    """CPU: queries attend fully to ``(k_full, v_full)`` and causally to ``(k_causal,
    v_causal)`` (a square block), as one softmax over both key sets.

    Forward merges the two flash results by their log-sum-exps. Backward gives each block's
    flash backward the merged output and log-sum-exp: its softmax probabilities are then the
    global ones, so the block gradients are exact and dq is their sum. Saves q, the key/value
    views and the merged output: nothing of size queries x keys.
    """

    @staticmethod
    def forward(ctx, q, k_full, v_full, k_causal, v_causal, scale):
        out1, lse1 = _FLASH_CPU(q, k_full, v_full, 0.0, False, scale=scale)
        out2, lse2 = _FLASH_CPU(q, k_causal, v_causal, 0.0, True, scale=scale)
        lse = torch.logaddexp(lse1, lse2)  # float32, [B, H, Q]
        out = (out1.float() * (lse1 - lse).exp().unsqueeze(-1)
               + out2.float() * (lse2 - lse).exp().unsqueeze(-1)).to(q.dtype)
        ctx.save_for_backward(q, k_full, v_full, k_causal, v_causal, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k_full, v_full, k_causal, v_causal, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        dq1, dk1, dv1 = _FLASH_CPU_BACKWARD(grad_out, q, k_full, v_full, out, lse, 0.0, False,
                                            scale=ctx.scale)
        dq2, dk2, dv2 = _FLASH_CPU_BACKWARD(grad_out, q, k_causal, v_causal, out, lse, 0.0,
                                            True, scale=ctx.scale)
        return dq1 + dq2, dk1, dv1, dk2, dv2, None


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _rejected_attention(q: Tensor, k: Tensor, v: Tensor, n_prompt: int, rejected: slice,
                        **sdpa: object) -> Tensor:
    """Rejected queries ``q`` against the row's prompt keys and their own, causally."""
    if not q.is_cuda and not sdpa["dropout_p"]:
        return _rejected_merged(q, k, v, n_prompt, rejected, sdpa["scale"])
    return _rejected_bias(q, k, v, n_prompt, rejected, **sdpa)


def _rejected_merged(q: Tensor, k: Tensor, v: Tensor, n_prompt: int, rejected: slice,
                     scale: float | None) -> Tensor:
    """CPU: two flash calls on views of the row's keys, merged (no copy, no mask)."""
    return _MergedAttention.apply(q, k[:, :, :n_prompt], v[:, :, :n_prompt], k[:, :, rejected],
                                  v[:, :, rejected], scale)


def _rejected_bias(q: Tensor, k: Tensor, v: Tensor, n_prompt: int, rejected: slice,
                   **sdpa: object) -> Tensor:
    """CUDA (and CPU with attention dropout, where the bias becomes an ``[R, P + R]`` mask):
    one call on a copy of the prompt's and the rejected answer's keys."""
    k_r = torch.cat([k[:, :, :n_prompt], k[:, :, rejected]], dim=2)
    v_r = torch.cat([v[:, :, :n_prompt], v[:, :, rejected]], dim=2)
    bias = causal_lower_right(q.size(2), k_r.size(2))
    return F.scaled_dot_product_attention(q, k_r, v_r, attn_mask=bias, **sdpa)


def shared_prefix_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """transformers attention function (``[B, H, L, D]`` in, ``[B, L, H, D]`` out)."""
    layout: PairLayout | None = kwargs.pop(LAYOUT_KWARG, None)
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    window = kwargs.get("sliding_window") or None
    if window is not None and window < query.size(2):
        raise NotImplementedError("shared-prefix attention does not implement sliding windows")
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("shared-prefix attention supports plain softmax attention only")
    batch, heads, width, _ = query.shape
    if batch != len(layout.prompt):
        raise ValueError(f"layout describes {len(layout.prompt)} rows, the batch has {batch}")
    sdpa = {"dropout_p": dropout, "scale": scaling, "enable_gqa": key.size(1) != heads}
    rows = []
    for i in range(batch):
        n_p, n_c, n_r = layout.prompt[i], layout.chosen[i], layout.rejected[i]
        q, k, v = query[i : i + 1], key[i : i + 1], value[i : i + 1]
        n_pc, end = n_p + n_c, n_p + n_c + n_r
        parts = [F.scaled_dot_product_attention(q[:, :, :n_pc], k[:, :, :n_pc], v[:, :, :n_pc],
                                                is_causal=True, **sdpa)]
        parts.append(_rejected_attention(q[:, :, n_pc:end], k, v, n_p, slice(n_pc, end),
                                         **sdpa))
        if end < width:  # padding: attends to nothing and is attended by nothing
            parts.append(query.new_zeros(1, heads, width - end, value.size(-1)))
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``attn_implementation=SHARED_PREFIX_ATTENTION`` available to every model."""
    AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)
    AttentionMaskInterface.register(SHARED_PREFIX_ATTENTION, sdpa_mask)


def use_shared_prefix_attention(model: nn.Module) -> None:
    """Switch an ``sdpa`` model to the shared-prefix implementation (``sdpa`` for any other
    call, so nothing else changes); a model already switched is left alone. Other kernels
    (eager, flash, flex) are refused: they would change the numerics or ignore the layout."""
    current = getattr(model.config, "_attn_implementation", None)
    if current == SHARED_PREFIX_ATTENTION:
        return
    if current != "sdpa":
        raise ValueError(f"shared-prefix scoring needs attn_implementation 'sdpa' or "
                         f"{SHARED_PREFIX_ATTENTION!r}, the model has {current!r}")
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(SHARED_PREFIX_ATTENTION)
    else:  # a wrapper (DeepSpeed engine) exposing only the config
        model.config._attn_implementation = SHARED_PREFIX_ATTENTION


register()
