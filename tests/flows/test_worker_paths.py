"""A deployment's run starts in a worker's scratch folder, deleted after the run: nothing the
user keeps may land there, neither by a relative path nor by a default relative to it."""

from __future__ import annotations

import pytest

import flows.nightly
from tasks.config import ConfigError, load_settings
from tasks.preflight import check_worker_paths


@pytest.mark.parametrize("name, paths", [
    ("lake", {"lake": "lake"}),
    ("source", {"lake": "s3://bucket/lake", "source": "incoming"}),
    ("catalog", {"lake": "s3://bucket/lake", "catalog": "catalog.duckdb"}),
])
def test_a_relative_path_in_a_deployment_run_is_refused_naming_the_setting(name, paths):
    refusal = f"{name} is the relative path .*LONGREWARD_{name.upper()}"
    with pytest.raises(ConfigError, match=refusal):
        check_worker_paths(**paths)


def test_absolute_paths_and_buckets_are_accepted(tmp_path):
    check_worker_paths(str(tmp_path / "lake"), "s3://bucket/in", str(tmp_path / "c.duckdb"))
    check_worker_paths("s3://bucket/lake")


def test_a_worker_writes_no_catalog_into_its_scratch_folder_for_a_bucket_lake(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # the worker's scratch folder
    monkeypatch.setattr(flows.nightly, "in_deployment", lambda: True)
    settings = load_settings(lake="s3://bucket/lake")
    assert settings.catalog_path == "catalog.duckdb"   # relative: it would land here
    assert flows.nightly._write_catalog(settings) is None
    assert not list(tmp_path.iterdir())


def test_outside_a_deployment_the_catalog_is_written_where_settings_say(tmp_path, monkeypatch):
    monkeypatch.setattr(flows.nightly, "in_deployment", lambda: False)
    settings = load_settings(lake=str(tmp_path / "lake"))
    written = flows.nightly._write_catalog(settings)
    assert written == str(tmp_path / "lake" / "catalog.duckdb")
    assert (tmp_path / "lake" / "catalog.duckdb").exists()
