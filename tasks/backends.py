"""What each stage needs configured before it may start, checked before any work.

The offline stand-ins (judge, policy, the local MiniLM embedder, a tiny random base model) are
used only under ``offline = true``; every row they make is labelled with their model name.
Without it, a stage whose backend is not configured stops here, naming the setting, instead of
quietly publishing stand-in scores or training a random model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from tasks.config import ConfigError, Settings
from tasks.sample.base import policy_kind

Stage = Literal["sample", "score", "embed", "train"]
_HINT = " (or set offline = true to use the offline stand-ins, as the demo does)"


def missing_settings(settings: Settings, stages: Iterable[Stage]) -> list[str]:
    """One line per unconfigured backend the ``stages`` need; empty when all are set. An
    endpoint needs its model name even under ``offline`` (stand-ins replace only what is
    wholly unset, and the validator has already named them)."""
    problems: list[str] = []
    wanted = set(stages)
    if "sample" in wanted:
        problems += _policy(settings)
    if "score" in wanted:
        problems += _judge(settings)
    if wanted & {"score", "embed"}:
        problems += _embeddings(settings)
    if "train" in wanted and not settings.base_model and not settings.offline:
        problems.append("base_model is not set: the model to train (a folder or hub name)")
    return problems


def require_backends(settings: Settings, *stages: Stage) -> None:
    """Raise :class:`ConfigError` naming every missing setting the ``stages`` need."""
    problems = missing_settings(settings, stages)
    if problems:
        raise ConfigError("; ".join(problems) + _HINT)


def _policy(settings: Settings) -> list[str]:
    kind, name = policy_kind(settings), settings.policy_model
    if kind == "endpoint":
        return [] if name else ["policy_model is not set: the model name the policy endpoint "
                                f"({settings.policy_base_url}) serves"]
    if kind != "offline" or settings.offline:
        return []
    if name:
        return [f"policy_base_url is not set and policy_model {name!r} is neither a local "
                "model folder nor vllm:<name>"]
    return ["policy_base_url and policy_model are not set: the policy that samples answers"]


def _judge(settings: Settings) -> list[str]:
    if not settings.judge_base_url:
        return [] if settings.offline else [
            "judge_base_url is not set: the judge's OpenAI-compatible endpoint"]
    if not settings.judge_model:
        return [f"judge_model is not set: the model name {settings.judge_base_url} serves"]
    return []


def _embeddings(settings: Settings) -> list[str]:
    if not settings.embeddings_model:
        where = (f"the model {settings.embeddings_base_url} serves"
                 if settings.embeddings_base_url else
                 "a sentence-transformers name or folder (all-MiniLM-L6-v2 ships offline)")
        return [f"embeddings_model is not set: {where}"]
    return []
