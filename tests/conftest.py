"""Shared fixtures: a real S3 endpoint (moto's server over HTTP) and a fresh lake per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The tests run the offline stand-ins wherever a test configures no endpoint, declared once here
# as the demo declares it; tests of what happens without it set offline=False.
os.environ.setdefault("LONGREWARD_OFFLINE", "true")
os.environ.setdefault("PREFECT_HOME", str(Path(__file__).resolve().parents[1] / ".prefect"))

from tasks import storage  # noqa: E402
from tasks.embedded_s3 import embedded_s3  # noqa: E402
from tasks.lake import Lake  # noqa: E402


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback; boto3, pyarrow and delta-rs reach it over HTTP."""
    with embedded_s3() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A new, empty bucket for one test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def put(bucket: str):
    """``put(key, body)`` uploads one object into the test's bucket."""
    client = storage.s3_client()

    def _put(key: str, body: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=body)

    return _put
