"""The ``train-dpo`` flow: DPO + CE on a published dataset version, on the GPU work pool.

Triggered by the nightly flow (``run_deployment`` with the version it published) or by
``longreward train --dataset vN``; ``--local`` runs the same code in-process (CPU or a local
GPU), with a tiny model built on the spot when no base model is given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from tasks import storage
from tasks.backends import require_backends
from tasks.config import Settings, load_settings
from tasks.lake import Lake
from tasks.preflight import check_worker_paths
from tasks.runs import flow_run_id, in_deployment, new_run_id


def base_model_of(settings: Settings, base_model: str | None = None) -> str:
    """The model to train: the parameter, else ``base_model``; a tiny random model is built
    only under ``offline`` (a run that forgot the setting stops instead of training it)."""
    if base_model or settings.base_model:
        return base_model or settings.base_model  # type: ignore[return-value]
    require_backends(settings, "train")
    return _tiny_base_model(settings)


ROOT = Path(__file__).resolve().parents[1]
ZERO3 = ROOT / "infra" / "deepspeed" / "zero3.json"


def deepspeed_config(value: str | None) -> str | None:
    """``auto``: ZeRO-3 where the job has GPUs, none (DDP) on CPU; a relative path that is not
    here is read from the package's ``infra/`` (a worker runs in a scratch folder)."""
    if value == "auto":
        import torch

        return str(ZERO3) if torch.cuda.is_available() else None
    if value and not Path(value).is_absolute() and not Path(value).exists():
        return str(ROOT / value)
    return value


def _tiny_base_model(settings: Settings) -> str:
    from tasks.train.tiny import build_tiny_model

    home = Path(".") if storage.is_s3(settings.lake) else Path(settings.lake).parent
    folder = home / ".longreward" / "tiny-base"
    if not (folder / "config.json").is_file():
        build_tiny_model(str(folder))
    return str(folder)


def _run_options(settings: Settings, dataset_version: str, base_model: str | None,
                 max_steps: int | None, deepspeed: str | None,
                 overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A new run id and the trainer's options for it; ``max_steps`` left to the trainer's
    default when unset."""
    run_id = new_run_id()
    options: dict[str, Any] = {
        "base_model": base_model_of(settings, base_model), "dataset_version": dataset_version,
        "deepspeed": deepspeed,
        "checkpoint_uri": storage.join(settings.lake, "checkpoints", run_id), **overrides}
    if max_steps is not None:
        options["max_steps"] = max_steps
    return run_id, options


def train_locally(settings: Settings, dataset_version: str, base_model: str | None = None,
                  max_steps: int | None = None, deepspeed: str | None = None,
                  **overrides: Any) -> dict[str, Any]:
    """Train in this process; returns the run's summary (model version, metrics, checkpoint)."""
    from tasks.train.trainer import TrainConfig
    from tasks.train.trainer import train_dpo as run_training

    run_id, options = _run_options(settings, dataset_version, base_model, max_steps,
                                   deepspeed, overrides)
    result = run_training(Lake(settings.lake), TrainConfig(**options), run_id)
    summary = asdict(result) if is_dataclass(result) else dict(result)
    summary.pop("history", None)
    return {"run_id": run_id, **summary}


def _flag(name: str, value: Any) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    return [] if value is None else [flag, str(value)]


def processes_for_job() -> int:
    """One training process per GPU this job can see (one on a CPU-only machine)."""
    import torch

    return max(1, torch.cuda.device_count())


def train_launched(settings: Settings, dataset_version: str, processes: int,
                   base_model: str | None = None, max_steps: int | None = None,
                   deepspeed: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Train in ``processes`` worker processes under torchrun (one per GPU: DDP, or DeepSpeed
    ZeRO with ``deepspeed``); waits, then returns the summary from the ``models`` row."""
    run_id, options = _run_options(settings, dataset_version, base_model, max_steps,
                                   deepspeed, overrides)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "tasks.train.trainer",
               "--lake", settings.lake, "--run-id", run_id]
    for name, value in options.items():
        command += _flag(name, value)
    env = dict(os.environ)
    if flow_run_id():  # the models row records the flow run that launched the training
        env["PREFECT__FLOW_RUN_ID"] = flow_run_id()
    done = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training ({processes} processes) exited with {done.returncode}")
    rows = [r for r in Lake(settings.lake).read("models").to_pylist() if r["run_id"] == run_id]
    if not rows:
        raise RuntimeError(f"training run {run_id} finished without a models row")
    row = rows[0]
    return {"run_id": run_id, "model_version": row["model_version"],
            "dataset_version": row["dataset_version"], "checkpoint_uri": row["checkpoint_uri"],
            "processes": processes, "final_metrics": json.loads(row["metrics"])["final"]}


@flow(name="train-dpo", log_prints=True)
def train_dpo(dataset_version: str, base_model: str | None = None, lake: str | None = None,
              config: str | None = None, deepspeed: str | None = None,
              max_steps: int | None = None, processes: int | None = None,
              overrides: dict[str, Any] | None = None) -> dict:
    """Train DPO + CE on ``dataset_version`` and record the model version in ``models``.

    ``processes`` (default: one per GPU of the job) > 1 launches the trainer under torchrun;
    one process trains in this one.
    """
    settings = load_settings(config, lake=lake)
    base_model = base_model_of(settings, base_model)  # before any work, naming what is missing
    if in_deployment():
        check_worker_paths(settings.lake)
    deepspeed = deepspeed_config(deepspeed)
    n = processes or processes_for_job()
    if n > 1:
        summary = train_launched(settings, dataset_version, n, base_model, max_steps, deepspeed,
                                 **(overrides or {}))
    else:
        summary = train_locally(settings, dataset_version, base_model, max_steps, deepspeed,
                                **(overrides or {}))
    get_run_logger().info("trained %s on %s (%d process(es))", summary.get("model_version"),
                          dataset_version, n)
    return summary
