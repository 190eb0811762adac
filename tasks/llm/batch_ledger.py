"""The ``llm_batches`` table: which batches exist, what they carry, which are still open.

A batch gets a ``submitted`` row when it is created and a row of its end state when it is
collected; one without an end row is open, and whoever asks for a call it carries collects it
instead of submitting the call again (a killed run's rerun, the next night after a handover,
another worker of the same lake). Reading it takes no lease: a batch that waits for hours
blocks nobody.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow.compute as pc

from tasks.lake import Lake
from tasks.llm.batch_files import ENDED


class BatchLedger:
    """The batches of one model, as recorded in a lake (or nowhere when ``lake`` is None)."""

    def __init__(self, lake: Lake | None, model: str, role: str, run_id: str):
        self.lake = lake
        self.model = model
        self.role = role
        self.run_id = run_id

    def open_batches(self) -> list[tuple[str, set[str], int]]:
        """(batch id, request hashes, resubmit) of this model's batches without an end row."""
        if self.lake is None:
            return []
        rows = self.lake.read("llm_batches", columns=["batch_id", "status", "model",
                                                     "request_hashes", "resubmit"]).to_pylist()
        ended = {r["batch_id"] for r in rows if r["status"] in ENDED}
        return [(r["batch_id"], set(r["request_hashes"] or []), r["resubmit"] or 0) for r in rows
                if r["status"] == "submitted" and r["model"] == self.model
                and r["batch_id"] not in ended]

    def hashes_of(self, batch_id: str) -> set[str]:
        """The calls a batch carries, as recorded when it was submitted."""
        if self.lake is None:
            return set()
        rows = self.lake.read("llm_batches", columns=["batch_id", "request_hashes"],
                              filter=pc.field("batch_id") == batch_id).to_pylist()
        return {h for r in rows for h in (r["request_hashes"] or [])}

    def record(self, row: dict[str, Any]) -> None:
        """One state of a batch (``batch_id``, ``status`` and what is known at that state)."""
        if self.lake is not None:
            self.lake.upsert("llm_batches", [{
                "output_file_id": None, "error_file_id": None, "succeeded": None,
                "failed": None, "tokens_in": None, "tokens_out": None, "cost_usd": None,
                **row, "model": self.model, "role": self.role, "run_id": self.run_id,
                "created_at": datetime.now(UTC)}])
