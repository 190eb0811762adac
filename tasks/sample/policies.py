"""Policies: what samples K candidate answers for one prompt.

One small interface (:class:`Policy`) and four implementations:

- :class:`EndpointPolicy`: any OpenAI-compatible server (OpenAI, vLLM's server) through
  :class:`tasks.llm.LLMClient`: K concurrent calls, cached and accounted per call.
- :class:`TransformersPolicy`: a local Hugging Face causal LM (a tiny one runs on CPU in tests).
- :class:`VLLMPolicy`: vLLM's offline engine on a GPU machine.
- :class:`OfflinePolicy`: the demo/CI stand-in, which is *not a language model* (extractive
  answers of deliberately varied quality; its docstring says exactly what it approximates).

Every policy takes the seed from :class:`SamplingParams` and mixes in the prompt id (and the
sample index where samples are drawn one by one), so a rerun reproduces its samples where the
backend allows it and K samples of one prompt are K different requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.backends import require_backends
from tasks.config import Settings
from tasks.llm.client import LLMClient
from tasks.sample.base import (  # noqa: F401 - re-exported: the names callers import from here
    OFFLINE_MODEL,
    Policy,
    Sample,
    SamplingParams,
    derive_seed,
    keep,
    policy_kind,
    wanted,
)
from tasks.sample.offline import OfflinePolicy

if TYPE_CHECKING:
    from tasks.llm.batch import BatchCaller

log = logging.getLogger(__name__)

# -- an OpenAI-compatible endpoint -------------------------------------------------------------


class EndpointPolicy(Policy):
    """K separate chat calls, concurrently; call i carries ``sample_index=i`` and its own seed,
    so the K samples are K distinct cache keys (and a rerun replays them from the cache).
    ``client`` is an :class:`LLMClient` or, to pay through the Batch API, a
    :class:`~tasks.llm.batch.BatchCaller` (the same requests, hence the same cache keys)."""

    def __init__(self, client: LLMClient | BatchCaller):
        self.client = client
        self.model = client.model

    async def generate(self, prompt_id: str, messages: list[dict], k: int,
                       params: SamplingParams, *,
                       indices: Collection[int] | None = None) -> list[Sample]:
        chosen = wanted(k, indices)
        results = await asyncio.gather(*(
            self.client.chat(messages, temperature=params.temperature, top_p=params.top_p,
                             max_tokens=params.max_new_tokens,
                             seed=derive_seed(params.seed, prompt_id, i), sample_index=i)
            for i in chosen))
        return [Sample(i, r.text, r.tokens_out, r.finish_reason)
                for i, r in zip(chosen, results, strict=True)]

    def drain_call_log(self) -> list[dict[str, Any]]:
        """The ``llm_calls`` rows of the calls made so far (handed over once)."""
        return self.client.drain_call_log()

    async def aclose(self) -> None:
        await self.client.aclose()


# -- a local Hugging Face model ----------------------------------------------------------------


class TransformersPolicy(Policy):
    """A local causal LM. The prompt goes through the tokenizer's chat template when it has one,
    else the message texts are joined as plain text. K answers come from one ``generate`` call
    (``num_return_sequences=k``) under a seed from (params.seed, prompt_id), so the same k and
    seed reproduce the same answers. ``top_k`` is disabled so sampling is exactly the requested
    temperature / top_p; temperature 0 is greedy (K copies of one answer). Generation runs in a
    worker thread, one at a time (one model, one device)."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu", name: str | None = None):
        self.lm = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.model = name or getattr(model, "name_or_path", "") or "transformers-local"
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu", name: str | None = None,
                        **model_kwargs: Any) -> TransformersPolicy:
        """Load a model folder (or hub name); ``name`` (default: ``name_or_path``) is what rows
        record as ``policy_model`` and what response ids hash."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **model_kwargs)
        return cls(model, tokenizer, device=device, name=name or str(name_or_path))

    async def generate(self, prompt_id: str, messages: list[dict], k: int,
                       params: SamplingParams, *,
                       indices: Collection[int] | None = None) -> list[Sample]:
        samples = await asyncio.to_thread(self._generate, messages, k, params,
                                          derive_seed(params.seed, prompt_id))
        return keep(samples, k, indices)

    def _encode(self, messages: list[dict]) -> tuple[Any, Any]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            enc = tok(text, add_special_tokens=False, return_tensors="pt")
        else:
            enc = tok("\n\n".join(str(m["content"]) for m in messages), return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        config_eos = getattr(getattr(self.lm, "generation_config", None), "eos_token_id", None)
        ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
        return {i for i in ids if i is not None}

    def _generate(self, messages: list[dict], k: int, params: SamplingParams,
                  seed: int) -> list[Sample]:
        import torch

        input_ids, attention_mask = self._encode(messages)
        eos = self._eos_ids()
        pad = self.tokenizer.pad_token_id
        kwargs: dict[str, Any] = {"max_new_tokens": params.max_new_tokens,
                                  "pad_token_id": pad if pad is not None else min(eos, default=0)}
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                          top_k=0, num_return_sequences=k)
        else:
            kwargs.update(do_sample=False)
        device = torch.device(self.device)
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        with self._lock, torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            with torch.no_grad():
                out = self.lm.generate(input_ids=input_ids, attention_mask=attention_mask,
                                       **kwargs)
        new = out[:, input_ids.shape[1]:].tolist()
        if len(new) == 1 and k > 1:
            new = new * k  # greedy: every sample is the same answer
        samples = []
        for i, ids in enumerate(new):
            stop = next((j for j, t in enumerate(ids) if t in eos), None)
            answer = ids if stop is None else ids[:stop]
            text = self.tokenizer.decode(answer, skip_special_tokens=True)
            samples.append(Sample(i, text, len(answer), "length" if stop is None else "stop"))
        return samples


# -- vLLM's offline engine ---------------------------------------------------------------------


class VLLMPolicy(Policy):
    """vLLM's engine (``vllm.LLM``), in this process, on a GPU.

    ``generate`` calls from concurrent prompts are gathered into one ``LLM.chat`` call (a list
    of conversations with one ``SamplingParams(n=k, seed=...)`` each), so the engine batches
    across prompts; while a batch runs, the next one collects. The engine call is blocking and
    runs in a worker thread. Requires the ``vllm`` package; untested in CI (no GPU there).
    """

    def __init__(self, model_name: str, **engine_kwargs: Any):
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(
                "VLLMPolicy needs the 'vllm' package, which runs on a GPU machine: install it "
                "there, or serve the model with `vllm serve` and set policy_base_url") from exc
        self._vllm = vllm
        self.model = model_name
        self.engine = vllm.LLM(model=model_name, **engine_kwargs)
        self._pending: list[tuple[list[dict], Any, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    async def generate(self, prompt_id: str, messages: list[dict], k: int,
                       params: SamplingParams, *,
                       indices: Collection[int] | None = None) -> list[Sample]:
        sampling = self._vllm.SamplingParams(
            n=k, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens, seed=derive_seed(params.seed, prompt_id))
        future = asyncio.get_running_loop().create_future()
        self._pending.append((messages, sampling, future))
        drainer = self._drainer
        if drainer is None or drainer.done() or drainer.get_loop() is not future.get_loop():
            # a new event loop (a new run) drops what a dead loop left behind
            self._pending = [p for p in self._pending if p[2].get_loop() is future.get_loop()]
            self._drainer = asyncio.create_task(self._drain())
        output = await future
        samples = [Sample(int(c.index), c.text, len(c.token_ids), c.finish_reason)
                   for c in output.outputs]
        return keep(samples, k, indices)

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let prompts started in the same tick join the first batch
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outputs = await asyncio.to_thread(
                    self.engine.chat, [b[0] for b in batch],
                    sampling_params=[b[1] for b in batch], use_tqdm=False)
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), output in zip(batch, outputs, strict=True):
                if not future.done():
                    future.set_result(output)


def policy_name(settings: Any) -> str:
    """The ``policy_model`` that :func:`policy_from_settings`'s policy records, without loading
    it (a transformers or vLLM model takes minutes to load; its name does not)."""
    kind, name = policy_kind(settings), str(settings.policy_model)
    if kind == "offline":
        return OFFLINE_MODEL
    return name.removeprefix("vllm:") if kind == "vllm" else name


def policy_from_settings(settings: Settings, *, run_id: str | None = None) -> Policy:
    """``policy_base_url`` set: the endpoint; ``policy_model`` ``vllm:<name>``: vLLM's engine; a
    local folder: transformers; anything else, under ``offline`` only: the offline policy (with a
    warning unless the name is ``offline-policy``)."""
    require_backends(settings, "sample")
    kind, name = policy_kind(settings), str(settings.policy_model)
    if kind == "endpoint":
        client = LLMClient.from_settings(settings, "policy", run_id=run_id)
        if settings.policy_mode == "batch":
            from tasks.llm.batch import BatchCaller

            return EndpointPolicy(BatchCaller.from_settings(client, settings))
        return EndpointPolicy(client)
    if kind == "vllm":
        return VLLMPolicy(name.removeprefix("vllm:"))
    if kind == "transformers":
        return TransformersPolicy.from_pretrained(str(Path(name).expanduser()), name=name)
    if name != OFFLINE_MODEL:
        log.warning("policy_model %r has no endpoint (policy_base_url) and is not a local folder "
                    "or vllm:<name>: using the offline policy (rows say %r)", name, OFFLINE_MODEL)
    return OfflinePolicy()
