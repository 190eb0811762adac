"""Lake maintenance: compact small files, vacuum unreferenced ones, keep what versions need.

Every nightly write is one small Delta commit per table, so after a year a table is hundreds
of small Parquet files and every query opens all of them. Compaction (delta-rs
``optimize.compact``) rewrites them into few large files in a new table version; vacuum then
deletes files no longer referenced, once they are older than the retention period (concurrent
readers of an older snapshot keep working meanwhile). It never deletes a file that a published
dataset version needs: each version records the Delta version of every table it was built
from (its lineage, for time travel), and those versions are kept (``keep_versions``).

Both operations are safe beside running writers: a compaction commit does not conflict with
blind appends, and vacuum only removes files no live or pinned version references.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass

from tasks.lake import Lake
from tasks.schemas import TABLES

log = logging.getLogger(__name__)
DEFAULT_RETENTION_HOURS = 168


@dataclass
class TableMaintenance:
    table: str
    files_before: int
    files_after: int
    compacted_away: int     # small files replaced by compaction
    vacuumed: int           # unreferenced files deleted (or that would be, in a dry run)
    kept_versions: list[int]

    def as_dict(self) -> dict:
        return asdict(self)


def pinned_versions(lake: Lake) -> dict[str, list[int]]:
    """Per table, the Delta versions that published dataset versions were built from."""
    pinned: dict[str, set[int]] = defaultdict(set)
    for row in lake.read("datasets", columns=["lineage"]).to_pylist():
        for table, version in json.loads(row["lineage"]).get("table_versions", {}).items():
            pinned[table].add(int(version))
    return {table: sorted(versions) for table, versions in pinned.items()}


def maintain_table(lake: Lake, name: str, pinned: list[int], *,
                   retention_hours: int = DEFAULT_RETENTION_HOURS, compact: bool = True,
                   dry_run: bool = False) -> TableMaintenance:
    dt = lake.open(name)
    if dt is None:  # never written: nothing to do, and maintenance creates nothing
        return TableMaintenance(name, 0, 0, 0, 0, [])
    before = len(dt.file_uris())
    removed = 0
    if compact and not dry_run and before > 1:
        metrics = dt.optimize.compact()
        removed = int(metrics.get("numFilesRemoved", 0))
        dt = lake.ensure(name)
    live = [v for v in pinned if 0 <= v <= dt.version()]
    deleted = dt.vacuum(retention_hours=retention_hours, dry_run=dry_run,
                        enforce_retention_duration=False, keep_versions=live or None)
    return TableMaintenance(name, before, len(lake.ensure(name).file_uris()), removed,
                            len(deleted), live)


def maintain(lake: Lake, *, retention_hours: int = DEFAULT_RETENTION_HOURS,
             compact: bool = True, dry_run: bool = False) -> list[TableMaintenance]:
    """Compact and vacuum every table of the lake; returns what was done per table."""
    if retention_hours < 0:
        raise ValueError("retention_hours must be >= 0")
    pinned = pinned_versions(lake)
    done = []
    for name in TABLES:
        result = maintain_table(lake, name, pinned.get(name, []),
                                retention_hours=retention_hours, compact=compact,
                                dry_run=dry_run)
        log.info("maintain %s: %d -> %d files, %d vacuumed", name, result.files_before,
                 result.files_after, result.vacuumed)
        done.append(result)
    return done
