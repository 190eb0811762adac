"""LLM calls paid for through a Batch API (OpenAI's, or vLLM's ``run-batch`` format).

:class:`BatchCaller` has :class:`~tasks.llm.client.LLMClient`'s ``chat``: it is the judge in
batch mode and the client of an endpoint policy in batch mode. ``chat`` answers from the call
cache when it can (same key and request body as online: the answers are interchangeable), else
queues the request. Stages run many prompts at once, so when all of them wait the queue holds
one round of the work's dependencies (sampling: one; judging: first asks, then support grades
and coverage, then re-asks); it goes out as one batch once no request came for ``idle_s``: a
JSONL file (``custom_id`` = request hash), created, polled with backoff, its output and error
files read back into the call cache and to the waiters, one ``llm_calls`` row each at the
batch price.

Each batch is recorded in ``llm_batches`` when created and when it ends
(:mod:`tasks.llm.batch_ledger`); whoever asks for a call an open batch carries collects that
batch instead of submitting again. Calls a batch did not answer (expired, failed, 5xx or 429
lines) are resubmitted at most ``max_resubmits`` times; what still fails, and what the
endpoint refused (4xx), fails the call with a non-retryable error (a failed judgment).

Handover: with ``handover_after_s`` set, a batch still running that long after this caller was
made is not waited for: its waiters get :class:`~tasks.llm.errors.BatchPending` and the batch
stays open for the next run. Waiting takes no lease of the shared cache: it blocks nobody.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.lake import Lake
from tasks.llm.batch_api import BatchEndpoint
from tasks.llm.batch_files import ENDED, ENDPOINT, Outcome, batch_reason
from tasks.llm.batch_ledger import BatchLedger
from tasks.llm.cache import canonical_json
from tasks.llm.client import (
    CallInfo,
    ChatResult,
    LLMClient,
    cached_result,
    chat_body,
    chat_call,
)
from tasks.llm.errors import BatchPending, LLMCallError

log = logging.getLogger(__name__)

@dataclass
class _Pending:
    call: CallInfo
    body: dict[str, Any]
    future: asyncio.Future
    queued: float  # perf_counter when first asked


class BatchCaller:
    """The chat calls of an :class:`LLMClient`'s endpoint, paid through its Batch API."""

    def __init__(self, client: LLMClient, lake: Lake | None = None, *, idle_s: float = 2.0,
                 poll_s: float = 30.0, poll_max_s: float = 600.0, max_resubmits: int = 2,
                 price_factor: float = 0.5, completion_window: str = "24h",
                 reasks_online: bool = False, handover_after_s: float | None = None):
        if idle_s <= 0 or poll_s <= 0 or max_resubmits < 0 or price_factor < 0 or (
                handover_after_s is not None and handover_after_s < 0):
            raise ValueError("need idle_s > 0, poll_s > 0, max_resubmits >= 0, "
                             "price_factor >= 0, handover_after_s >= 0")
        self.client = client
        self.model = client.model
        self.endpoint = BatchEndpoint(client)
        self.ledger = BatchLedger(lake, client.model, client.role, client.run_id)
        self.idle_s = idle_s
        self.poll_s = poll_s
        self.poll_max_s = max(poll_s, poll_max_s)
        self.max_resubmits = max_resubmits
        self.price_factor = price_factor
        self.completion_window = completion_window
        # re-asks after a protocol break are few but each costs a batch turnaround: online, a
        # night takes two rounds instead of up to 1 + attempts
        self.reasks_online = reasks_online
        self.handover_after_s = handover_after_s
        self._started = time.perf_counter()
        self._waiting: dict[str, _Pending] = {}   # every key somebody awaits
        self._queue: list[str] = []               # keys not sent yet
        self._timer: asyncio.TimerHandle | None = None
        self._looking = 0                         # chat() calls in their cache lookup
        self._collecting: dict[str, asyncio.Task] = {}  # batch id -> its collector
        self._finishing: set[asyncio.Task] = set()      # collectors past the batch's end
        self._carried: dict[str, set[str]] = {}         # batch id -> keys, submitted here
        self._tasks: set[asyncio.Task] = set()
        self.batches_submitted = self.batches_collected = self.requests_submitted = 0
        self.resubmitted = self.handed_over = 0

    @classmethod
    def from_settings(cls, client: LLMClient, settings: Any) -> BatchCaller:
        """The batch caller the ``batch_*`` settings describe, recording in the lake."""
        return cls(client, Lake(settings.lake), idle_s=settings.batch_idle_s,
                   poll_s=settings.batch_poll_s, poll_max_s=settings.batch_poll_max_s,
                   max_resubmits=settings.batch_max_resubmits,
                   price_factor=settings.batch_price_factor,
                   reasks_online=settings.batch_reasks_online,
                   handover_after_s=settings.batch_handover_after_s
                   if settings.batch_wait == "handover" else None)

    def __repr__(self) -> str:
        return (f"BatchCaller(role={self.client.role!r}, model={self.model!r}, "
                f"base_url={self.client.base_url!r})")

    # -- the LLMClient (and Judge) interface ---------------------------------------------------

    async def chat(self, messages: list[dict], *, temperature: float, top_p: float,
                   max_tokens: int, seed: int | None = None, sample_index: int | None = None,
                   attempt: int = 0, extra: Mapping[str, Any] | None = None,
                   purpose: str | None = None) -> ChatResult:
        """:meth:`LLMClient.chat`'s answer, through a batch (same cache key, same body)."""
        if attempt and self.reasks_online:
            return await self.client.chat(messages, temperature=temperature, top_p=top_p,
                                          max_tokens=max_tokens, seed=seed,
                                          sample_index=sample_index, attempt=attempt,
                                          extra=extra, purpose=purpose)
        msgs = [dict(m) for m in messages]
        call = chat_call(self.model, self.client.role, msgs, temperature=temperature,
                         top_p=top_p, max_tokens=max_tokens, seed=seed,
                         sample_index=sample_index, attempt=attempt, extra=extra,
                         purpose=purpose)
        started = time.perf_counter()
        pending = self._waiting.get(call.key)
        if pending is None:
            self._looking += 1  # a round is not sent while a request is still being looked up
            try:
                hit = await self.client.cache.aget(call.key) if self.client.cache else None
            finally:
                self._looking -= 1
            if hit is not None:
                self.client.cache_hits += 1
                result = cached_result(hit, call.key, _ms(started))
                self._row(call, result, cached=True)
                return result
            pending = self._waiting.get(call.key)  # asked meanwhile by another coroutine
        if pending is not None:  # the same request already waits: share its answer
            self.client.coalesced += 1
            result = await asyncio.shield(pending.future)
            result = ChatResult(result.text, result.finish_reason, result.tokens_in,
                                result.tokens_out, 0.0, True, call.key)
            self._row(call, result, cached=True)
            return result
        body = {**chat_body(self.model, msgs, temperature=temperature, top_p=top_p,
                            max_tokens=max_tokens, seed=seed), **(extra or {})}
        pending = _Pending(call, body, asyncio.get_running_loop().create_future(), started)
        self._waiting[call.key] = pending
        self._queue.append(call.key)
        self._arm()
        return await asyncio.shield(pending.future)

    def drain_call_log(self) -> list[dict[str, Any]]:
        return self.client.drain_call_log()

    def stats(self) -> dict[str, int]:
        return {**self.client.stats(), "batches_submitted": self.batches_submitted,
                "batches_collected": self.batches_collected,
                "requests_submitted": self.requests_submitted, "resubmitted": self.resubmitted,
                "handed_over": self.handed_over}

    async def aclose(self) -> None:
        """Stop waiting (batches keep running at the endpoint: a rerun collects them)."""
        if self._timer is not None:
            self._timer.cancel()
        # a batch that ended is recorded as such first (else a rerun would collect it again)
        await asyncio.gather(*self._finishing, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._waiting.clear()
        self._queue.clear()
        await self.client.aclose()

    async def __aenter__(self) -> BatchCaller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- rounds ------------------------------------------------------------------------------

    def _arm(self) -> None:
        """(Re)start the idle timer: the queue goes out once requests stop coming."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.idle_s, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._looking:
            self._arm()
            return
        keys, self._queue = self._queue, []
        if keys:
            self._spawn(self._send_round(keys))

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _send_round(self, keys: list[str]) -> None:
        """Submit ``keys`` as one batch, less those answered meanwhile and those an open batch
        (of this run, or of a killed one: it is collected) carries."""
        try:
            keys = await self._from_cache(keys)
            if not keys:
                return
            open_batches = await asyncio.to_thread(self.ledger.open_batches)
            open_batches += [(b, self._carried[b], 0) for b in self._collecting
                             if b in self._carried]
            carried: set[str] = set()
            for batch_id, hashes, resubmit in open_batches:
                if hashes & set(keys):
                    carried |= hashes
                    self._collect_once(batch_id, resubmit)
            rest = [k for k in keys if k not in carried]
            if rest:
                await self._submit(rest, resubmit=0)
        except Exception as err:
            self._fail_all(keys, err)

    def _collect_once(self, batch_id: str, resubmit: int) -> None:
        if batch_id not in self._collecting:
            self.batches_collected += 1
            log.info("collecting open batch %s instead of submitting its calls again", batch_id)
            self._collecting[batch_id] = self._spawn(self._collect(batch_id, resubmit))

    async def _from_cache(self, keys: list[str]) -> list[str]:
        """Answer the keys the cache holds by now; returns the others."""
        if self.client.cache is None:
            return keys
        cache = self.client.cache
        hits = await asyncio.to_thread(lambda: {k: cache.get(k) for k in keys})
        rest = []
        for key in keys:
            pending = self._waiting.get(key)
            if hits[key] is None or pending is None:
                rest += [key] if pending is not None else []
                continue
            del self._waiting[key]
            result = cached_result(hits[key], key, _ms(pending.queued))
            self.client.cache_hits += 1
            self._row(pending.call, result, cached=True)
            if not pending.future.done():
                pending.future.set_result(result)
        return rest

    async def _submit(self, keys: list[str], resubmit: int) -> None:
        keys = [k for k in keys if k in self._waiting]
        if not keys:
            return
        lines = "".join(canonical_json({"custom_id": k, "method": "POST", "url": ENDPOINT,
                                        "body": self._waiting[k].body}) + "\n" for k in keys)
        batch_id, file_id = await self.endpoint.submit(lines, self.completion_window)
        self.batches_submitted += 1
        self._carried[batch_id] = set(keys)
        self.requests_submitted += len(keys)
        self.resubmitted += len(keys) if resubmit else 0
        await asyncio.to_thread(self.ledger.record, {
            "batch_id": batch_id, "status": "submitted", "input_file_id": file_id,
            "request_hashes": list(keys), "requests": len(keys), "resubmit": resubmit})
        log.info("submitted %s batch %s: %d calls (resubmit %d)", self.client.role, batch_id,
                 len(keys), resubmit)
        self._collecting[batch_id] = self._spawn(self._collect(batch_id, resubmit))

    async def _collect(self, batch_id: str, resubmit: int) -> None:
        """Wait for the batch to end, hand out its answers, resubmit what it did not answer."""
        try:
            await self._collect_batch(batch_id, resubmit)
        except Exception as err:  # an outage: the stage fails now and its retry collects
            self._fail_all(await asyncio.to_thread(self._hashes_of, batch_id), err)
        finally:
            self._collecting.pop(batch_id, None)
            self._finishing.discard(asyncio.current_task())

    async def _collect_batch(self, batch_id: str, resubmit: int) -> None:
        delay = self.poll_s
        while True:
            batch = await self.endpoint.retrieve(batch_id)
            if batch.status in ENDED:
                self._finishing.add(asyncio.current_task())
                break
            if self._handing_over():
                await self._hand_over(batch_id)
                return
            await asyncio.sleep(delay)
            delay = min(self.poll_max_s, delay * 1.5)
        outcomes = await self.endpoint.outcomes(batch)
        carried = await asyncio.to_thread(self._hashes_of, batch_id)
        seen = {o.key for o in outcomes}
        why = batch_reason(batch)
        outcomes += [Outcome(k, None, retry=True, reason=why) for k in carried if k not in seen]
        again = await self._settle(outcomes, resubmit)
        answered = [o for o in outcomes if o.response is not None]
        tokens_in = sum((o.response.get("usage") or {}).get("prompt_tokens") or 0
                        for o in answered)
        tokens_out = sum((o.response.get("usage") or {}).get("completion_tokens") or 0
                         for o in answered)
        await asyncio.to_thread(self.ledger.record, {
            "batch_id": batch_id, "status": batch.status, "input_file_id": batch.input_file_id,
            "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "request_hashes": sorted(carried), "requests": len(carried),
            "succeeded": len(answered), "failed": len(outcomes) - len(answered),
            "tokens_in": tokens_in, "tokens_out": tokens_out,
            "cost_usd": self.price_factor * (tokens_in * self.client.cost_per_mtok_in
                                             + tokens_out * self.client.cost_per_mtok_out) / 1e6,
            "resubmit": resubmit})
        if again:
            await self._submit(again, resubmit + 1)

    def _handing_over(self) -> bool:
        return self.handover_after_s is not None and \
            time.perf_counter() - self._started >= self.handover_after_s

    async def _hand_over(self, batch_id: str) -> None:
        """Stop waiting for a running batch: its waiters learn that the next run collects it
        (the batch keeps its open row; no end row is written)."""
        keys = await asyncio.to_thread(self._hashes_of, batch_id)
        log.info("batch %s still running: handed over to the next run", batch_id)
        for key in keys:
            pending = self._waiting.pop(key, None)
            if pending is None or pending.future.done():
                continue
            self.handed_over += 1
            pending.future.set_exception(BatchPending(batch_id, key))
            pending.future.exception()  # retrieved: no warning when every waiter is gone

    async def _settle(self, outcomes: Iterable[Outcome], resubmit: int) -> list[str]:
        """Store answers and resolve their waiters; returns the keys to submit again."""
        again: list[str] = []
        for o in outcomes:
            if o.response is not None:
                await self._answer(o.key, o.response)
                continue
            pending = self._waiting.get(o.key)
            if pending is None or pending.future.done():
                continue  # a call of an earlier run that nobody asks for now
            if o.retry and resubmit < self.max_resubmits:
                again.append(o.key)
                continue
            kind = "batch_failed" if o.retry else "client_error"
            reason = o.reason + (f" (after {resubmit} resubmission(s))" if o.retry else "")
            self._fail(o.key, LLMCallError(reason, kind=kind, attempts=resubmit + 1,
                                           request_hash=o.key, status_code=o.status_code))
        return again

    async def _answer(self, key: str, body: dict[str, Any]) -> None:
        choice = (body.get("choices") or [{}])[0]
        usage = body.get("usage") or {}
        entry = {"text": (choice.get("message") or {}).get("content") or "",
                 "finish_reason": choice.get("finish_reason"),
                 "usage": {"prompt_tokens": usage.get("prompt_tokens"),
                           "completion_tokens": usage.get("completion_tokens")}}
        pending = self._waiting.get(key)
        latency = _ms(pending.queued) if pending else 0.0
        if self.client.cache is not None:
            await self.client.cache.aput(key, role=self.client.role, model=self.model,
                                         response={**entry, "latency_ms": latency})
        # A waiter is looked up after the cache write: one who came meanwhile is answered here,
        # one who comes later finds the answer in the cache.
        pending = self._waiting.pop(key, None)
        if pending is None or pending.future.done():
            return
        self.client.calls_made += 1
        result = ChatResult(entry["text"], entry["finish_reason"], usage.get("prompt_tokens"),
                            usage.get("completion_tokens"), latency, False, key)
        self._row(pending.call, result, cached=False)
        pending.future.set_result(result)

    def _fail(self, key: str, err: LLMCallError) -> None:
        pending = self._waiting.pop(key, None)
        if pending is None or pending.future.done():
            return
        self.client.failures += 1
        self.client._record(pending.call, None, None, _ms(pending.queued), cached=False,
                            status=f"error:{err.kind}")
        pending.future.set_exception(err)
        pending.future.exception()  # retrieved: no warning when every waiter is gone

    def _fail_all(self, keys: Iterable[str], err: Exception) -> None:
        log.error("batch round of the %s failed: %s", self.client.role, err)
        kind = err.kind if isinstance(err, LLMCallError) else "api_error"
        for key in keys:
            self._fail(key, LLMCallError(str(err), kind=kind, attempts=1, request_hash=key))

    def _row(self, call: CallInfo, result: ChatResult, *, cached: bool) -> None:
        self.client._record(call, result.tokens_in, result.tokens_out, result.latency_ms,
                            cached=cached, status="ok", finish_reason=result.finish_reason,
                            price_factor=self.price_factor)

    def _hashes_of(self, batch_id: str) -> set[str]:
        """The calls a batch carries: what this caller submitted, or what the lake recorded."""
        if batch_id in self._carried:
            return self._carried[batch_id]
        return self.ledger.hashes_of(batch_id)


BatchJudge = BatchCaller  # the name the judge side has used since batch judging came


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
