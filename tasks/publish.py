"""Immutable, versioned datasets: a Parquet snapshot, a manifest, and a ``datasets`` row.

A version's files live in a folder named by version and content hash and are never rewritten;
the ``datasets`` row (keyed by version) is the commit that makes it visible. The manifest records
row count, content hash, config hash and lineage, including the Delta version of every lake
table at publish time, so the inputs can be re-read by time travel.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks import storage
from tasks.lake import Lake


@dataclass(frozen=True)
class DatasetVersion:
    version: str
    number: int
    kind: str
    uri: str
    row_count: int
    content_hash: str
    config_hash: str
    lineage: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict) -> DatasetVersion:
        return cls(**{**row, "lineage": json.loads(row["lineage"])})

    @property
    def data_uri(self) -> str:
        return storage.join(self.uri, "data.parquet")


def content_hash(table: pa.Table, sort_by: list[str]) -> str:
    """Hash of the rows' content, independent of row order and file layout."""
    ordered = table.sort_by([(c, "ascending") for c in sort_by]) if sort_by else table
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, ordered.schema) as writer:
        writer.write_table(ordered.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()


def code_revision() -> str:
    """The git commit of the code that produced a dataset ('unknown' outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def list_versions(lake: Lake, kind: str | None = None) -> list[DatasetVersion]:
    flt = pc.field("kind") == kind if kind else None
    rows = lake.read("datasets", filter=flt).sort_by("number").to_pylist()
    return [DatasetVersion.from_row(r) for r in rows]


def get_version(lake: Lake, version: str) -> DatasetVersion:
    """A version by name (``v3``), number (``3``) or ``latest``."""
    versions = list_versions(lake)
    if not versions:
        raise LookupError("no dataset version has been published yet")
    if version == "latest":
        return versions[-1]
    wanted = version if version.startswith("v") else f"v{version}"
    for v in versions:
        if v.version == wanted:
            return v
    have = ", ".join(v.version for v in versions)
    raise LookupError(f"no dataset version {version!r}; have {have}")


def load_version(lake: Lake, version: str) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(get_version(lake, version).data_uri)))


def publish(lake: Lake, kind: str, table: pa.Table, sort_by: list[str], config_hash: str,
            lineage: dict[str, Any]) -> tuple[DatasetVersion, bool]:
    """Publish ``table`` as the next version; returns (version, created).

    Publishing content identical to the newest version of the same kind returns that version
    instead of a new one, so a rerun publishes nothing twice.
    """
    digest = content_hash(table, sort_by)
    existing = list_versions(lake)
    same_kind = [v for v in existing if v.kind == kind]
    if same_kind and same_kind[-1].content_hash == digest:
        return same_kind[-1], False
    number = (existing[-1].number + 1) if existing else 1
    version = f"v{number}"
    uri = storage.join(lake.root, "datasets", f"{version}-{digest[:12]}")
    now = datetime.now(UTC)
    full_lineage = {"table_versions": lake.versions(), "code_revision": code_revision(),
                    **lineage}
    manifest = {"version": version, "kind": kind, "row_count": table.num_rows,
                "content_hash": digest, "config_hash": config_hash, "lineage": full_lineage,
                "schema": table.schema.to_string(), "created_at": now.isoformat()}
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes(storage.join(uri, "data.parquet"), buffer.getvalue())
    storage.write_bytes(storage.join(uri, "manifest.json"),
                        json.dumps(manifest, indent=2, default=str).encode())
    row = {"version": version, "number": number, "kind": kind, "uri": uri,
           "row_count": table.num_rows, "content_hash": digest, "config_hash": config_hash,
           "lineage": json.dumps(full_lineage, default=str), "created_at": now}
    if lake.upsert("datasets", [row]) == 0:
        raise RuntimeError(f"dataset version {version} was published concurrently; retry")
    return DatasetVersion.from_row(row), True
