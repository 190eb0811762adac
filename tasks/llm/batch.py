"""A judge that pays for its calls through a Batch API (OpenAI's, or vLLM's ``run-batch`` format).

:class:`BatchJudge` has the :class:`~tasks.score.judge.Judge` interface. ``chat`` answers from
the call cache when it can (same key as :class:`~tasks.llm.client.LLMClient`, so online and batch
answers are interchangeable); otherwise it queues the request and waits. The scoring stage runs
every prompt's coroutines at once, so when they all wait on the judge the queue holds one round
of the method's dependency graph (first helpfulness, logicality, statement listing and chunk
extraction; then support grades and coverage; then re-asks): the queue is sent as one batch when
no new request has come for ``idle_s``. A batch is uploaded as a JSONL file of requests (the
``custom_id`` is the request hash), created, polled with backoff, and its output and error
files are read back: answers go to the call cache and to their waiters, with one ``llm_calls``
row each at the batch price.

Durability: each batch is recorded in the lake's ``llm_batches`` table when it is created and
when it ends. A rerun whose requests are carried by a batch without an end row collects that
batch instead of submitting them again. Calls a batch did not answer (expired, failed, a 5xx or
429 line) are resubmitted, at most ``max_resubmits`` times; what still fails, and what the
endpoint refused (a 4xx line), fails the call with a non-retryable error, which ``ask`` turns
into a failed judgment with its reason, as online.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import openai
import pyarrow.compute as pc

from tasks.lake import Lake
from tasks.llm.batch_files import ENDED, ENDPOINT, Outcome, batch_reason, read_line
from tasks.llm.cache import canonical_json
from tasks.llm.client import CallInfo, ChatResult, LLMClient, cached_result, chat_call
from tasks.llm.errors import RETRYABLE_KINDS, LLMCallError, classify, reason_of

log = logging.getLogger(__name__)



@dataclass
class _Pending:
    call: CallInfo
    body: dict[str, Any]
    future: asyncio.Future
    queued: float  # perf_counter when first asked


class BatchJudge:
    """The judge of an :class:`LLMClient`'s endpoint, paid through its Batch API."""

    def __init__(self, client: LLMClient, lake: Lake | None = None, *, idle_s: float = 2.0,
                 poll_s: float = 30.0, poll_max_s: float = 600.0, max_resubmits: int = 2,
                 price_factor: float = 0.5, completion_window: str = "24h",
                 reasks_online: bool = False):
        if idle_s <= 0 or poll_s <= 0 or max_resubmits < 0 or price_factor < 0:
            raise ValueError("need idle_s > 0, poll_s > 0, max_resubmits >= 0, "
                             "price_factor >= 0")
        self.client = client
        self.model = client.model
        self.lake = lake
        self.idle_s = idle_s
        self.poll_s = poll_s
        self.poll_max_s = max(poll_s, poll_max_s)
        self.max_resubmits = max_resubmits
        self.price_factor = price_factor
        self.completion_window = completion_window
        # re-asks after a protocol break are few but each costs a batch turnaround: online, a
        # night takes two rounds instead of up to 1 + attempts
        self.reasks_online = reasks_online
        self._waiting: dict[str, _Pending] = {}   # every key somebody awaits
        self._queue: list[str] = []               # keys not sent yet
        self._timer: asyncio.TimerHandle | None = None
        self._looking = 0                         # chat() calls in their cache lookup
        self._collecting: dict[str, asyncio.Task] = {}  # batch id -> its collector
        self._finishing: set[asyncio.Task] = set()      # collectors past the batch's end
        self._carried: dict[str, set[str]] = {}         # batch id -> keys, submitted here
        self._tasks: set[asyncio.Task] = set()
        self.batches_submitted = self.batches_collected = self.requests_submitted = 0
        self.resubmitted = 0

    def __repr__(self) -> str:
        return f"BatchJudge(model={self.model!r}, base_url={self.client.base_url!r})"

    # -- the Judge interface -----------------------------------------------------------------

    async def chat(self, messages: list[dict], *, temperature: float, top_p: float,
                   max_tokens: int, attempt: int = 0, purpose: str | None = None) -> ChatResult:
        if attempt and self.reasks_online:
            return await self.client.chat(messages, temperature=temperature, top_p=top_p,
                                          max_tokens=max_tokens, attempt=attempt,
                                          purpose=purpose)
        msgs = [dict(m) for m in messages]
        call = chat_call(self.model, self.client.role, msgs, temperature=temperature,
                         top_p=top_p, max_tokens=max_tokens, attempt=attempt, purpose=purpose)
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
        body = {"model": self.model, "messages": msgs, "temperature": temperature,
                "top_p": top_p, "max_tokens": max_tokens}
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
                "requests_submitted": self.requests_submitted, "resubmitted": self.resubmitted}

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

    async def __aenter__(self) -> BatchJudge:
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
            open_batches = await asyncio.to_thread(self._open_batches)
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
        api = self._api()
        upload = await self._retrying(lambda: api.files.create(
            file=("judge-batch.jsonl", lines.encode(), "application/jsonl"), purpose="batch"))
        batch = await self._retrying(lambda: api.batches.create(
            input_file_id=upload.id, endpoint=ENDPOINT,
            completion_window=self.completion_window))
        self.batches_submitted += 1
        self._carried[batch.id] = set(keys)
        self.requests_submitted += len(keys)
        self.resubmitted += len(keys) if resubmit else 0
        await asyncio.to_thread(self._log_batch, {
            "batch_id": batch.id, "status": "submitted", "input_file_id": upload.id,
            "request_hashes": list(keys), "requests": len(keys), "resubmit": resubmit})
        log.info("submitted batch %s: %d calls (resubmit %d)", batch.id, len(keys), resubmit)
        self._collecting[batch.id] = self._spawn(self._collect(batch.id, resubmit))

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
        api = self._api()
        delay = self.poll_s
        while True:
            try:
                batch = await self._retrying(lambda: api.batches.retrieve(batch_id))
            except LLMCallError as err:
                if err.status_code != 404:
                    raise
                # the endpoint does not know it (a restarted vLLM, another account): lost
                batch = SimpleNamespace(id=batch_id, status="failed", input_file_id=None,
                                        output_file_id=None, error_file_id=None, errors=None)
            if batch.status in ENDED:
                self._finishing.add(asyncio.current_task())
                break
            await asyncio.sleep(delay)
            delay = min(self.poll_max_s, delay * 1.5)
        outcomes: list[Outcome] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self._retrying(lambda f=file_id: api.files.content(f))
                outcomes += [read_line(json.loads(line)) for line in content.text.splitlines()
                             if line.strip()]
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
        await asyncio.to_thread(self._log_batch, {
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
        log.error("batch round of the judge failed: %s", err)
        kind = err.kind if isinstance(err, LLMCallError) else "api_error"
        for key in keys:
            self._fail(key, LLMCallError(str(err), kind=kind, attempts=1, request_hash=key))

    def _row(self, call: CallInfo, result: ChatResult, *, cached: bool) -> None:
        self.client._record(call, result.tokens_in, result.tokens_out, result.latency_ms,
                            cached=cached, status="ok", finish_reason=result.finish_reason,
                            price_factor=self.price_factor)

    # -- the endpoint and the lake -----------------------------------------------------------

    def _api(self) -> openai.AsyncOpenAI:
        return self.client._bind()[0]

    async def _retrying(self, send: Any) -> Any:
        """One Batch API request with the client's retry budget for transient failures."""
        for attempt in range(self.client.max_retries + 1):
            try:
                return await send()
            except (openai.APIError, TimeoutError) as exc:
                kind, status, retry_after = classify(exc)
                if kind not in RETRYABLE_KINDS or attempt == self.client.max_retries:
                    raise LLMCallError(reason_of(exc), kind=kind, attempts=attempt + 1,
                                       request_hash="", status_code=status) from exc
                await asyncio.sleep(self.client._delay(attempt, retry_after))
        raise AssertionError("unreachable")

    def _open_batches(self) -> list[tuple[str, set[str], int]]:
        """(batch id, request hashes, resubmit) of this model's batches without an end row."""
        if self.lake is None:
            return []
        rows = self.lake.read("llm_batches", columns=["batch_id", "status", "model",
                                                     "request_hashes", "resubmit"]).to_pylist()
        ended = {r["batch_id"] for r in rows if r["status"] in ENDED}
        return [(r["batch_id"], set(r["request_hashes"] or []), r["resubmit"] or 0) for r in rows
                if r["status"] == "submitted" and r["model"] == self.model
                and r["batch_id"] not in ended]

    def _hashes_of(self, batch_id: str) -> set[str]:
        """The calls a batch carries: what this judge submitted, or what the lake recorded."""
        if batch_id in self._carried or self.lake is None:
            return self._carried.get(batch_id, set())
        rows = self.lake.read("llm_batches", columns=["batch_id", "request_hashes"],
                              filter=pc.field("batch_id") == batch_id).to_pylist()
        return {h for r in rows for h in (r["request_hashes"] or [])}

    def _log_batch(self, row: dict[str, Any]) -> None:
        if self.lake is not None:
            self.lake.upsert("llm_batches", [{
                "output_file_id": None, "error_file_id": None, "succeeded": None,
                "failed": None, "tokens_in": None, "tokens_out": None, "cost_usd": None,
                **row, "model": self.model, "run_id": self.client.run_id,
                "created_at": datetime.now(UTC)}])


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
