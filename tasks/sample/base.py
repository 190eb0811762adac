"""What every policy shares: sampling parameters, a sample, and the :class:`Policy` interface.

Kept apart from the implementations so that each of them (:mod:`tasks.sample.policies`,
:mod:`tasks.sample.offline`) imports only this module, never each other.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tasks.config import OFFLINE_POLICY as OFFLINE_MODEL  # noqa: F401 - re-exported

PolicyKind = Literal["endpoint", "vllm", "transformers", "offline"]


def policy_kind(settings: Any) -> PolicyKind:
    """Which policy the settings name, without loading it: ``policy_base_url``'s endpoint,
    vLLM's engine (``policy_model = "vllm:<name>"``), a local transformers folder, or none of
    them (the offline policy, allowed under ``offline`` only)."""
    name = str(settings.policy_model or "")
    if settings.policy_base_url:
        return "endpoint"
    if name.startswith("vllm:"):
        return "vllm"
    if name and Path(name).expanduser().is_dir():
        return "transformers"
    return "offline"


@dataclass(frozen=True)
class SamplingParams:
    """How answers are sampled. ``as_json()`` is canonical: it is part of every response id."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")

    @classmethod
    def from_settings(cls, settings: Any, seed: int = 0) -> SamplingParams:
        return cls(float(settings.temperature), float(settings.top_p),
                   int(settings.max_new_tokens), seed)

    def as_dict(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature), "top_p": float(self.top_p),
                "max_new_tokens": int(self.max_new_tokens), "seed": int(self.seed)}

    def as_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Sample:
    """One sampled answer. ``tokens``: answer tokens when the backend reports them, else None.
    ``meta``: backend notes worth recording with the row (the offline policy's style)."""

    sample_index: int
    text: str
    tokens: int | None = None
    finish_reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Policy(ABC):
    """Samples answers; every backend subclasses it. ``generate`` is the contract; the two
    hooks have defaults for backends with nothing to report or release."""

    model: str

    @abstractmethod
    async def generate(self, prompt_id: str, messages: list[dict], k: int,
                       params: SamplingParams, *,
                       indices: Collection[int] | None = None) -> list[Sample]:
        """K answers (or only ``indices`` of them: a backend that samples one by one skips
        the others, a batch backend may drop them)."""

    def drain_call_log(self) -> list[dict[str, Any]]:
        """The ``llm_calls`` rows of the calls made since the last drain (none by default)."""
        return []

    async def aclose(self) -> None:  # noqa: B027 - a hook with a default, not abstract
        """Release connections or engines (nothing by default)."""


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any JSON-able parts (never Python's salted ``hash``)."""
    blob = json.dumps(list(parts), separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") & 0x7FFFFFFF


def wanted(k: int, indices: Collection[int] | None) -> list[int]:
    return list(range(k)) if indices is None else sorted(i for i in set(indices) if 0 <= i < k)


def keep(samples: list[Sample], k: int, indices: Collection[int] | None) -> list[Sample]:
    chosen = set(wanted(k, indices))
    return [s for s in samples if s.sample_index in chosen]
