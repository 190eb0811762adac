"""Configuration precedence: defaults < TOML file < LONGREWARD_* environment < CLI flags."""

from __future__ import annotations

import pytest

from tasks.config import load_settings


def test_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "lr.toml"
    cfg.write_text('[longreward]\nlake = "/from/file"\nsource = "s3://b/file"\n'
                   "samples_per_prompt = 6\n")
    monkeypatch.setenv("LONGREWARD_SOURCE", "s3://b/env")
    monkeypatch.setenv("LONGREWARD_SAMPLES_PER_PROMPT", "8")
    s = load_settings(cfg, samples_per_prompt=None, lake=None)
    assert (s.lake, s.source, s.samples_per_prompt) == ("/from/file", "s3://b/env", 8)
    s = load_settings(cfg, samples_per_prompt=7, lake="/flag")
    assert (s.lake, s.samples_per_prompt) == ("/flag", 7)
    assert s.catalog_path == "/flag/catalog.duckdb"


def test_config_hash_ignores_where_and_tracks_what(monkeypatch):
    monkeypatch.delenv("LONGREWARD_LAKE", raising=False)
    base = load_settings(None, lake="/a")
    assert load_settings(None, lake="/b").config_hash() == base.config_hash()
    assert load_settings(None, lake="/a", temperature=0.7).config_hash() != base.config_hash()


def test_bad_values_and_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="samples_per_prompt"):
        load_settings(None, samples_per_prompt=0)
    with pytest.raises(ValueError, match="no prompt could ever be paired"):
        load_settings(None, samples_per_prompt=4)  # pairing needs 5 scored answers
    assert load_settings(None, samples_per_prompt=4, pair_min_answers=4).pair_min_answers == 4
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")
