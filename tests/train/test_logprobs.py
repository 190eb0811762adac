"""Shared-prefix scoring equals plain per-answer scoring, on tiny config-built models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, Qwen2Config

from tasks.train.attention import SHARED_PREFIX_ATTENTION
from tasks.train.logprobs import pair_logprobs_shared, pair_logprobs_unshared, sequence_logprobs
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
@pytest.mark.parametrize("attn", ["sdpa", SHARED_PREFIX_ATTENTION])
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


@pytest.mark.parametrize(("family", "checkpointing"),
                         [("llama", False), ("qwen2", False), ("llama", True)])
def test_shared_prefix_gradients_match_unshared(family: str, checkpointing: bool) -> None:
    """Training through the packed rows (several pairs, padded) gives the two-row gradients,
    also when gradient checkpointing recomputes the layers (and their attention) in backward."""
    prompts, chosen, rejected = random_pairs(LENGTHS)
    model_a = tiny_model(family).train()
    model_b = copy.deepcopy(model_a)
    if checkpointing:
        enable = getattr(model_a, "activation_checkpointing_enable", None)  # transformers 5
        (enable or model_a.gradient_checkpointing_enable)({"use_reentrant": False})
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


class _LargestTensor(TorchDispatchMode):
    """Records the largest storage (bytes) any op returns, forward and backward alike."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_no_tensor_grows_with_the_square_of_the_row(family: str) -> None:
    """Forward and backward of long packed rows never build a width x width mask or score
    matrix: the largest tensor is the MLP activation, linear in the row length."""
    prompts, chosen, rejected = random_pairs([(600, 4, 6), (580, 9, 3)])
    width, mlp_bytes = 610, 2 * 610 * 64 * 4  # [2, width, intermediate 64] float32
    model = tiny_model(family).train()
    model.config.max_position_embeddings = 1024
    with _LargestTensor() as spy:
        c, r = pair_logprobs_shared(model, prompts, chosen, rejected)
        (c.logps.sum() + r.logps.sum()).backward()
    assert mlp_bytes <= spy.largest < width * width * 4 / 2  # half of ONE fp32 score matrix


def test_switched_model_scores_plain_rows_as_sdpa() -> None:
    """After shared-prefix scoring, the same model scores padded plain rows as before."""
    model = tiny_model()
    prompts, chosen, rejected = random_pairs(LENGTHS)
    with torch.no_grad():
        before = sequence_logprobs(model, prompts, chosen).logps
        pair_logprobs_shared(model, prompts, chosen, rejected)
        assert model.config._attn_implementation == SHARED_PREFIX_ATTENTION
        after = sequence_logprobs(model, prompts, chosen).logps
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "flash_attention_2"])
def test_shared_prefix_refuses_other_attention(attn: str) -> None:
    model = tiny_model()
    model.config._attn_implementation = attn
    with pytest.raises(ValueError, match="attn_implementation"):
        pair_logprobs_shared(model, [[1, 2]], [[3]], [[4]])


@pytest.mark.parametrize(
    ("prompts", "answers"),
    [([[]], [[1]]), ([[1]], [[]]), ([], []), ([[1], [2]], [[3]])],
)
def test_bad_inputs_are_refused(prompts: list, answers: list) -> None:
    with pytest.raises(ValueError):
        sequence_logprobs(tiny_model(), prompts, answers)
