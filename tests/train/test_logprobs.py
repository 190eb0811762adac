"""Shared-prefix scoring equals plain per-answer scoring, on tiny config-built models."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, Qwen2Config

from tasks.train.logprobs import (
    pair_logprobs_shared,
    pair_logprobs_unshared,
    sequence_logprobs,
    shared_prefix_mask,
)
from tasks.train.loss import dpo_ce_loss

VOCAB = 256
CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config}


def tiny_model(family: str = "llama", attn: str = "sdpa", seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = CONFIGS[family](
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).float().eval()


def random_pairs(
    lengths: list[tuple[int, int, int]], seed: int = 1
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """(prompts, chosen, rejected) of the given (P, C, R) lengths."""
    gen = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(0, VOCAB, (n,), generator=gen).tolist()

    prompts, chosen, rejected = zip(*[(ids(p), ids(c), ids(r)) for p, c, r in lengths], strict=True)
    return list(prompts), list(chosen), list(rejected)


# Ragged on purpose: rejected longer and shorter than chosen, one-token answers, and rows
# of different total length so the packed batch is padded.
LENGTHS = [(7, 2, 4), (3, 5, 1), (12, 1, 6), (5, 3, 3)]


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prefix_matches_separate_rows(family: str, attn: str) -> None:
    model = tiny_model(family, attn)
    prompts, chosen, rejected = random_pairs(LENGTHS)
    with torch.no_grad():
        shared_c, shared_r = pair_logprobs_shared(model, prompts, chosen, rejected)
        alone_c = sequence_logprobs(model, prompts, chosen)
        alone_r = sequence_logprobs(model, prompts, rejected)
        # One pair at a time, no padding at all: the ground truth for both layouts.
        single = [
            sequence_logprobs(model, [p], [a]).logps.item()
            for p, a in zip(prompts + prompts, chosen + rejected, strict=True)
        ]

    torch.testing.assert_close(shared_c.logps, alone_c.logps, atol=1e-4, rtol=0)
    torch.testing.assert_close(shared_r.logps, alone_r.logps, atol=1e-4, rtol=0)
    both = torch.cat([shared_c.logps, shared_r.logps])
    torch.testing.assert_close(both, torch.tensor(single), atol=1e-4, rtol=0)
    assert shared_c.n_tokens.tolist() == [c for _, c, _ in LENGTHS]
    assert shared_r.n_tokens.tolist() == [r for _, _, r in LENGTHS]
    torch.testing.assert_close(shared_c.nll_sum, -shared_c.logps)
    assert (shared_c.logps < 0).all() and (shared_r.logps < 0).all()


def test_rejected_score_ignores_chosen_tokens() -> None:
    """The rejected answer must not attend to the chosen one: swapping chosen changes nothing."""
    model = tiny_model()
    prompts, chosen, rejected = random_pairs(LENGTHS[:2])
    other_chosen = [[(t + 17) % VOCAB for t in c] for c in chosen]
    with torch.no_grad():
        _, r1 = pair_logprobs_shared(model, prompts, chosen, rejected)
        c2, r2 = pair_logprobs_shared(model, prompts, other_chosen, rejected)
        c1, _ = pair_logprobs_shared(model, prompts, chosen, rejected)
    torch.testing.assert_close(r1.logps, r2.logps, atol=1e-5, rtol=0)
    assert not torch.allclose(c1.logps, c2.logps)


def test_shared_prefix_gradients_match_unshared() -> None:
    """Training through the packed row gives the same gradients as the two-row layout."""
    prompts, chosen, rejected = random_pairs(LENGTHS)
    model_a = tiny_model().train()
    model_b = copy.deepcopy(model_a)
    ref = torch.zeros(len(prompts))

    def loss_of(model: PreTrainedModel, pair_fn) -> torch.Tensor:
        c, r = pair_fn(model, prompts, chosen, rejected)
        return dpo_ce_loss(c.logps, r.logps, ref, ref, c.nll_sum, c.n_tokens)[0]

    loss_a = loss_of(model_a, pair_logprobs_shared)
    loss_b = loss_of(model_b, pair_logprobs_unshared)
    loss_a.backward()
    loss_b.backward()
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=0)
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_mask_layout() -> None:
    # One row: prompt of 2, chosen of 2, rejected of 1, one pad.
    segments = torch.tensor([[0, 0, 1, 1, 2, 3]])
    allowed = shared_prefix_mask(segments, torch.float32)[0, 0] == 0
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],  # rejected: prompt + itself, not chosen
            [0, 0, 0, 0, 0, 1],  # pad: only itself, so no all -inf softmax row
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)
    assert shared_prefix_mask(segments, torch.float32).shape == (1, 1, 6, 6)


def test_shared_prefix_refuses_attention_without_custom_masks() -> None:
    model = tiny_model()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation"):
        pair_logprobs_shared(model, [[1, 2]], [[3]], [[4]])


@pytest.mark.parametrize(
    ("prompts", "answers"),
    [([[]], [[1]]), ([[1]], [[]]), ([], []), ([[1], [2]], [[3]])],
)
def test_bad_inputs_are_refused(prompts: list, answers: list) -> None:
    with pytest.raises(ValueError):
        sequence_logprobs(tiny_model(), prompts, answers)
