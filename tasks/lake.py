"""The lake: Delta tables (via ``deltalake``) under one root, a local folder or ``s3://``.

Every write is one atomic Delta commit and is idempotent by the table's key: a merge that
inserts only rows whose key is not there yet, so writing the same rows twice leaves one copy
and a write killed before its commit leaves nothing visible. Each commit is a table version;
reading an older version is time travel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from tasks import storage
from tasks.redact import scrub_table
from tasks.schemas import TABLES, TableSpec

log = logging.getLogger(__name__)

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

    def ensure(self, name: str) -> DeltaTable:
        """Open a table, creating it empty with its schema on first use."""
        uri = self.uri(name)
        try:
            return DeltaTable(uri, storage_options=self._options())
        except TableNotFoundError:
            if not storage.is_s3(uri):
                storage.filesystem(uri)[0].create_dir(storage.filesystem(uri)[1])
            return DeltaTable.create(uri, self.spec(name).schema, mode="ignore",
                                     storage_options=self._options())

    def ensure_all(self) -> None:
        for name in TABLES:
            self.ensure(name)

    def table(self, name: str, version: int | None = None) -> DeltaTable:
        dt = self.ensure(name)
        if version is not None:
            dt.load_as_version(version)
        return dt

    def version(self, name: str) -> int:
        return self.ensure(name).version()

    def versions(self) -> dict[str, int]:
        """Current version of every table: the lineage stamp of a dataset or a run."""
        return {name: self.version(name) for name in TABLES}

    def files(self, name: str, version: int | None = None) -> list[str]:
        """URIs of the table's live Parquet files at a version (default: the newest)."""
        return self.table(name, version).file_uris()

    def dataset(self, name: str, version: int | None = None) -> pads.Dataset:
        """A pyarrow dataset of the table's live files, in their physical (view) types.

        delta-rs writes strings as ``string_view``, for which pyarrow has no comparison kernels
        (apache/arrow#49368): filter with :meth:`read`, which casts first, not with a scanner.
        """
        fs, _ = storage.filesystem(self.root)
        paths = [storage.filesystem(uri)[1] for uri in self.files(name, version)]
        if not paths:
            return pads.dataset(self.spec(name).schema.empty_table())
        return pads.dataset(paths, format="parquet", filesystem=fs)

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
        paths = [storage.filesystem(uri)[1] for uri in dt.file_uris()]
        found: set[tuple] = set()
        if paths:
            table = pads.dataset(paths, format="parquet",
                                 filesystem=storage.filesystem(self.root)[0]).to_table(columns=keys)
            found = set(zip(*(table.column(k).to_pylist() for k in keys), strict=True))
        self._keys[name] = (version, found)
        return found

    def upsert(self, name: str, rows: pa.Table | Iterable[Mapping[str, Any]]) -> int:
        """Append the rows whose key is not in the table yet, in one atomic commit.

        Returns how many were inserted. The key check reads only key columns (cached between
        this process's own commits). A Delta MERGE would also guard against a second writer
        racing on the same table, but delta-rs scans every target file per merge (time and
        memory grow with the table: 5 GB RSS after 100 merges into a 1.8 GB prompts table), so
        each table has one writer at a time: the nightly flow, under its Prefect concurrency
        limit.
        """
        spec = self.spec(name)
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(
            list(rows), schema=spec.schema)
        table = _first_per_key(table.select(spec.schema.names).cast(spec.schema), spec.keys)
        if table.num_rows == 0:
            return 0
        table = scrub_table(table, keep_shapes=SOURCE_TEXT.get(name, ()))
        existing = self.keys(name)
        batch_keys = list(zip(*(table.column(k).to_pylist() for k in spec.keys), strict=True))
        new = [i for i, key in enumerate(batch_keys) if key not in existing]
        if not new:
            return 0
        version = self._keys[name][0]
        write_deltalake(self.uri(name), table.take(new), mode="append",
                        storage_options=self._options())
        if self.ensure(name).version() == version + 1:  # nobody else committed in between
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
