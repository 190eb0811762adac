"""Deployments that run on workers, for real, as README's "Run it for real" walks through:
`prefect server start` on loopback, the scripted policy and judge endpoint, `longreward deploy`,
one process worker per pool started outside the checkout with only the documented environment,
a nightly run, and the training it triggers on the pool standing in for the GPUs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tasks.demo_data import jsonl, make_prompts
from tasks.embedded_s3 import free_port
from tasks.lake import Lake

ROOT = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]


def _base_env(home: Path) -> dict[str, str]:
    """This machine's environment without any Prefect or longreward setting of the tests."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "LONGREWARD_"))}
    return {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _stop(proc: subprocess.Popen) -> None:
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    everyone = [*family, psutil.Process(proc.pid)]
    for p in everyone:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(everyone, timeout=20)
    for p in alive:   # a worker busy shutting down under load: it has had its chance
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A Prefect server on loopback; yields the environment a client of it needs."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                             str(port), "--no-ui"], env=_base_env(home), stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        _stop(proc)
        pytest.fail("prefect server did not start: " + (home / "server.log").read_text()[-2000:])
    try:
        yield {"PREFECT_API_URL": url}
    finally:
        _stop(proc)


def _api(server: dict[str, str], path: str, body: dict | None = None) -> list | dict:
    response = httpx.post(f"{server['PREFECT_API_URL']}/{path}", json=body or {}, timeout=10)
    response.raise_for_status()
    return response.json()


def _runs_of(server: dict[str, str], deployment: str) -> list[dict]:
    flow_name, name = deployment.split("/")
    found = _api(server, "deployments/filter", {"deployments": {"name": {"any_": [name]}}})
    ids = [d["id"] for d in found]
    return _api(server, "flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": ids}},
                                              "sort": "EXPECTED_START_TIME_ASC"})


def _wait_terminal(server: dict[str, str], deployment: str, count: int,
                   timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _runs_of(server, deployment)
        if len(runs) >= count and all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")
                                      for r in runs[:count]):
            return runs
        time.sleep(1)
    states = [(r["name"], r["state"]["type"]) for r in _runs_of(server, deployment)]
    raise AssertionError(f"{deployment}: runs not finished in {timeout}s: {states}")


def _worker(pool: str, home: Path, server: dict[str, str], scratch: Path,
            **settings: str) -> subprocess.Popen:
    """A process worker in a scratch folder (no checkout), with only ``settings`` set."""
    home.mkdir()
    env = {**_base_env(home), **server, "PREFECT_WORKER_QUERY_SECONDS": "1",
           **{f"LONGREWARD_{k.upper()}": v for k, v in settings.items()}}
    return subprocess.Popen([*PREFECT, "worker", "start", "--pool", pool, "--limit", "1"],
                            cwd=scratch, env=env, stdout=(home / f"{pool}.log").open("w"),
                            stderr=subprocess.STDOUT)


def test_nightly_and_triggered_training_run_on_workers(server, tmp_path):
    from tasks.train.tiny import build_tiny_model

    lake, source, scratch = tmp_path / "lake", tmp_path / "in", tmp_path / "scratch"
    source.mkdir()
    scratch.mkdir()
    (source / "prompts.jsonl").write_bytes(
        jsonl([p.record() for p in make_prompts(3, seed=5, target_words=250)]))
    base = build_tiny_model(tmp_path / "base")
    client_env = {**_base_env(tmp_path / "cli-home"), **server}

    done = subprocess.run([sys.executable, "-m", "flows.cli", "deploy"], cwd=scratch,
                          env=client_env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    deployments = _api(server, "deployments/filter")
    assert {d["name"] for d in deployments} == {"nightly-refresh", "lake-maintenance",
                                                "train-dpo"}
    for d in deployments:   # nothing of the deployer's environment was baked in
        assert "{{" not in json.dumps([d["job_variables"], d["parameters"], d["pull_steps"]])

    port = free_port()
    with contextlib.ExitStack() as running:   # every process started here is stopped
        model = subprocess.Popen([sys.executable, "-m", "tests.fakes.scripted_model", "--port",
                                  str(port)], cwd=ROOT, env=_base_env(tmp_path / "model-home"))
        running.callback(_stop, model)
        url = f"http://127.0.0.1:{port}/v1"
        running.callback(_stop, _worker(
            "longreward-cpu", tmp_path / "cpu-home", server, scratch, lake=str(lake),
            source=str(source), judge_base_url=url, judge_model="scripted-judge",
            policy_base_url=url, policy_model="scripted-policy", embeddings_base_url=url,
            embeddings_model="scripted-embed", samples_per_prompt="5"))
        running.callback(_stop, _worker("longreward-gpu", tmp_path / "gpu-home", server,
                                        scratch, lake=str(lake), base_model=base))
        # A run whose settings lack a backend fails before any work, naming the setting.
        refused = subprocess.run(
            [*PREFECT, "deployment", "run", "nightly-refresh/nightly-refresh", "--param",
             'overrides={"policy_base_url": ""}', "--watch", "--watch-timeout", "180"],
            env=client_env, capture_output=True, text=True, timeout=240)
        first = _wait_terminal(server, "nightly-refresh/nightly-refresh", 1)[0]
        assert first["state"]["type"] == "FAILED", refused.stdout
        assert "policy_base_url is not set" in first["state"]["message"]
        assert not Lake(str(lake)).exists()

        started = subprocess.run(
            [*PREFECT, "deployment", "run", "nightly-refresh/nightly-refresh", "--watch",
             "--watch-timeout", "240"], env=client_env, capture_output=True, text=True,
            timeout=300)
        nightly = _wait_terminal(server, "nightly-refresh/nightly-refresh", 2)[1]
        assert nightly["state"]["type"] == "COMPLETED", (
            started.stdout + (tmp_path / "cpu-home" / "longreward-cpu.log").read_text()[-3000:])
        training = _wait_terminal(server, "train-dpo/train-dpo", 1)[0]
        assert training["state"]["type"] == "COMPLETED", (
            (tmp_path / "gpu-home" / "longreward-gpu.log").read_text()[-3000:])

    the_lake = Lake(str(lake))
    dataset = the_lake.read("datasets").to_pylist()[-1]
    lineage = json.loads(dataset["lineage"])
    assert lineage["run_id"] == nightly["name"]          # one run, one name
    assert lineage["flow_run_id"] == nightly["id"]
    assert (lineage["judge_model"], lineage["policy_model"]) == ("scripted-judge",
                                                                 "scripted-policy")
    model = the_lake.read("models").to_pylist()
    assert [(m["dataset_version"], m["flow_run_id"], m["base_model"]) for m in model] == [
        (dataset["version"], training["id"], base)]
    assert training["parameters"]["dataset_version"] == dataset["version"]
