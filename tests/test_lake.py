"""The lake: keyed idempotent writes, exact rows, time travel, the same code on s3://."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow.compute as pc
import pytest

from tasks.lake import Lake

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def _objects(*etags: str) -> list[dict]:
    return [{"source_uri": f"s3://b/{e}", "etag": e, "size": 1, "n_prompts": 1, "n_rejects": 0,
             "run_id": "r", "ingested_at": NOW} for e in etags]


def test_writing_the_same_rows_twice_leaves_one_copy(lake):
    assert lake.upsert("ingested_objects", _objects("a", "b")) == 2
    assert lake.upsert("ingested_objects", _objects("a", "b", "c")) == 1
    rows = lake.read("ingested_objects").sort_by("etag").to_pylist()
    assert [r["etag"] for r in rows] == ["a", "b", "c"]
    assert rows[0] == _objects("a")[0]


def test_duplicate_keys_within_one_batch_keep_the_first(lake):
    first, second = _objects("a", "a")
    second["size"] = 99
    lake.upsert("ingested_objects", [first, second])
    assert lake.read("ingested_objects", columns=["size"]).column(0).to_pylist() == [1]


def test_each_write_is_a_version_and_old_versions_stay_readable(lake):
    assert lake.version("ingested_objects") == -1  # never written
    lake.upsert("ingested_objects", _objects("a"))
    v1 = lake.version("ingested_objects")
    lake.upsert("ingested_objects", _objects("b"))
    assert lake.version("ingested_objects") == v1 + 1
    assert lake.read("ingested_objects", version=v1).column("etag").to_pylist() == ["a"]


def test_filtered_reads_work_on_delta_string_columns(lake):
    lake.upsert("ingested_objects", _objects("a", "b", "c"))
    got = lake.read("ingested_objects", columns=["etag"],
                    filter=pc.field("etag").isin(["b", "c"]))
    assert sorted(got.column(0).to_pylist()) == ["b", "c"]


def test_rows_that_break_the_schema_are_refused(lake):
    bad = _objects("a")[0] | {"run_id": None}
    with pytest.raises((ValueError, TypeError)):
        lake.upsert("ingested_objects", [bad])
    assert lake.count("ingested_objects") == 0


def test_s3_lake_uses_the_same_code_path(bucket):
    lake = Lake(f"s3://{bucket}/lake")
    lake.upsert("ingested_objects", _objects("a", "b"))
    lake.upsert("ingested_objects", _objects("b", "c"))
    assert sorted(lake.read("ingested_objects").column("etag").to_pylist()) == ["a", "b", "c"]
    assert lake.version("ingested_objects") == 2


def test_sql_over_an_s3_lake(bucket):
    from tasks import catalog

    lake = Lake(f"s3://{bucket}/lake")
    lake.upsert("ingested_objects", _objects("a", "b"))
    rows = catalog.query(lake, "SELECT etag FROM ingested_objects ORDER BY etag").fetchall()
    assert rows == [("a",), ("b",)]


def test_a_table_made_before_a_column_was_added_keeps_working(lake):
    """Columns added to a spec are an append-only migration: old files read them as NULL."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from tasks import catalog
    from tasks.schemas import KEY_POINTS

    old = pa.schema([f for f in KEY_POINTS.schema
                     if f.name not in ("extraction_key", "tokenizer", "chunk_tokens")])
    row = {"prompt_id": "p", "chunk_index": 0, "chunk_start": 0, "chunk_end": 9,
           "information": "old", "status": "ok", "judge_model": "j", "run_id": "r"}
    DeltaTable.create(lake.uri("key_points"), old)
    write_deltalake(lake.uri("key_points"), pa.Table.from_pylist([row], schema=old),
                    mode="append")
    assert catalog.connect(lake).execute(
        "SELECT information, extraction_key FROM key_points").fetchall() == [("old", None)]
    # the same (prompt, chunk) under an extraction key is a new row, not a duplicate
    assert lake.upsert("key_points", [{**row, "information": "new", "extraction_key": "k1",
                                       "tokenizer": "t", "chunk_tokens": 512}]) == 1
    got = {r["information"]: r["extraction_key"] for r in lake.read("key_points").to_pylist()}
    assert got == {"old": None, "new": "k1"}
    con = catalog.connect(lake)
    assert sorted(con.execute("SELECT information, chunk_tokens FROM key_points").fetchall(),
                  key=str) == [("new", 512), ("old", None)]


def test_reading_never_writes(tmp_path, bucket):
    """Reading a lake that is not there (a mistyped --lake) answers empty and creates nothing:
    no folder, no bucket objects, no tables."""
    from tasks import catalog, storage

    missing = Lake(str(tmp_path / "nope"))
    assert not missing.exists()
    assert missing.read("prompts").num_rows == 0 and missing.version("prompts") == -1
    assert catalog.connect(missing).execute("SELECT count(*) FROM rewards").fetchone() == (0,)
    assert not (tmp_path / "nope").exists()
    remote = Lake(f"s3://{bucket}/typo")
    assert not remote.exists() and remote.count("judgments") == 0
    assert storage.s3_client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    remote.upsert("ingested_objects", _objects("a"))
    assert remote.exists() and remote.count("ingested_objects") == 1
