"""Configuration precedence: defaults < TOML file < LONGREWARD_* environment < CLI flags."""

from __future__ import annotations

import logging

import pytest

from tasks.config import ConfigError, load_settings


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


def _toml(tmp_path, text: str):
    path = tmp_path / "longreward.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "says"), [
    ("[longreward]\nsamles_per_prompt = 6\n",
     "unknown key 'samles_per_prompt' in [longreward] (did you mean 'samples_per_prompt'?)"),
    ("samples_per_prompt = 6\n[longreward]\nlake = 'x'\n",
     "key 'samples_per_prompt' is outside the [longreward] table"),
    ("[longrewad]\nsamples_per_prompt = 6\n",
     "unknown table 'longrewad' outside [longreward] (did you mean 'longreward'?)"),
    ("longreward = 3\n", "must be a table"),
    ("[longreward\n", "not valid TOML"),
])
def test_unknown_or_misplaced_keys_are_refused_by_name(tmp_path, text, says):
    with pytest.raises(ConfigError) as caught:
        load_settings(_toml(tmp_path, text))
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_env_vars_are_warned_with_the_nearest_name(monkeypatch, caplog):
    monkeypatch.setenv("LONGREWARD_SAMPLES_PER_PROMT", "3")
    for legit in ("LONGREWARD_JUDGE_API_KEY", "LONGREWARD_CONFIG", "LONGREWARD_HOME"):
        monkeypatch.setenv(legit, "x")
    monkeypatch.setenv("LONGREWARD_CONFIG", "")
    with caplog.at_level(logging.WARNING):
        settings = load_settings(None)
    assert settings.samples_per_prompt == 10
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["ignoring unknown environment variable LONGREWARD_SAMPLES_PER_PROMT "
                      "(did you mean 'LONGREWARD_SAMPLES_PER_PROMPT'?)"]


def test_validation_errors_are_one_line(monkeypatch):
    with pytest.raises(ConfigError) as caught:
        load_settings(None, temperature=-1, top_p=2)
    message = str(caught.value)
    assert "\n" not in message
    assert "temperature: Input should be greater than or equal to 0 (got -1)" in message
    assert "top_p: Input should be less than or equal to 1 (got 2)" in message
    monkeypatch.setenv("LONGREWARD_SAMPLES_PER_PROMPT", "abc")
    with pytest.raises(ConfigError, match="samples_per_prompt: Input should be a valid integer"):
        load_settings(None)


def test_unknown_overrides_are_refused():
    with pytest.raises(ConfigError, match="did you mean 'samples_per_prompt'"):
        load_settings(None, samples_per_promt=3)
