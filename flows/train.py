"""The ``train-dpo`` flow: DPO + CE on a published dataset version, on the GPU work pool.

Triggered by the nightly flow (``run_deployment`` with the version it published) or by
``longreward train --dataset vN``; ``--local`` runs the same code in-process (CPU or a local
GPU), with a tiny model built on the spot when no base model is given.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from tasks import storage
from tasks.config import Settings, load_settings
from tasks.lake import Lake
from tasks.runs import new_run_id


def _tiny_base_model(settings: Settings) -> str:
    from tasks.train.tiny import build_tiny_model

    home = Path(".") if storage.is_s3(settings.lake) else Path(settings.lake).parent
    folder = home / ".longreward" / "tiny-base"
    if not (folder / "config.json").is_file():
        build_tiny_model(str(folder))
    return str(folder)


def train_locally(settings: Settings, dataset_version: str, base_model: str | None = None,
                  max_steps: int | None = None, deepspeed: str | None = None,
                  **overrides: Any) -> dict[str, Any]:
    """Train in this process; returns the run's summary (model version, metrics, checkpoint)."""
    from tasks.train.trainer import TrainConfig
    from tasks.train.trainer import train_dpo as run_training

    run_id = new_run_id()
    base = base_model or settings.base_model or _tiny_base_model(settings)
    options: dict[str, Any] = {
        "base_model": base, "dataset_version": dataset_version, "deepspeed": deepspeed,
        "checkpoint_uri": storage.join(settings.lake, "checkpoints", run_id), **overrides}
    if max_steps is not None:
        options["max_steps"] = max_steps
    result = run_training(Lake(settings.lake), TrainConfig(**options), run_id)
    summary = asdict(result) if is_dataclass(result) else dict(result)
    summary.pop("history", None)
    return {"run_id": run_id, **summary}


@flow(name="train-dpo", log_prints=True)
def train_dpo(dataset_version: str, base_model: str | None = None, lake: str | None = None,
              config: str | None = None, deepspeed: str | None = None,
              max_steps: int | None = None, overrides: dict[str, Any] | None = None) -> dict:
    """Train DPO + CE on ``dataset_version`` and record the model version in ``models``."""
    settings = load_settings(config, lake=lake)
    summary = train_locally(settings, dataset_version, base_model, max_steps, deepspeed,
                            **(overrides or {}))
    get_run_logger().info("trained %s on %s", summary.get("model_version"), dataset_version)
    return summary
