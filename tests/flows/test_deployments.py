"""infra/prefect.yaml names real flows with valid parameters, schedules and work pools."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "infra/prefect.yaml").read_text())


def _flow(entrypoint: str):
    """The flow a dotted entrypoint names, imported as a worker imports it (no checkout path)."""
    module, name = entrypoint.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("deployment", SPEC["deployments"], ids=lambda d: d["name"])
def test_deployment_points_at_a_flow_with_valid_parameters(deployment):
    from prefect import Flow

    flow = _flow(deployment["entrypoint"])
    assert isinstance(flow, Flow)
    params = dict(deployment.get("parameters", {}))
    assert "{{" not in json.dumps(deployment)   # nothing taken from the deployer's environment
    if deployment["name"] == "train-dpo":
        params["dataset_version"] = "v1"      # what the trigger passes
    flow.validate_parameters(params)
    assert deployment["work_pool"]["name"] in ("longreward-cpu", "longreward-gpu")


def test_nightly_schedule_and_training_target():
    from prefect.client.schemas.schedules import CronSchedule

    nightly = next(d for d in SPEC["deployments"] if d["name"] == "nightly-refresh")
    for schedule in nightly["schedules"]:
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    train = next(d for d in SPEC["deployments"] if d["name"] == "train-dpo")
    flow = _flow(train["entrypoint"])
    assert nightly["parameters"]["train_deployment"] == f"{flow.name}/{train['name']}"
    assert train["work_pool"]["name"] == "longreward-gpu"


def test_gpu_job_template_requests_gpus():
    template = json.loads((ROOT / "infra/k8s/gpu-base-job-template.json").read_text())
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert template["variables"]["properties"]["gpus"]["default"] >= 1
    for name in ("zero2.json", "zero3.json"):
        config = json.loads((ROOT / "infra/deepspeed" / name).read_text())
        assert config["zero_optimization"]["stage"] == int(name[4])


def test_api_keys_come_from_the_environment_then_a_prefect_secret_block(prefect_api,
                                                                        monkeypatch):
    from prefect.blocks.system import Secret

    from tasks.llm.client import api_key_from_env

    monkeypatch.delenv("LONGREWARD_JUDGE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    assert api_key_from_env("judge") == "EMPTY"
    Secret(value="sk-from-block").save("longreward-judge-api-key", overwrite=True)
    assert api_key_from_env("judge") == "sk-from-block"
    monkeypatch.setenv("LONGREWARD_JUDGE_API_KEY", "sk-from-env")
    assert api_key_from_env("judge") == "sk-from-env"   # the environment wins
