"""The Batch API's requests (``/v1/files``, ``/v1/batches``) with the client's retry budget."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import openai

from tasks.llm.batch_files import ENDPOINT, Outcome, read_line
from tasks.llm.client import LLMClient
from tasks.llm.errors import RETRYABLE_KINDS, LLMCallError, classify, reason_of


class BatchEndpoint:
    """Upload, create, retrieve and read back batches at an :class:`LLMClient`'s endpoint."""

    def __init__(self, client: LLMClient):
        self.client = client

    def _api(self) -> openai.AsyncOpenAI:
        return self.client._bind()[0]

    async def submit(self, lines: str, completion_window: str) -> tuple[str, str]:
        """Upload a JSONL file of requests and create its batch: (batch id, input file id)."""
        api = self._api()
        upload = await self._retrying(lambda: api.files.create(
            file=(f"{self.client.role}-batch.jsonl", lines.encode(), "application/jsonl"),
            purpose="batch"))
        batch = await self._retrying(lambda: api.batches.create(
            input_file_id=upload.id, endpoint=ENDPOINT, completion_window=completion_window))
        return batch.id, upload.id

    async def retrieve(self, batch_id: str) -> Any:
        """The batch's state; one the endpoint does not know (a restarted vLLM, another
        account) reads as failed, so its calls are resubmitted."""
        try:
            return await self._retrying(lambda: self._api().batches.retrieve(batch_id))
        except LLMCallError as err:
            if err.status_code != 404:
                raise
            return SimpleNamespace(id=batch_id, status="failed", input_file_id=None,
                                   output_file_id=None, error_file_id=None, errors=None)

    async def outcomes(self, batch: Any) -> list[Outcome]:
        """Every line of an ended batch's output and error files."""
        found: list[Outcome] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self._retrying(lambda f=file_id: self._api().files.content(f))
                found += [read_line(json.loads(line)) for line in content.text.splitlines()
                          if line.strip()]
        return found

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
