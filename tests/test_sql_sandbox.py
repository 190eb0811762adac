"""`longreward sql` only reads the lake: escape attempts are refused and change nothing."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks import catalog
from tasks.lake import Lake

NOW = datetime(2026, 11, 23, tzinfo=UTC)
READ_ONLY = "only one read-only query"
SANDBOX = "SQL sandbox reads only"
LOCKED = "settings cannot be changed"

# (name, SQL with {lake} = the lake root, {part} = one of its Parquet files, {out} = a folder
# outside the lake, {secret} = a file outside the lake; what the refusal says)
ATTEMPTS = [
    ("copy over a lake file", "COPY (SELECT 'forged' AS query) TO '{part}' (FORMAT parquet)",
     READ_ONLY),
    ("copy a table out", "COPY prompts TO '{out}/p.csv'", READ_ONLY),
    ("explain analyze copy", "EXPLAIN ANALYZE COPY (SELECT 1) TO '{part}'", "EXPLAIN of COPY"),
    ("explain analyze copy with options",
     "EXPLAIN ANALYZE (FORMAT json) COPY (SELECT 1) TO '{out}/x.csv'", "EXPLAIN of COPY"),
    ("explain analyze delete", "EXPLAIN ANALYZE DELETE FROM prompts", "EXPLAIN of DELETE"),
    ("explain analyze of a setting", "EXPLAIN ANALYZE SET threads = 1", "EXPLAIN of SET"),
    ("nested explain", "EXPLAIN EXPLAIN ANALYZE SET threads = 1", "cannot parse"),
    ("set a setting", "SET threads = 1", READ_ONLY),
    ("open the sandbox", "SET enable_external_access = true", READ_ONLY),
    ("reset a setting", "RESET lock_configuration", READ_ONLY),
    ("set a variable", "SET VARIABLE x = 1", READ_ONLY),
    ("call", "CALL enable_logging(storage = 'file', storage_path = '{out}/logs')", READ_ONLY),
    ("checkpoint", "CHECKPOINT", READ_ONLY),
    ("delete", "DELETE FROM prompts", READ_ONLY),
    ("insert", "INSERT INTO prompts SELECT * FROM prompts", READ_ONLY),
    ("update", "UPDATE prompts SET query = 'forged'", READ_ONLY),
    ("create table", "CREATE TABLE evil AS SELECT 1", READ_ONLY),
    ("replace a view", "CREATE OR REPLACE VIEW prompts AS SELECT 'forged' AS query", READ_ONLY),
    ("create secret", "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", READ_ONLY),
    ("drop", "DROP VIEW rewards", READ_ONLY),
    ("alter", "ALTER VIEW rewards RENAME TO r", READ_ONLY),
    ("attach", "ATTACH '{out}/x.duckdb' AS x", READ_ONLY),
    ("detach", "DETACH memory", READ_ONLY),
    ("install", "INSTALL httpfs", READ_ONLY),
    ("force install", "FORCE INSTALL httpfs", READ_ONLY),
    ("load", "LOAD httpfs", READ_ONLY),
    ("pragma", "PRAGMA enable_profiling", READ_ONLY),
    ("export database", "EXPORT DATABASE '{out}/dump'", READ_ONLY),
    ("copy database", "COPY FROM DATABASE memory TO x", READ_ONLY),
    ("prepare a write", "PREPARE p AS DELETE FROM prompts", READ_ONLY),
    ("transaction", "BEGIN TRANSACTION", READ_ONLY),
    ("vacuum", "VACUUM", READ_ONLY),
    ("merge", "MERGE INTO prompts USING prompts p ON (p.prompt_id = prompts.prompt_id) "
     "WHEN MATCHED THEN DELETE", READ_ONLY),
    ("two statements", "SELECT 1; DELETE FROM prompts", "got 2 statements"),
    ("a comment hiding a statement", "SELECT 1 /* ; */ ; COPY prompts TO '{out}/c.csv'",
     "got 2 statements"),
    ("a line comment before a write", "-- just a select\nDELETE FROM prompts", READ_ONLY),
    ("a CTE that deletes", "WITH x AS (DELETE FROM prompts RETURNING *) SELECT * FROM x",
     "holds DELETE"),
    ("a CTE that copies", "WITH x AS (COPY prompts TO '{out}/cte.csv') SELECT 1", "holds COPY"),
    ("explain analyze of a CTE write",
     "EXPLAIN ANALYZE WITH x AS (INSERT INTO prompts SELECT * FROM prompts RETURNING *) "
     "SELECT * FROM x", "holds INSERT"),
    ("read_csv outside the lake", "SELECT * FROM read_csv('/etc/passwd', sep = ':')", SANDBOX),
    ("read_text outside the lake", "SELECT * FROM read_text('{secret}')", SANDBOX),
    ("read_blob of the environment", "SELECT * FROM read_blob('/proc/self/environ')", SANDBOX),
    ("read_parquet outside the lake", "SELECT * FROM read_parquet('{out}/*.parquet')", SANDBOX),
    ("a path that climbs out of the lake",
     "SELECT * FROM read_text('{lake}/tables/../../secret.txt')", SANDBOX),
    ("a lake file by path", "SELECT * FROM read_parquet('{part}')", SANDBOX),
    ("glob", "SELECT * FROM glob('/etc/*')", SANDBOX),
    ("sniff_csv", "SELECT * FROM sniff_csv('{secret}')", SANDBOX),
    ("a file as a table", "SELECT * FROM '{secret}'", "does not exist"),
    ("the network", "SELECT * FROM read_parquet('https://example.com/x.parquet')", SANDBOX),
    ("stored secrets", "SELECT * FROM duckdb_secrets()", SANDBOX),
    ("logging to a file via a table function",
     "SELECT * FROM enable_logging(storage = 'file', storage_path = '{out}/logs')", LOCKED),
    ("a query string that writes", "SELECT * FROM query('COPY prompts TO ''{out}/q.csv''')",
     "Expected a single SELECT"),
]


def _fill(lake: Lake) -> None:
    lake.ensure_all()
    lake.upsert("prompts", [{
        "prompt_id": f"p{i}", "source_id": None, "source_uri": "s3://b/x.jsonl",
        "source_etag": "e", "source_line": i, "context": "ctx", "query": f"q{i}", "meta": None,
        "context_tokens": 1, "query_tokens": 1, "tokenizer": "t", "run_id": "r",
        "ingested_at": NOW} for i in range(3)])


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sandbox")
    lake = Lake(str(root / "lake"))
    _fill(lake)
    (root / "out").mkdir()
    (root / "secret.txt").write_text("sk-not-for-you\n")
    before = _snapshot(root)
    yield {"lake": lake, "root": root, "part": lake.files("prompts")[0]}
    assert _snapshot(root) == before, "an escape attempt changed a file"


def _sql(world: dict, template: str) -> str:
    return template.format(lake=world["lake"].root, part=world["part"],
                           out=world["root"] / "out", secret=world["root"] / "secret.txt")


@pytest.mark.parametrize(("template", "says"), [(t, s) for _, t, s in ATTEMPTS],
                         ids=[name for name, _, _ in ATTEMPTS])
def test_escape_attempt_is_refused(world, template, says):
    with pytest.raises((catalog.ReadOnlyError, duckdb.Error)) as caught:
        catalog.query(world["lake"], _sql(world, template)).fetchall()
    err = caught.value
    message = str(err) if isinstance(err, catalog.ReadOnlyError) else catalog.refusal(err)
    assert says in (message or str(err))


def test_the_lake_reads_back_unchanged_after_the_attempts(world):
    for _, template, _ in ATTEMPTS:
        with contextlib.suppress(catalog.ReadOnlyError, duckdb.Error):
            catalog.query(world["lake"], _sql(world, template)).fetchall()
    rows = catalog.query(world["lake"], "SELECT query FROM prompts ORDER BY 1").fetchall()
    assert rows == [("q0",), ("q1",), ("q2",)]
    assert not list((world["root"] / "out").iterdir())


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM prompts", "FROM prompts LIMIT 1", "DESCRIBE prompts", "SHOW TABLES",
    "SUMMARIZE prompts", "EXPLAIN SELECT * FROM rewards", "EXPLAIN ANALYZE SELECT 1",
    "WITH a AS (SELECT query FROM prompts) SELECT * FROM a", "-- a comment\nSELECT 1;",
    "SELECT * FROM rewards", "VALUES (1)"])
def test_read_only_queries_still_work(world, sql):
    assert catalog.query(world["lake"], sql).fetchall() is not None


def test_the_cli_says_refused_in_one_line_and_exits_2(world):
    for template in ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{part}'",
                     "SELECT * FROM read_text('{secret}')"):
        out = CliRunner().invoke(app, ["sql", _sql(world, template),
                                       "--lake", world["lake"].root])
        assert out.exit_code == 2
        assert out.output.startswith("refused: ") and "Traceback" not in out.output


def test_the_catalog_file_stays_a_plain_catalog(world, tmp_path):
    path = catalog.write_catalog(world["lake"], str(tmp_path / "catalog.duckdb"))
    con = duckdb.connect(path, read_only=True)
    assert con.execute("SELECT count(*) FROM prompts").fetchone() == (3,)
    assert con.execute("SELECT current_setting('enable_external_access'), "
                       "current_setting('lock_configuration')").fetchone() == (True, False)
    con.execute("SET threads = 2")  # a user's own client keeps its freedom


def test_an_s3_lake_is_read_inside_the_sandbox(bucket):
    lake = Lake(f"s3://{bucket}/lake")
    _fill(lake)
    assert catalog.query(lake, "SELECT count(*) FROM prompts").fetchall() == [(3,)]
    with pytest.raises(duckdb.PermissionException):
        catalog.query(lake, f"SELECT * FROM read_parquet('{lake.files('prompts')[0]}')"
                      ).fetchall()
