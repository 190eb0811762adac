"""The demo: the nightly pipeline end to end on embedded defaults (moto S3, local lake).

Puts a batch of synthetic prompts (and a file of bad records) into an embedded S3 bucket, then
runs the pipeline over it exactly as a nightly run would over a real bucket.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from tasks import catalog, demo_data, pipeline, storage
from tasks.config import Settings
from tasks.embedded_s3 import embedded_s3
from tasks.ingest import IngestReport
from tasks.lake import Lake
from tasks.publish import DatasetVersion
from tasks.runs import new_run_id
from tasks.sample.stage import SampleReport
from tasks.score.stage import ScoreReport

log = logging.getLogger(__name__)

DEMO_BUCKET = "longreward-demo"
DEMO_PREFIX = "prompts"


@dataclass
class DemoResult:
    run_id: str
    ingest: IngestReport
    sample: SampleReport
    score: ScoreReport
    pairs: tuple[int, int]
    dataset: DatasetVersion | None
    dataset_created: bool
    catalog: str
    training: dict | None = None
    training_skipped: str | None = None


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


def run_demo(settings: Settings, n_prompts: int = 12,
             progress: Callable[[str], None] = lambda stage: None) -> DemoResult:
    """Every nightly stage on the embedded defaults; the stages are the production ones."""
    run_id = new_run_id()
    with embedded_s3(buckets=(DEMO_BUCKET,)) as endpoint:
        log.info("embedded S3 at %s", endpoint)
        settings = settings.model_copy(update={"source": upload_demo_prompts(n_prompts)})
        progress("ingest")
        ingested = pipeline.stage_ingest(settings, run_id)
    progress("sample")
    sampled = pipeline.stage_sample(settings, run_id)
    progress("score")
    scored = pipeline.stage_score(settings, run_id)
    progress("pair")
    pairs = pipeline.stage_pair(settings, run_id)
    progress("publish")
    dataset, created = pipeline.stage_publish(settings, run_id)
    result = DemoResult(run_id, ingested, sampled, scored, pairs, dataset, created, "")
    if dataset is not None:
        progress("train")
        result.training, result.training_skipped = train_tiny(settings, dataset.version)
    result.catalog = catalog.write_catalog(Lake(settings.lake), settings.catalog_path)
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
