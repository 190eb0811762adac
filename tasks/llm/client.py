"""One async client for every OpenAI-compatible endpoint (OpenAI, vLLM's server, GLM).

It adds what the pipeline needs around the official ``openai`` package: bounded concurrency,
a hard per-request timeout, our own retries (429 / 5xx / connection errors / timeouts, with
exponential backoff, jitter and the server's ``Retry-After``), a durable call cache so a rerun
never pays twice, and one ``llm_calls`` row per call (cached or not, failed or not) kept in
``call_log`` until the caller flushes it to the lake with :meth:`LLMClient.drain_call_log`.

Counters: ``calls_made`` (calls that went to the network), ``retries`` (extra attempts; HTTP
requests sent = calls_made + retries), ``cache_hits``, ``failures``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import openai

from tasks import storage
from tasks.llm.cache import CallCache, SharedCallCache, request_hash
from tasks.llm.errors import RETRYABLE_KINDS, LLMCallError, classify, reason_of
from tasks.runs import new_run_id

log = logging.getLogger(__name__)

T = TypeVar("T")
Message = Mapping[str, Any]

ROLES = ("judge", "policy", "embeddings")


@dataclass(frozen=True)
class CallInfo:
    """What one request is, as its ``llm_calls`` rows record it."""

    key: str                       # request hash (the cache key)
    role: str
    model: str
    purpose: str | None = None     # the judge step, or what else the call served
    attempt: int | None = None     # re-ask number after a protocol break
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class ChatResult:
    """One answer. ``latency_ms`` is this call's wall time (retries included; ~0 if cached)."""

    text: str
    finish_reason: str | None
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: float
    cached: bool
    request_hash: str


def api_key_from_env(role: str) -> str:
    """The API key for ``role``: ``LONGREWARD_<ROLE>_API_KEY``, else the Prefect Secret block
    ``longreward-<role>-api-key`` (looked up only when a Prefect API is configured, so a plain
    CLI run never starts a temporary server for it), else ``OPENAI_API_KEY``, else ``EMPTY``
    (a local vLLM needs none). The value is never logged and never stored."""
    key = os.environ.get(f"LONGREWARD_{role.upper()}_API_KEY") or _secret_block(role) \
        or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    return key


def _secret_block(role: str) -> str | None:
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return None
    from prefect.blocks.system import Secret

    try:
        return Secret.load(f"longreward-{role}-api-key").get()
    except (ValueError, LookupError):  # no such block
        return None


def default_cache_path(settings: Any) -> Path:
    """The local front of the call cache: beside a local lake; in the working directory when
    the lake is on S3 (SQLite is local)."""
    lake = str(settings.lake)
    root = Path(".longreward") if lake.startswith("s3://") else Path(lake)
    return root / "llm_cache.sqlite"


def shared_cache(settings: Any) -> SharedCallCache:
    """The call cache every worker of this lake shares (``<lake>/cache``), local file in front."""
    return SharedCallCache(default_cache_path(settings), storage.join(str(settings.lake),
                                                                       "cache"))


def chat_call(model: str, role: str, messages: list[dict[str, Any]], *, temperature: float,
              top_p: float, max_tokens: int, seed: int | None = None,
              sample_index: int | None = None, attempt: int = 0,
              extra: Mapping[str, Any] | None = None, purpose: str | None = None) -> CallInfo:
    """The :class:`CallInfo` of a chat request; its key is the same whichever way the call is
    paid for (online or in a batch), so their answers are interchangeable in the cache."""
    params = {"endpoint": "chat", "temperature": temperature, "top_p": top_p,
              "max_tokens": max_tokens, "seed": seed, "sample_index": sample_index,
              "attempt": attempt or None, "n": 1, "extra": dict(extra) if extra else None}
    return CallInfo(request_hash(model, messages, params), role, model, purpose, attempt,
                    temperature, max_tokens)


def chat_body(model: str, messages: list[dict[str, Any]], *, temperature: float, top_p: float,
              max_tokens: int, seed: int | None = None) -> dict[str, Any]:
    """The JSON body of a chat request, the same online and in a batch file line (where
    ``extra`` fields are merged in, as the ``openai`` package merges ``extra_body``)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature,
                            "top_p": top_p, "max_tokens": max_tokens}
    if seed is not None:
        body["seed"] = seed
    return body


def cached_result(hit: Mapping[str, Any], key: str, latency_ms: float) -> ChatResult:
    """A :class:`ChatResult` from a call cache entry."""
    usage = hit.get("usage") or {}
    return ChatResult(hit["text"], hit.get("finish_reason"), usage.get("prompt_tokens"),
                      usage.get("completion_tokens"), latency_ms, True, key)


class LLMClient:
    """Async chat + embeddings client with retries, a call cache and per-call accounting."""

    def __init__(self, *, base_url: str, model: str, api_key: str = "EMPTY",
                 role: str = "judge", run_id: str | None = None,
                 cache: CallCache | str | Path | None = None, concurrency: int = 16,
                 timeout_s: float = 120.0, max_retries: int = 5, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 60.0, max_retry_after_s: float = 300.0,
                 cost_per_mtok_in: float = 0.0, cost_per_mtok_out: float = 0.0,
                 embed_batch_size: int = 128):
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or embed_batch_size < 1:
            raise ValueError("need concurrency >= 1, max_retries >= 0, timeout_s > 0, "
                             "embed_batch_size >= 1")
        self.base_url = base_url
        self.model = model
        self.role = role
        self.run_id = run_id or new_run_id()
        self._owns_cache = isinstance(cache, str | Path)
        self.cache = CallCache(cache) if isinstance(cache, str | Path) else cache
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.cost_per_mtok_in = cost_per_mtok_in
        self.cost_per_mtok_out = cost_per_mtok_out
        self.embed_batch_size = embed_batch_size
        self._api_key = api_key  # never logged, never in repr or rows
        self._rng = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._openai: openai.AsyncOpenAI | None = None
        self._sem: asyncio.Semaphore | None = None
        self.call_log: list[dict[str, Any]] = []
        self._inflight: dict[tuple[int, str], asyncio.Future] = {}
        self.coalesced = 0
        self.calls_made = self.retries = self.cache_hits = self.failures = 0

    @classmethod
    def from_settings(cls, settings: Any, role: str = "judge", *, run_id: str | None = None,
                      cache: CallCache | str | Path | bool = True,
                      **overrides: Any) -> LLMClient:
        """A client for ``role``'s endpoint in :class:`tasks.config.Settings`.

        ``cache=True`` uses the lake's :func:`shared_cache`, ``False`` disables caching.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        base_url = getattr(settings, f"{role}_base_url")
        if not base_url:
            raise ValueError(f"settings.{role}_base_url is not set: use the offline backend")
        priced = role != "embeddings"
        kwargs: dict[str, Any] = {
            "base_url": base_url,
            "model": getattr(settings, f"{role}_model"),
            "api_key": api_key_from_env(role),
            "role": role,
            "run_id": run_id,
            "cache": (shared_cache(settings) if cache is True
                      else None if cache is False else cache),
            "concurrency": getattr(settings, f"{role}_concurrency", settings.judge_concurrency),
            "timeout_s": settings.request_timeout_s,
            "max_retries": settings.max_retries,
            "cost_per_mtok_in": getattr(settings, f"{role}_cost_per_mtok_in") if priced else 0.0,
            "cost_per_mtok_out": getattr(settings, f"{role}_cost_per_mtok_out") if priced else 0.0,
        }
        return cls(**{**kwargs, **overrides})

    def __repr__(self) -> str:
        return f"LLMClient(role={self.role!r}, model={self.model!r}, base_url={self.base_url!r})"

    # -- public API ------------------------------------------------------------------------

    async def chat(self, messages: Sequence[Message], *, temperature: float, top_p: float,
                   max_tokens: int, seed: int | None = None, sample_index: int | None = None,
                   attempt: int = 0, extra: Mapping[str, Any] | None = None,
                   purpose: str | None = None) -> ChatResult:
        """One chat completion, from the cache when this exact request has been answered.

        ``sample_index`` keeps K samples of one prompt apart (hashed, not sent). ``attempt`` is
        for a caller re-asking after a protocol break: a new attempt is a new cache key, so the
        broken answer is not served again, yet a rerun replays both answers without calling.
        ``extra`` is sent as extra JSON body fields (and hashed). ``purpose`` only labels the
        ``llm_calls`` row (not hashed, not sent).
        """
        messages = [dict(m) for m in messages]
        call = chat_call(self.model, self.role, messages, temperature=temperature, top_p=top_p,
                         max_tokens=max_tokens, seed=seed, sample_index=sample_index,
                         attempt=attempt, extra=extra, purpose=purpose)
        result, shared = await self._single_flight(
            call.key, lambda: self._chat(call, messages, top_p, seed, extra))
        if shared:
            result = replace(result, cached=True, latency_ms=0.0)
            self._record(call, result.tokens_in, result.tokens_out, 0.0, cached=True,
                         status="ok", finish_reason=result.finish_reason)
        return result

    async def _single_flight(self, key: str, make: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Identical requests in flight at once share one HTTP call (K answers of one prompt
        often contain the same statement); returns (answer, whether it was shared)."""
        slot = (id(asyncio.get_running_loop()), key)
        pending = self._inflight.get(slot)
        if pending is not None:
            self.coalesced += 1
            return await asyncio.shield(pending), True
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[slot] = future
        try:
            result = await make()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(result)
            return result, False
        finally:
            self._inflight.pop(slot, None)

    async def _chat(self, call: CallInfo, messages: list[dict[str, Any]], top_p: float,
                    seed: int | None, extra: Mapping[str, Any] | None) -> ChatResult:
        key = call.key
        started = time.perf_counter()
        hit = await self._lookup(key)
        if hit is not None:
            self.cache_hits += 1
            result = cached_result(hit, key, _ms(started))
            self._record(call, result.tokens_in, result.tokens_out, result.latency_ms,
                         cached=True, status="ok", finish_reason=result.finish_reason)
            return result
        try:
            return await self._paid_chat(call, messages, top_p, seed, extra, started)
        finally:
            await self._release(key)

    async def _lookup(self, key: str) -> dict[str, Any] | None:
        """A finished call from the cache; else, with a shared cache, wait for a call another
        worker is paying for now, or take the lease to pay for it here."""
        if self.cache is None:
            return None
        return await self.cache.aget(key) or await self.cache.acquire(key)

    async def _release(self, key: str) -> None:
        if self.cache is not None:
            await self.cache.arelease(key)

    async def _paid_chat(self, call: CallInfo, messages: list[dict[str, Any]], top_p: float,
                         seed: int | None, extra: Mapping[str, Any] | None,
                         started: float) -> ChatResult:
        key = call.key
        body = chat_body(self.model, messages, temperature=call.temperature, top_p=top_p,
                         max_tokens=call.max_tokens, seed=seed)
        if extra:
            body["extra_body"] = dict(extra)
        resp, attempts = await self._call(call, started,
                                          lambda client: client.chat.completions.create(**body))
        if not resp.choices:
            raise self._fail(call, started, "bad_response", "response has no choices",
                             attempts=attempts)
        choice = resp.choices[0]
        usage = resp.usage
        tokens_in = usage.prompt_tokens if usage else None
        tokens_out = usage.completion_tokens if usage else None
        result = ChatResult(choice.message.content or "", choice.finish_reason, tokens_in,
                            tokens_out, _ms(started), False, key)
        await self._store(call, {
            "text": result.text, "finish_reason": result.finish_reason,
            "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out},
            "latency_ms": result.latency_ms})
        self._record(call, tokens_in, tokens_out, result.latency_ms, cached=False, status="ok",
                     finish_reason=result.finish_reason)
        return result

    async def embed(self, texts: Sequence[str], *, model: str | None = None) -> list[list[float]]:
        """Embedding vectors for ``texts``, in order; batches run concurrently and are cached."""
        texts = list(texts)
        size = self.embed_batch_size
        batches = [texts[i:i + size] for i in range(0, len(texts), size)]
        parts = await asyncio.gather(*(self._embed_shared(b, model or self.model)
                                       for b in batches))
        return [vector for part in parts for vector in part]

    def drain_call_log(self) -> list[dict[str, Any]]:
        """Hand over the ``llm_calls`` rows logged so far and start a new batch."""
        rows, self.call_log = self.call_log, []
        return rows

    def stats(self) -> dict[str, int]:
        return {"calls_made": self.calls_made, "retries": self.retries,
                "cache_hits": self.cache_hits, "failures": self.failures,
                "coalesced": self.coalesced}

    async def aclose(self) -> None:
        """Release connections (and an owned cache file); the next call reopens them, so one
        client may serve several event loops: ``async with client:`` inside each."""
        client, self._openai, self._sem = self._openai, None, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.close()  # sockets of a dead loop cannot be closed from this one
        self._loop = None
        if self._owns_cache and self.cache is not None:
            self.cache.close()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals -------------------------------------------------------------------------

    async def _embed_shared(self, texts: list[str], model: str) -> list[list[float]]:
        key = request_hash(model, texts, {"endpoint": "embeddings"})
        vectors, _ = await self._single_flight(key, lambda: self._embed_batch(texts, model))
        return vectors

    async def _embed_batch(self, texts: list[str], model: str) -> list[list[float]]:
        call = CallInfo(request_hash(model, texts, {"endpoint": "embeddings"}), "embeddings",
                        model, purpose="embeddings")
        started = time.perf_counter()
        hit = await self._lookup(call.key)
        if hit is not None:
            self.cache_hits += 1
            self._record(call, hit.get("prompt_tokens"), None, _ms(started), cached=True,
                         status="ok")
            return hit["embeddings"]
        try:
            return await self._paid_embed(call, texts, model, started)
        finally:
            await self._release(call.key)

    async def _paid_embed(self, call: CallInfo, texts: list[str], model: str,
                          started: float) -> list[list[float]]:
        # float, not the package's default base64: every OpenAI-compatible server speaks it
        resp, attempts = await self._call(call, started,
                                          lambda client: client.embeddings.create(
                                              model=model, input=texts, encoding_format="float"))
        vectors = [list(item.embedding) for item in sorted(resp.data, key=lambda d: d.index)]
        if len(vectors) != len(texts):
            raise self._fail(call, started, "bad_response",
                             f"{len(vectors)} vectors for {len(texts)} texts", attempts=attempts)
        tokens_in = resp.usage.prompt_tokens if resp.usage else None
        await self._store(call, {"embeddings": vectors, "prompt_tokens": tokens_in})
        self._record(call, tokens_in, None, _ms(started), cached=False, status="ok")
        return vectors

    def _bind(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        """The openai client and semaphore of the running loop (rebuilt if the loop changed,
        e.g. one ``asyncio.run`` per Prefect task: both are tied to the loop that made them)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._openai is None or self._sem is None:
            self._loop = loop
            self._sem = asyncio.Semaphore(self.concurrency)
            # max_retries=0: our loop below does all retrying, so every retry is counted
            self._openai = openai.AsyncOpenAI(api_key=self._api_key, base_url=self.base_url,
                                              timeout=self.timeout_s, max_retries=0)
        return self._openai, self._sem

    async def _call(self, call: CallInfo, started: float,
                    send: Callable[[openai.AsyncOpenAI], Awaitable[T]]) -> tuple[T, int]:
        """Send with bounded concurrency, timeout and retries; returns (response, attempts)."""
        self.calls_made += 1
        client, sem = self._bind()
        for attempt in range(self.max_retries + 1):
            try:
                async with sem, asyncio.timeout(self.timeout_s):
                    return await send(client), attempt + 1
            except (openai.APIError, TimeoutError) as exc:
                kind, status, retry_after = classify(exc)
                if kind not in RETRYABLE_KINDS or attempt == self.max_retries:
                    raise self._fail(call, started, kind, reason_of(exc),
                                     attempts=attempt + 1, status_code=status) from exc
                delay = self._delay(attempt, retry_after)
                self.retries += 1
                log.warning("%s call %s: %s (attempt %d/%d), retrying in %.2fs", call.role,
                            call.key[:12], kind, attempt + 1, self.max_retries + 1, delay)
                await asyncio.sleep(delay)  # outside the semaphore: waiting holds no slot
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The server's Retry-After when given (capped), else exponential backoff; jittered
        either way so a burst of throttled calls does not come back in lockstep."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s) + self._rng.uniform(
                0, self.backoff_base_s)
        backoff = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
        return self._rng.uniform(backoff / 2, backoff)

    async def _store(self, call: CallInfo, response: dict[str, Any]) -> None:
        if self.cache is None:
            return
        try:
            await self.cache.aput(call.key, role=call.role, model=call.model, response=response)
        except Exception:  # the answer is paid for and still useful: report, do not fail
            log.exception("could not write call %s to the cache %s", call.key[:12], self.cache)

    def _fail(self, call: CallInfo, started: float, kind: str, reason: str, *, attempts: int,
              status_code: int | None = None) -> LLMCallError:
        self.failures += 1
        self._record(call, None, None, _ms(started), cached=False, status=f"error:{kind}")
        return LLMCallError(reason, kind=kind, attempts=attempts, request_hash=call.key,
                            status_code=status_code)

    def _record(self, call: CallInfo, tokens_in: int | None, tokens_out: int | None,
                latency_ms: float, *, cached: bool, status: str,
                finish_reason: str | None = None, price_factor: float = 1.0) -> None:
        """One ``llm_calls`` row; ``price_factor`` scales the cost (0.5: a batch call)."""
        cost = None
        if not cached and (tokens_in is not None or tokens_out is not None):
            cost = price_factor * ((tokens_in or 0) * self.cost_per_mtok_in
                                   + (tokens_out or 0) * self.cost_per_mtok_out) / 1e6
        elif cached:
            cost = 0.0  # a cache hit costs nothing
        self.call_log.append({
            "call_id": uuid.uuid4().hex, "request_hash": call.key, "role": call.role,
            "model": call.model, "tokens_in": tokens_in, "tokens_out": tokens_out,
            "latency_ms": latency_ms, "cost_usd": cost, "cached": cached, "status": status,
            "run_id": self.run_id, "created_at": datetime.now(UTC), "purpose": call.purpose,
            "attempt": call.attempt, "temperature": call.temperature,
            "max_tokens": call.max_tokens, "finish_reason": finish_reason,
        })


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
