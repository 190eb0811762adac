"""The rejected answer's attention, both ways it is computed, equals a dense-mask reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tasks.train.attention import PairLayout, _rejected_bias, _rejected_merged

P, C, R, D = 23, 5, 7, 16


def dense_reference(q, k, v):
    """Rejected queries see the prompt and themselves (causally), never the chosen keys."""
    allowed = torch.zeros(R, P + C + R, dtype=torch.bool)
    allowed[:, :P] = True
    allowed[:, P + C :] = torch.ones(R, R, dtype=torch.bool).tril()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)


@pytest.mark.parametrize("path", ["merged", "bias"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_rejected_attention_and_gradients_match_dense_mask(path: str, kv_heads: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, R, D, generator=gen, requires_grad=True)
    k = torch.randn(1, kv_heads, P + C + R, D, generator=gen, requires_grad=True)
    v = torch.randn(1, kv_heads, P + C + R, D, generator=gen, requires_grad=True)
    rejected = slice(P + C, P + C + R)
    if path == "merged":
        out = _rejected_merged(q, k, v, P, rejected, None)
    else:
        out = _rejected_bias(q, k, v, P, rejected, dropout_p=0.0, scale=None,
                             enable_gqa=kv_heads != 4)
    ref = dense_reference(q, k, v)
    grad = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    assert got[1][:, :, P : P + C].abs().max() == 0  # the chosen keys get no gradient


@pytest.mark.parametrize(("lengths", "error"), [
    (([3], [1], []), "same rows"), (([3], [0], [2]), "at least one token")])
def test_layout_rejects_bad_lengths(lengths: tuple, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        PairLayout.of(*lengths)
