"""The lake: Delta tables (via ``deltalake``) under one root, a local folder or ``s3://``.

Every write is one atomic Delta commit and is idempotent by the table's key: a merge that
inserts only rows whose key is not there yet, so writing the same rows twice leaves one copy
and a write killed before its commit leaves nothing visible. Each commit is a table version;
reading an older version is time travel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from tasks import storage
from tasks.leases import Lease, Store
from tasks.redact import scrub_table
from tasks.schemas import TABLES, TableSpec

log = logging.getLogger(__name__)
TABLE_LEASE_S = 60.0  # a writer killed inside a write blocks the table this long at most

# Source text and sampled answers are data: kept as written, except that a configured API key
# is scrubbed from them too; every other string column also loses anything token-shaped.
SOURCE_TEXT = {"prompts": ("context", "query", "meta"), "responses": ("text",)}


class Lake:
    """Typed access to the lake's tables."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") if root != "/" else root
        self._keys: dict[str, tuple[int, set[tuple]]] = {}

    def __repr__(self) -> str:
        return f"Lake({self.root!r})"

    def uri(self, name: str) -> str:
        return storage.join(self.root, "tables", name)

    def spec(self, name: str) -> TableSpec:
        try:
            return TABLES[name]
        except KeyError:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}") from None

    def _options(self) -> dict[str, str] | None:
        return storage.delta_storage_options(self.root)

    def exists(self) -> bool:
        """Whether a lake is here at all (any table was ever written under its root)."""
        tables = storage.join(self.root, "tables")
        if storage.is_s3(tables):
            bucket, prefix = storage.split_s3(tables)
            client = storage.s3_client()
            try:
                found = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/", MaxKeys=1)
            except client.exceptions.NoSuchBucket:
                return False
            return found.get("KeyCount", 0) > 0
        return Path(storage.filesystem(tables)[1]).is_dir()

    def open(self, name: str) -> DeltaTable | None:
        """Open a table; None when it was never written (reading never creates it)."""
        self.spec(name)
        try:
            return DeltaTable(self.uri(name), storage_options=self._options())
        except TableNotFoundError:
            return None

    def ensure(self, name: str) -> DeltaTable:
        """Open a table, creating it empty with its schema on first use (writers only)."""
        uri = self.uri(name)
        dt = self.open(name)
        if dt is not None:
            return dt
        if not storage.is_s3(uri):
            storage.filesystem(uri)[0].create_dir(storage.filesystem(uri)[1])
        return DeltaTable.create(uri, self.spec(name).schema, mode="ignore",
                                 storage_options=self._options())

    def ensure_all(self) -> None:
        for name in TABLES:
            self.ensure(name)

    def table(self, name: str, version: int | None = None) -> DeltaTable | None:
        """The table at a version (default: the newest); None if it was never written."""
        dt = self.open(name)
        if dt is not None and version is not None:
            dt.load_as_version(version)
        return dt

    def version(self, name: str) -> int:
        """The table's newest version; -1 for a table never written."""
        dt = self.open(name)
        return -1 if dt is None else dt.version()

    def versions(self) -> dict[str, int]:
        """Current version of every table: the lineage stamp of a dataset or a run."""
        return {name: self.version(name) for name in TABLES}

    def files(self, name: str, version: int | None = None) -> list[str]:
        """URIs of the table's live Parquet files at a version (default: the newest)."""
        dt = self.table(name, version)
        return [] if dt is None else dt.file_uris()

    def dataset(self, name: str, version: int | None = None) -> pads.Dataset:
        """A pyarrow dataset of the table's live files in the declared schema.

        delta-rs writes strings as ``string_view``; the scan casts them to the declared types
        (pyarrow has no comparison kernels for views, apache/arrow#49368). Files written before
        a column was added read it as NULL.
        """
        return self._files_dataset(name, self.files(name, version))

    def _files_dataset(self, name: str, uris: list[str]) -> pads.Dataset:
        schema = self.spec(name).schema
        paths = [storage.filesystem(uri)[1] for uri in uris]
        if not paths:
            return pads.dataset(schema.empty_table())
        return pads.dataset(paths, format="parquet", schema=schema,
                            filesystem=storage.filesystem(self.root)[0])

    def read(self, name: str, version: int | None = None, columns: list[str] | None = None,
             filter: pc.Expression | None = None) -> pa.Table:
        """Rows in the table's declared schema; ``filter`` may use any column in ``columns``."""
        spec = self.spec(name)
        schema = pa.schema([spec.schema.field(c) for c in (columns or spec.schema.names)])
        table = self.dataset(name, version).to_table(columns=schema.names).cast(schema)
        return table if filter is None else table.filter(filter)

    def count(self, name: str) -> int:
        return self.dataset(name).count_rows()

    def keys(self, name: str) -> set[tuple]:
        """Every key in the table, read from the key columns only and cached per version."""
        dt = self.ensure(name)
        version = dt.version()
        cached = self._keys.get(name)
        if cached and cached[0] == version:
            return cached[1]
        keys = list(self.spec(name).keys)
        table = self._files_dataset(name, dt.file_uris()).to_table(columns=keys)
        found = set(zip(*(table.column(k).to_pylist() for k in keys), strict=True))
        self._keys[name] = (version, found)
        return found

    def upsert(self, name: str, rows: pa.Table | Iterable[Mapping[str, Any]]) -> int:
        """Append the rows whose key is not in the table yet, in one atomic commit.

        Returns how many were inserted. The key check reads only key columns (cached between
        this process's own commits). Concurrent writers (flows, CLI stages, workers on other
        machines) take turns under a lease per table in the lake's store
        (:mod:`tasks.leases`). A Delta MERGE would also guard against a racing writer, but
        delta-rs scans every target file per merge (time and memory grow with the table: 5 GB
        RSS after 100 merges into a 1.8 GB prompts table) and retries a whole merge on
        conflict; the lease costs two small writes per commit.
        """
        spec = self.spec(name)
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(
            list(rows), schema=spec.schema)
        table = _first_per_key(table.select(spec.schema.names).cast(spec.schema), spec.keys)
        if table.num_rows == 0:
            return 0
        table = scrub_table(table, keep_shapes=SOURCE_TEXT.get(name, ()))
        batch_keys = list(zip(*(table.column(k).to_pylist() for k in spec.keys), strict=True))
        # One writer per table at a time, whatever process or machine: the key check and the
        # append happen under the table's lease in the lake's store, so two writers never
        # both append the same key (Delta appends never conflict with each other).
        with Lease(Store(self.root), f"table-{name}", ttl_s=TABLE_LEASE_S):
            existing = self.keys(name)
            new = [i for i, key in enumerate(batch_keys) if key not in existing]
            if not new:
                return 0
            version = self._keys[name][0]
            # schema_mode="merge": a column added to the spec since the table was made is
            # added by this commit (an append-only migration); old files read it as NULL
            write_deltalake(self.uri(name), table.take(new), mode="append",
                            schema_mode="merge", storage_options=self._options())
            if self.ensure(name).version() == version + 1:  # nobody else committed between
                self._keys[name] = (version + 1, existing | {batch_keys[i] for i in new})
        log.debug("upsert %s: %d new of %d", name, len(new), table.num_rows)
        return len(new)


def _first_per_key(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Keep the first row of each key in a batch."""
    seen: set[tuple] = set()
    keep: list[int] = []
    columns = [table.column(k).to_pylist() for k in keys]
    for i, key in enumerate(zip(*columns, strict=True)):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return table if len(keep) == table.num_rows else table.take(keep)
