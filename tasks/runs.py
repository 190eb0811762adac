"""Run identifiers: sortable by time, unique across machines."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def new_run_id() -> str:
    """``20261123T120501Z-1a2b3c4d``: sorts by start time; the suffix keeps parallel runs apart."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
