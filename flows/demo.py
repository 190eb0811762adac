"""The demo: the nightly pipeline end to end on embedded defaults (moto S3, local lake,
offline policy and judge, a temporary Prefect API).

Puts a batch of synthetic prompts (and a file of bad records) into an embedded S3 bucket, runs
the nightly-refresh flow over it exactly as a nightly run would over a real bucket, then trains
a tiny model on the dataset version it published.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from tasks import catalog, demo_data, storage
from tasks.config import Settings
from tasks.embedded_s3 import embedded_s3
from tasks.lake import Lake
from tasks.publish import DatasetVersion, get_version

log = logging.getLogger(__name__)

DEMO_BUCKET = "longreward-demo"
DEMO_PREFIX = "prompts"


@dataclass
class DemoResult:
    counts: dict                      # what the nightly-refresh flow returned
    dataset: DatasetVersion | None = None
    training: dict | None = None
    training_skipped: str | None = None
    catalog: str = ""

    @property
    def run_id(self) -> str:
        return self.counts["run_id"]


def upload_demo_prompts(n_prompts: int, seed: int = 0) -> str:
    """Upload demo objects to the embedded bucket; returns the source URI."""
    prompts = demo_data.make_prompts(n_prompts, seed=seed)
    half = len(prompts) // 2
    client = storage.s3_client()
    put = lambda key, body: client.put_object(  # noqa: E731
        Bucket=DEMO_BUCKET, Key=f"{DEMO_PREFIX}/{key}", Body=body)
    put("batch-0001.jsonl", demo_data.jsonl([p.record() for p in prompts[:half]]))
    table = pa.Table.from_pylist([{**p.record(), "meta": None} for p in prompts[half:]])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    put("batch-0002.parquet", buffer.getvalue())
    put("batch-0003-bad.jsonl", b"\n".join(demo_data.bad_lines(prompts[0])) + b"\n")
    return f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}"


def run_demo(settings: Settings, n_prompts: int = 12, config: str | None = None) -> DemoResult:
    """The nightly-refresh Prefect flow over an embedded S3 bucket, then a tiny training run.

    The demo declares ``offline``: backends not configured are the offline stand-ins."""
    from flows.nightly import run_nightly

    with embedded_s3(buckets=(DEMO_BUCKET,)) as endpoint:
        log.info("embedded S3 at %s", endpoint)
        source = upload_demo_prompts(n_prompts)
        counts = run_nightly(settings.task_runner, lake=settings.lake, source=source,
                             config=config, batch_prompts=4,   # a few batches: fan-out shows
                             overrides={"offline": True})
    result = DemoResult(counts)
    version = counts["publish"]["dataset_version"]
    lake = Lake(settings.lake)
    if version:
        result.dataset = get_version(lake, version)
        result.training, result.training_skipped = train_tiny(settings, version)
    result.catalog = catalog.write_catalog(lake, settings.catalog_path)
    return result


def train_tiny(settings: Settings, version: str) -> tuple[dict | None, str | None]:
    """A few CPU steps of DPO + CE on a tiny model built here: the loop closed, a models row
    written. The learning rate is raised from the product's 1e-6 so the demo's 4 steps show
    movement. Skipped when a model was already trained on this version."""
    lake = Lake(settings.lake)
    trained = [r["model_version"] for r in lake.read("models", columns=[
        "model_version", "dataset_version"]).to_pylist() if r["dataset_version"] == version]
    if trained:
        return None, f"{trained[0]} was already trained on {version}"
    from flows.train import train_locally

    return train_locally(settings, version, max_steps=4, lr=1e-4, micro_batch_size=2), None
