"""SQL over the lake with DuckDB: live connections and a catalog file for any DuckDB client.

DuckDB's delta/httpfs extensions download at run time and fail offline, so the lake's tables
reach DuckDB as pyarrow datasets of each Delta table's live files. The derived views
(``rewards``, ``pairs_latest``, ...) are the SQL files in ``sql/views``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import duckdb
import pyarrow as pa

from tasks import storage
from tasks.lake import Lake
from tasks.schemas import TABLES
from tasks.sql_guard import ReadOnlyError, check_read_only, lock_down, refusal

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
__all__ = ["ReadOnlyError", "connect", "query", "refusal", "sandbox", "write_catalog"]
_DUCK_TYPES = {pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE",
               pa.bool_(): "BOOLEAN", pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ"}


def view_sql() -> list[str]:
    return [p.read_text() for p in sorted((SQL_DIR / "views").glob("*.sql"))]


def _base_view_sql(lake: Lake, name: str, con: duckdb.DuckDBPyConnection) -> None:
    """A view of one lake table over its live Parquet files (DuckDB's own reader)."""
    dt = lake.table(name)
    files = [] if dt is None else dt.file_uris()
    if files:
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        source = f"read_parquet([{listed}], union_by_name = true)"
        # A column the spec added after this table's last write reads as NULL (a column in
        # the table's schema is in at least one file: union_by_name fills the others).
        present = {field.name for field in dt.schema().fields}
        columns = [field.name if field.name in present
                   else f"CAST(NULL AS {_DUCK_TYPES.get(field.type, 'VARCHAR')}) AS {field.name}"
                   for field in lake.spec(name).schema]
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {', '.join(columns)} "
                    f"FROM {source}")
    else:
        con.register("_empty", lake.spec(name).schema.empty_table())
        con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM _empty")
        con.unregister("_empty")


def _prepare_s3(con: duckdb.DuckDBPyConnection) -> None:
    """Let DuckDB read s3:// through httpfs when it loads, else through pyarrow's S3 client."""
    try:
        con.execute("LOAD httpfs")
        endpoint = storage.s3_endpoint()
        con.execute("CREATE OR REPLACE SECRET lake_s3 (TYPE s3, PROVIDER credential_chain"
                    + (f", ENDPOINT '{urlparse(endpoint).netloc}', USE_SSL "
                       f"{str(endpoint.startswith('https')).lower()}, URL_STYLE 'path'"
                       if endpoint else "") + ")")
    except duckdb.Error:
        from fsspec.implementations.arrow import ArrowFSWrapper

        class S3ViaArrow(ArrowFSWrapper):
            protocol = "s3"  # DuckDB routes s3:// paths to a filesystem by this name

        con.register_filesystem(S3ViaArrow(storage.filesystem("s3://bucket")[0]))


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with every lake table and derived view."""
    con = duckdb.connect()
    if storage.is_s3(lake.root):
        _prepare_s3(con)
    for name in TABLES:
        _base_view_sql(lake, name, con)
    for sql in view_sql():
        con.execute(sql)
    return con


def sandbox(lake: Lake) -> duckdb.DuckDBPyConnection:
    """A locked in-memory connection that can read the lake's tables and views, nothing else.

    Each table is a pyarrow dataset of its live files (local or s3://, read by pyarrow, not by
    DuckDB's file systems), registered before the sandbox closes; after that DuckDB opens no
    file by path at all (see :mod:`tasks.sql_guard`).
    """
    con = duckdb.connect()
    for name in TABLES:
        con.register(name, lake.dataset(name))
    for sql in view_sql():
        con.execute(sql)
    return lock_down(con)


def query(lake: Lake, sql: str, params: list | None = None) -> duckdb.DuckDBPyRelation:
    """Run one read-only query (SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) over the lake.

    Raises :class:`ReadOnlyError` for anything else; the sandbox refuses any file access
    even if a statement got past the check.
    """
    con = sandbox(lake)
    check_read_only(con, sql)
    return con.sql(sql, params=params)


def write_catalog(lake: Lake, path: str) -> str:
    """Write a DuckDB database file whose views read the lake's current files.

    Replaced atomically (write aside, then rename), so a client never opens half a catalog.
    Base views list each table's live Parquet files: a snapshot of the lake as of now, refreshed
    after every run. For an s3:// lake, opening it needs DuckDB's httpfs extension.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".duckdb", dir=target.parent)
    os.close(fd)
    os.unlink(tmp)
    con = duckdb.connect(tmp)
    try:
        if storage.is_s3(lake.root):  # the views bind their files now: DuckDB must reach S3
            _prepare_s3(con)
        for name in TABLES:
            _base_view_sql(lake, name, con)
        for sql in view_sql():
            con.execute(sql)
    finally:
        con.close()
    os.replace(tmp, target)
    return str(target)
