"""Operational problems said in one line: a missing source folder or bucket, credentials S3
refuses, a lake that cannot be written. Checked before a run starts (a Prefect task would
otherwise retry a missing bucket for a minute), and recognised when they surface later."""

from __future__ import annotations

import tempfile
from pathlib import Path

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)
from deltalake.exceptions import DeltaError

from tasks import storage
from tasks.config import ConfigError


class OperationalError(RuntimeError):
    """Something outside the code is not as the run needs it; the message is one line."""


def check_worker_paths(lake: str, source: str | None = None, catalog: str | None = None) -> None:
    """A deployment's run starts in a worker's scratch folder: a relative lake, source or
    catalog there would be written into a folder deleted after the run, so it is refused."""
    for name, uri in (("lake", lake), ("source", source), ("catalog", catalog)):
        if uri and not storage.is_s3(uri) and not Path(uri).is_absolute():
            raise ConfigError(
                f"{name} is the relative path {uri!r} in a deployment run (it would land in the "
                f"worker's scratch folder): set LONGREWARD_{name.upper()} on the worker to an "
                "absolute path or s3://...")


def check_source(uri: str) -> None:
    """The source folder exists, or its bucket answers with these credentials."""
    if storage.is_s3(uri):
        _check_bucket(uri, "source")
    elif not Path(uri).exists():
        raise OperationalError(f"source folder not found: {uri}")


def check_lake(uri: str) -> None:
    """The lake can be written: its bucket answers, or its folder takes a file."""
    if storage.is_s3(uri):
        _check_bucket(uri, "lake")
        return
    root = Path(uri)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise OperationalError(f"the lake folder {uri} cannot be written: "
                               f"{err.strerror or err}") from err


def _check_bucket(uri: str, role: str) -> None:
    bucket, _ = storage.split_s3(uri)
    try:
        storage.s3_client().head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as err:
        raise OperationalError(f"{role} {uri}: {explain(err)}") from err


def explain(err: BaseException) -> str | None:
    """One line for an operational failure; None when ``err`` is a bug (show its traceback)."""
    if isinstance(err, OperationalError):
        return str(err)
    if isinstance(err, ClientError):
        info = err.response.get("Error", {})
        code = str(info.get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return "the bucket does not exist (NoSuchBucket)"
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                    "ExpiredToken", "InvalidToken"):
            return (f"S3 refused the credentials ({code}): check AWS_PROFILE / "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        return f"S3 error {code}: {info.get('Message') or err}"
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return "no AWS credentials found (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...)"
    if isinstance(err, EndpointConnectionError):
        return f"cannot reach the S3 endpoint: {err}"
    if isinstance(err, BotoCoreError):
        return f"S3 client error: {err}"
    if isinstance(err, PermissionError):
        return f"permission denied: {err.filename or err}"
    if isinstance(err, FileNotFoundError):
        return f"not found: {err.filename or err}"
    if isinstance(err, OSError | DeltaError) or type(err).__module__.startswith("deltalake"):
        first = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {first[:300]}"
    return None
