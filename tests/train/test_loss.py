"""DPO + CE loss: pinned normalisation, parity with TRL 1.16's DPOTrainer, and training."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

from tasks.train.logprobs import pair_logprobs_shared, pair_logprobs_unshared
from tasks.train.loss import LossConfig, dpo_ce_loss

LETTERS = "abcdefghijklmnopqrstuvwxyz"
METRIC_KEYS = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "loss/dpo",
    "loss/ce",
}


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per letter, built offline; TRL needs eos and pad tokens."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2} | {c: i + 3 for i, c in enumerate(LETTERS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_model(vocab: int = 32, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float()


def test_hand_computed_values() -> None:
    beta, lam = 0.15, 0.1
    pc, pr = torch.tensor([-3.0, -10.0]), torch.tensor([-5.0, -8.0])
    rc, rr = torch.tensor([-4.0, -9.0]), torch.tensor([-4.0, -9.0])
    nll, n = torch.tensor([3.0, 10.0]), torch.tensor([1, 4])
    loss, metrics = dpo_ce_loss(pc, pr, rc, rr, nll, n, LossConfig(beta=beta, ce_weight=lam))

    # margins: ((-3+4) - (-5+4)) = 2 and ((-10+9) - (-8+9)) = -2
    dpo = (-torch.nn.functional.logsigmoid(torch.tensor([beta * 2, -beta * 2]))).mean()
    ce = 13.0 / 5  # token-level mean over the micro-batch, NOT mean(3/1, 10/4) = 2.75
    assert loss.item() == pytest.approx(dpo.item() + lam * ce, abs=1e-6)
    assert metrics["loss/ce"] == pytest.approx(2.6)
    assert metrics["rewards/chosen"] == pytest.approx(beta * (1 + -1) / 2)
    assert metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["rewards/accuracies"] == 0.5
    assert metrics["logps/rejected"] == pytest.approx(-6.5)
    assert set(metrics) == METRIC_KEYS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta": 0.0},
        {"beta": -1.0},
        {"beta": float("nan")},
        {"ce_weight": -0.1},
        {"ce_weight": float("inf")},
    ],
)
def test_config_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LossConfig(**kwargs)


def test_no_chosen_tokens_is_an_error() -> None:
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="no chosen-answer tokens"):
        dpo_ce_loss(z, z, z, z, z, torch.zeros(2, dtype=torch.long))


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("layout", ["shared", "unshared"])
def test_matches_trl_dpo_trainer(tmp_path: Path, layout: str) -> None:
    """Same batch through TRL's own ``DPOTrainer.compute_loss`` (loss_type sigmoid + sft)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = char_tokenizer()
    policy = tiny_model()
    ref = copy.deepcopy(policy)  # explicit: ref_model=None would try the hub (PITFALLS.md)
    with torch.no_grad():  # move the policy off the reference so rewards are non-zero
        gen = torch.Generator().manual_seed(3)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    dataset = Dataset.from_dict(
        {
            "prompt": ["thequickbrown", "fox", "jumpsoverthelazy"],
            "chosen": ["dog", "jumps", "a"],
            "rejected": ["cat", "x", "lazydogs"],
        }
    )
    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=0.15,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 0.1],
        per_device_train_batch_size=3,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
    )
    trainer = DPOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    rows = [trainer.train_dataset[i] for i in range(len(dataset))]
    trl_loss = trainer.compute_loss(trainer.model, trainer.data_collator(rows))
    mode = "train" if trainer.model.training else "eval"
    trl_metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}
    trl_loss.backward()
    trl_grads = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad()

    # Ours, on the very token ids TRL built (EOS appended to each answer).
    prompts = [r["prompt_ids"] for r in rows]
    chosen, rejected = [r["chosen_ids"] for r in rows], [r["rejected_ids"] for r in rows]
    pair_fn = pair_logprobs_shared if layout == "shared" else pair_logprobs_unshared
    with torch.no_grad():
        ref_c, ref_r = pair_logprobs_unshared(ref, prompts, chosen, rejected)
    pol_c, pol_r = pair_fn(policy, prompts, chosen, rejected)
    loss, metrics = dpo_ce_loss(
        pol_c.logps, pol_r.logps, ref_c.logps, ref_r.logps, pol_c.nll_sum, pol_c.n_tokens
    )
    loss.backward()

    assert abs(loss.item() - trl_loss.item()) < 1e-5
    assert abs(metrics["rewards/margins"]) > 1e-3  # the comparison is not trivially at zero
    for key in METRIC_KEYS - {"loss/dpo", "loss/ce"}:  # TRL does not log the two parts
        assert metrics[key] == pytest.approx(trl_metrics[key], abs=1e-5), key
    for ours, theirs in zip(policy.parameters(), trl_grads, strict=True):
        torch.testing.assert_close(ours.grad, theirs, atol=1e-5, rtol=1e-4)


def test_optimizer_steps_lower_loss_and_move_weights() -> None:
    torch.manual_seed(0)
    policy = tiny_model(vocab=64)
    gen = torch.Generator().manual_seed(5)

    def ids(n: int) -> list[int]:
        return torch.randint(0, 64, (n,), generator=gen).tolist()

    prompts = [ids(n) for n in (12, 8, 16, 10)]
    chosen = [ids(n) for n in (3, 4, 2, 5)]
    rejected = [ids(n) for n in (4, 2, 3, 3)]
    # Reference log-probs are computed once, before training, as the pipeline stores them.
    with torch.no_grad():
        ref_c, ref_r = pair_logprobs_shared(policy.eval(), prompts, chosen, rejected)
    before = [p.detach().clone() for p in policy.parameters()]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    policy.train()
    history = []
    for _ in range(8):
        c, r = pair_logprobs_shared(policy, prompts, chosen, rejected)
        loss, metrics = dpo_ce_loss(
            c.logps, r.logps, ref_c.logps, ref_r.logps, c.nll_sum, c.n_tokens
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((loss.item(), metrics))

    first, last = history[0], history[-1]
    # Policy == reference at step 0, so the DPO part is exactly log 2.
    assert first[0] == pytest.approx(math.log(2) + 0.1 * first[1]["loss/ce"])
    assert last[0] < first[0] - 0.05
    assert last[1]["rewards/margins"] > 0 and last[1]["loss/ce"] < first[1]["loss/ce"]
    moved = [not torch.equal(b, p) for b, p in zip(before, policy.parameters(), strict=True)]
    assert all(moved)
