"""Packed-row attention, both ways it is computed, equals a dense-mask reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tasks.train.attention import PairLayout, _packed_attention_sdpa, _PackedAttentionCPU

LAYOUT = PairLayout.of([23, 9], [5, 1], [7, 3])  # row 2 is padded: 13 tokens of 35
WIDTH, HEADS, D = 35, 4, 16


def dense_reference(q, k, v):
    """Chosen sees prompt + itself, rejected sees prompt + itself (causally); pads see
    nothing (their output is 0)."""
    allowed = torch.zeros(len(LAYOUT.prompt), 1, WIDTH, WIDTH, dtype=torch.bool)
    causal = torch.ones(WIDTH, WIDTH, dtype=torch.bool).tril()
    for i, (n_p, prefix, rejected) in enumerate(LAYOUT.spans()):
        allowed[i, 0, prefix, prefix] = causal[prefix, prefix]
        allowed[i, 0, rejected, :n_p] = True
        allowed[i, 0, rejected, rejected] = causal[: rejected.stop - rejected.start,
                                                   : rejected.stop - rejected.start]
    pad = ~allowed.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | pad, enable_gqa=True)
    return out.masked_fill(pad, 0.0).transpose(1, 2)


@pytest.mark.parametrize("path", ["cpu_flash", "sdpa"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_attention_and_gradients_match_dense_mask(path: str, kv_heads: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, HEADS, WIDTH, D, generator=gen, requires_grad=True)
    k = torch.randn(2, kv_heads, WIDTH, D, generator=gen, requires_grad=True)
    v = torch.randn(2, kv_heads, WIDTH, D, generator=gen, requires_grad=True)
    if path == "cpu_flash":
        out = _PackedAttentionCPU.apply(q, k, v, LAYOUT, None)
    else:
        out = _packed_attention_sdpa(q, k, v, LAYOUT, dropout_p=0.0, scale=None,
                                     enable_gqa=kv_heads != HEADS)
    ref = dense_reference(q, k, v)
    grad = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize(("lengths", "error"), [
    (([3], [1], []), "same rows"), (([3], [0], [2]), "at least one token")])
def test_layout_rejects_bad_lengths(lengths: tuple, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        PairLayout.of(*lengths)
