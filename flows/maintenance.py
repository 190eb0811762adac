"""The ``lake-maintenance`` flow: compaction and vacuum of the lake on a schedule (weekly by
default, ``infra/prefect.yaml``), so a year of nightly commits stays fast to query."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from tasks import catalog
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.maintenance import DEFAULT_RETENTION_HOURS, maintain


@task(name="maintain", retries=2, retry_delay_seconds=60)
def maintain_task(lake: str, retention_hours: int) -> list[dict]:
    return [t.as_dict() for t in maintain(Lake(lake), retention_hours=retention_hours)]


@flow(name="lake-maintenance")
def lake_maintenance(lake: str | None = None,
                     retention_hours: int = DEFAULT_RETENTION_HOURS) -> list[dict]:
    """Compact and vacuum every table; never a file a published dataset version needs."""
    settings = load_settings(None, lake=lake)
    done = maintain_task(settings.lake, retention_hours)
    catalog.write_catalog(Lake(settings.lake), settings.catalog_path)
    get_run_logger().info("maintained %d tables: %s", len(done),
                          ", ".join(f"{t['table']} {t['files_before']}->{t['files_after']}"
                                    for t in done))
    return done
