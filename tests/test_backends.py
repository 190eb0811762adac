"""Nothing stands in silently: the offline stand-ins run only under ``offline = true``; without
it, a run missing a backend setting stops before any work, naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.config import ConfigError, load_settings
from tasks.demo_data import jsonl, make_prompts
from tasks.lake import Lake


def invoke(*args: str, **env: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300", **env})


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "p.jsonl").write_bytes(jsonl([p.record() for p in make_prompts(1, seed=3)]))
    return folder


@pytest.mark.parametrize("command, named", [
    ("run", ["policy_base_url", "judge_base_url", "embeddings_model"]),
    ("sample", ["policy_base_url"]),
    ("score", ["judge_base_url", "embeddings_model"]),
])
def test_a_run_without_backends_stops_before_any_work_naming_the_settings(
        tmp_path, source, command, named):
    lake = tmp_path / "lake"
    args = [command, "--lake", str(lake)] + (["--source", str(source)] if command == "run"
                                             else [])
    result = invoke(*args, LONGREWARD_OFFLINE="false")
    assert result.exit_code == 2, result.output
    for setting in named:
        assert setting in result.output
    assert "offline = true" in result.output
    assert not lake.exists()          # stopped before the lake was even made


def test_an_endpoint_without_its_model_name_is_refused():
    from tasks.backends import missing_settings

    settings = load_settings(offline=False, judge_base_url="http://judge/v1",
                             policy_base_url="http://policy/v1", embeddings_model="m")
    problems = " ".join(missing_settings(settings, ["sample", "score"]))
    assert "judge_model is not set" in problems and "policy_model is not set" in problems


def test_an_unknown_policy_name_no_longer_falls_back_to_the_offline_policy():
    from tasks.sample.policies import policy_from_settings

    with pytest.raises(ConfigError, match="policy_base_url is not set and policy_model 'gpt-x'"):
        policy_from_settings(load_settings(offline=False, policy_model="gpt-x"))


def test_training_without_a_base_model_stops_instead_of_training_a_random_model(tmp_path):
    from flows.train import train_locally

    settings = load_settings(offline=False, lake=str(tmp_path / "lake"))
    with pytest.raises(ConfigError, match="base_model is not set"):
        train_locally(settings, "v1")
    assert not (tmp_path / ".longreward").exists()   # no tiny model was built


def test_offline_declared_labels_every_row_with_its_stand_in(tmp_path, source):
    lake = tmp_path / "lake"
    for command in (["ingest", "--source", str(source)], ["sample", "--k", "5"], ["score"]):
        result = invoke(*command, "--lake", str(lake), LONGREWARD_OFFLINE="true")
        assert result.exit_code == 0, result.output
    the_lake = Lake(str(lake))
    policies = set(the_lake.read("responses", columns=["policy_model"])["policy_model"]
                   .to_pylist())
    judges = set(the_lake.read("judgments", columns=["judge_model"])["judge_model"].to_pylist())
    assert policies == {"offline-policy"} and judges == {"offline-judge"}


def test_stand_ins_fill_only_what_is_unset():
    settings = load_settings(offline=True, judge_base_url="http://judge/v1", judge_model="qwen")
    assert settings.judge_model == "qwen"                 # a configured judge stays the judge
    assert settings.policy_model == "offline-policy"
    assert settings.embeddings_model == "all-MiniLM-L6-v2"


def test_offline_training_builds_the_tiny_model_rather_than_stopping():
    from tasks.backends import missing_settings

    assert missing_settings(load_settings(offline=True), ["sample", "score", "train"]) == []
