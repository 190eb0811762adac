"""Lake maintenance compacts small files, vacuums unreferenced ones, and keeps every file a
published dataset version's lineage needs."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from tasks import catalog
from tasks.lake import Lake
from tasks.maintenance import maintain
from tasks.publish import get_version, publish

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _night(lake: Lake, n: int) -> None:
    lake.upsert("ingested_objects", [{
        "source_uri": f"s3://b/{n}-{i}", "etag": f"{n}-{i}", "size": i, "n_prompts": 1,
        "n_rejects": 0, "run_id": f"night-{n}", "ingested_at": NOW} for i in range(5)])


def test_compaction_and_vacuum_keep_data_and_published_lineage(lake):
    for n in range(6):
        _night(lake, n)
    version, _ = publish(lake, "preference", pa.table({"prompt_id": ["p"], "x": [1]}),
                         sort_by=["prompt_id"], config_hash="c", lineage={})
    pinned = get_version(lake, version.version).lineage["table_versions"]["ingested_objects"]
    for n in range(6, 12):
        _night(lake, n)
    rows_before = lake.count("ingested_objects")
    old_snapshot = lake.read("ingested_objects", version=pinned).num_rows

    done = {t.table: t for t in maintain(lake, retention_hours=0)}
    objects = done["ingested_objects"]
    assert objects.files_before == 12 and objects.files_after == 1
    assert objects.compacted_away == 12 and objects.vacuumed > 0
    assert pinned in objects.kept_versions
    # the data is intact, through Lake and SQL; the published version's inputs still time-travel
    assert lake.count("ingested_objects") == rows_before == 60
    assert catalog.connect(lake).execute("SELECT count(*) FROM ingested_objects").fetchone() \
        == (60,)
    assert lake.read("ingested_objects", version=pinned).num_rows == old_snapshot == 30
    # writers go on as before after maintenance
    _night(lake, 12)
    assert lake.count("ingested_objects") == 65


def test_a_dry_run_changes_nothing(lake):
    for n in range(3):
        _night(lake, n)
    files = lake.files("ingested_objects")
    done = {t.table: t for t in maintain(lake, retention_hours=0, dry_run=True)}
    assert done["ingested_objects"].files_after == 3
    assert lake.files("ingested_objects") == files


def test_the_maintain_command(lake):
    from typer.testing import CliRunner

    from flows.cli import app

    for n in range(3):
        _night(lake, n)
    result = CliRunner().invoke(app, ["maintain", "--lake", lake.root, "--retention-hours", "0"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "ingested_objects" in result.output and len(lake.files("ingested_objects")) == 1
    assert CliRunner().invoke(app, ["maintain", "--lake", lake.root,
                                    "--retention-hours", "-1"]).exit_code == 2
