"""LongReward's training objective: L = L_DPO(sigmoid) + λ·L_CE on the chosen answer.

Matches TRL 1.16's ``DPOTrainer`` with ``loss_type=["sigmoid", "sft"]``,
``loss_weights=[1.0, λ]`` (``trl/trainer/dpo_trainer.py``, ``_compute_loss``); the parity
test in ``tests/train/test_loss.py`` drives that trainer and checks agreement to 1e-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossConfig:
    """Hyper-parameters of the DPO + CE loss (defaults from the LongReward paper)."""

    beta: float = field(
        default=0.15,
        metadata={"help": "DPO temperature β: scales the policy/reference log-ratio margin."},
    )
    ce_weight: float = field(
        default=0.1,
        metadata={"help": "λ, weight of the cross-entropy term on the chosen answer (0: off)."},
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta!r}")
        if not (math.isfinite(self.ce_weight) and self.ce_weight >= 0):
            raise ValueError(f"ce_weight must be a finite number >= 0, got {self.ce_weight!r}")


def dpo_ce_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_nll_sum: Tensor,
    chosen_token_count: Tensor,
    config: LossConfig | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """DPO (sigmoid) + λ·CE for one micro-batch of ``B`` preference pairs.

    Every input has shape ``[B]``; log-probabilities are summed over each answer's tokens
    (the prompt is never scored). ``chosen_nll_sum`` is the summed token NLL of each chosen
    answer under the policy and ``chosen_token_count`` its number of tokens.

    - ``loss/dpo`` = mean over pairs of ``-logsigmoid(β·((πc - rc) - (πr - rr)))``.
    - ``loss/ce`` = ``sum(chosen_nll_sum) / sum(chosen_token_count)``: the mean NLL over all
      chosen-answer tokens of the micro-batch, so a long chosen answer weighs more than a
      short one (token-level, not per-sequence, averaging). This is TRL 1.16's ``"sft"``
      term: ``-chosen_per_token_logps[chosen_mask.bool()].mean()``. With gradient
      accumulation or data parallelism, each micro-batch is normalised on its own tokens,
      as in TRL; there is no global token count.
    - ``loss`` = ``loss/dpo + λ·loss/ce``.

    Metrics (python floats, means over the micro-batch, as TRL logs them):
    ``rewards/chosen`` = β·(πc - rc), ``rewards/rejected`` = β·(πr - rr),
    ``rewards/margins``, ``rewards/accuracies`` (fraction with chosen reward > rejected),
    ``logps/chosen``, ``logps/rejected`` (policy), ``loss/dpo``, ``loss/ce``.
    """
    config = config or LossConfig()
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    dpo = -F.logsigmoid(config.beta * (chosen_logratios - rejected_logratios)).mean()

    n_tokens = chosen_token_count.sum()
    if n_tokens.item() <= 0:
        # An empty chosen answer has nothing to imitate; fail loudly rather than divide by zero.
        raise ValueError("the micro-batch has no chosen-answer tokens")
    # Casting the count keeps the division in the NLL's (float) dtype.
    ce = chosen_nll_sum.sum() / n_tokens.to(chosen_nll_sum.dtype)
    loss = dpo + config.ce_weight * ce

    with torch.no_grad():
        chosen_rewards = config.beta * chosen_logratios.detach()
        rejected_rewards = config.beta * rejected_logratios.detach()
        metrics = {
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            "logps/chosen": policy_chosen_logps.detach().mean().item(),
            "logps/rejected": policy_rejected_logps.detach().mean().item(),
            "loss/dpo": dpo.detach().item(),
            "loss/ce": ce.detach().item(),
        }
    return loss, metrics
