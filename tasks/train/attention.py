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
  rejected (causal), merged exactly by their log-sum-exps (``_PackedAttentionCPU``; its
  backward runs each block's flash backward against the merged output and log-sum-exp, the
  identity ring attention uses). It calls the CPU flash kernel's aten ops directly, as the
  public ``scaled_dot_product_attention`` returns no log-sum-exp; with attention dropout the
  CPU takes the CUDA path instead (the bias then becomes an ``[R, P + R]`` mask).

Exact, not approximate: each answer's keys, values and positions are those it sees alone, so
log-probs and gradients equal the unshared layout's (``tests/train/test_logprobs.py``,
``tests/train/test_attention.py``).

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

    def spans(self) -> list[tuple[int, slice, slice]]:
        """Per row: prompt length, the ``[prompt | chosen]`` slice and the rejected slice."""
        return [(p, slice(0, p + c), slice(p + c, p + c + r))
                for p, c, r in zip(self.prompt, self.chosen, self.rejected, strict=True)]

    @classmethod
    def of(cls, prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int]):
        return cls(tuple(prompt), tuple(chosen), tuple(rejected))


def placeholder_mask(batch: int, width: int, device: torch.device) -> Tensor:
    """A 4-D all-blocked mask that takes no memory (a zero-stride view of one element).

    Handed to the model as ``attention_mask``, it makes transformers' mask builders return it
    as-is instead of materialising one (with no mask, the restarting position ids would be
    taken for packed sequences and get an L x L mask); ``shared_prefix_attention`` never reads
    it, and any other kernel given it by mistake would produce garbage loudly rather than
    plausible but wrong scores.
    """
    return torch.zeros((), dtype=torch.bool, device=device).expand(batch, 1, width, width)


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _PackedAttentionCPU(torch.autograd.Function):
    """CPU: the whole batch of packed rows with the CPU flash kernel, ``[B, L, H, D]`` out.

    Per row: ``[prompt | chosen]`` queries in one causal call; rejected queries in two calls,
    against the prompt (full) and against themselves (causal), merged by their log-sum-exps.
    Backward gives each block's flash backward the merged output and log-sum-exp, so its
    softmax probabilities are the global ones and the block gradients are exact (the identity
    ring attention uses); dq sums over blocks. Saved: q, k, v, the output and a float32
    log-sum-exp per query, as for one plain flash call; the output is written in place, with
    no copy for slices, concatenation or layout.
    """

    @staticmethod
    def forward(ctx, query, key, value, layout: PairLayout, scale):
        batch, heads, width, _ = query.shape
        out = query.new_zeros(batch, width, heads, value.size(-1))  # padding stays 0
        lse = query.new_zeros(batch, heads, width, dtype=torch.float32)
        for i, (n_p, prefix, rejected) in enumerate(layout.spans()):
            q, k, v = query[i : i + 1], key[i : i + 1], value[i : i + 1]
            o, lse_prefix = _FLASH_CPU(q[:, :, prefix], k[:, :, prefix], v[:, :, prefix], 0.0,
                                       True, scale=scale)
            out[i, prefix], lse[i, :, prefix] = o[0].transpose(0, 1), lse_prefix[0]
            q_r = q[:, :, rejected]
            o1, lse1 = _FLASH_CPU(q_r, k[:, :, :n_p], v[:, :, :n_p], 0.0, False, scale=scale)
            o2, lse2 = _FLASH_CPU(q_r, k[:, :, rejected], v[:, :, rejected], 0.0, True,
                                  scale=scale)
            both = torch.logaddexp(lse1, lse2)
            o = (o1.float() * (lse1 - both).exp().unsqueeze(-1)
                 + o2.float() * (lse2 - both).exp().unsqueeze(-1))
            out[i, rejected], lse[i, :, rejected] = o[0].transpose(0, 1), both[0]
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.layout, ctx.scale = layout, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse = ctx.saved_tensors
        grads = [torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)]
        grad_out, out = grad_out.transpose(1, 2), out.transpose(1, 2)  # [B, H, L, D] views

        def block(i: int, rows: slice, keys: slice, causal: bool) -> None:
            dq, dk, dv = _FLASH_CPU_BACKWARD(
                grad_out[i : i + 1, :, rows], query[i : i + 1, :, rows],
                key[i : i + 1, :, keys], value[i : i + 1, :, keys], out[i : i + 1, :, rows],
                lse[i : i + 1, :, rows], 0.0, causal, scale=ctx.scale)
            for grad, part, span in zip(grads, (dq, dk, dv), (rows, keys, keys), strict=True):
                grad[i : i + 1, :, span] += part

        for i, (n_p, prefix, rejected) in enumerate(ctx.layout.spans()):
            block(i, prefix, prefix, True)
            block(i, rejected, slice(0, n_p), False)
            block(i, rejected, rejected, True)
        return *grads, None, None


def _packed_attention_sdpa(query: Tensor, key: Tensor, value: Tensor, layout: PairLayout,
                           **sdpa: object) -> Tensor:
    """CUDA (and CPU with attention dropout): per row, ``[prompt | chosen]`` causally, then the
    rejected queries against a copy of the prompt's and their own keys with PyTorch's
    bottom-right causal bias (flash or memory-efficient kernel on CUDA; on CPU the bias
    becomes an ``[R, P + R]`` mask)."""
    batch, heads, width, _ = query.shape
    rows = []
    for i, (n_p, prefix, rejected) in enumerate(layout.spans()):
        q, k, v = query[i : i + 1], key[i : i + 1], value[i : i + 1]
        parts = [F.scaled_dot_product_attention(q[:, :, prefix], k[:, :, prefix],
                                                v[:, :, prefix], is_causal=True, **sdpa)]
        k_r = torch.cat([k[:, :, :n_p], k[:, :, rejected]], dim=2)
        v_r = torch.cat([v[:, :, :n_p], v[:, :, rejected]], dim=2)
        bias = causal_lower_right(rejected.stop - rejected.start, k_r.size(2))
        parts.append(F.scaled_dot_product_attention(q[:, :, rejected], k_r, v_r, attn_mask=bias,
                                                    **sdpa))
        if rejected.stop < width:  # padding: attends to nothing and is attended by nothing
            parts.append(query.new_zeros(1, heads, width - rejected.stop, value.size(-1)))
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous()


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
    batch, heads = query.shape[:2]
    if batch != len(layout.prompt):
        raise ValueError(f"layout describes {len(layout.prompt)} rows, the batch has {batch}")
    if not query.is_cuda and not dropout:
        return _PackedAttentionCPU.apply(query, key, value, layout, scaling), None
    sdpa = {"dropout_p": dropout, "scale": scaling, "enable_gqa": key.size(1) != heads}
    return _packed_attention_sdpa(query, key, value, layout, **sdpa), None


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
