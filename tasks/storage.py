"""One storage path for a local folder and ``s3://``: URI joins, filesystems, credentials.

S3 settings come from the standard AWS configuration (credentials chain, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), so the same command works against AWS, MinIO
or moto's server.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pyarrow.fs as pafs
from botocore.config import Config


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(root: str, *parts: str) -> str:
    """Join path parts onto a folder or s3:// root."""
    if is_s3(root):
        return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root, *parts))


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client():
    """A boto3 S3 client from the standard AWS configuration (fresh per call: thread-safe use)."""
    session = boto3.session.Session()
    return session.client(
        "s3", endpoint_url=s3_endpoint(),
        config=Config(retries={"max_attempts": 5, "mode": "adaptive"}))


def _credentials() -> tuple[str | None, str | None, str | None, str]:
    session = boto3.session.Session()
    creds = session.get_credentials()
    region = session.region_name or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    if creds is None:
        return None, None, None, region
    frozen = creds.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token, region


def delta_storage_options(uri: str) -> dict[str, str] | None:
    """Options for the ``deltalake`` package (object_store names) for an ``s3://`` table."""
    if not is_s3(uri):
        return None
    key, secret, token, region = _credentials()
    options = {"AWS_REGION": region}
    if key:
        options |= {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret or ""}
    if token:
        options["AWS_SESSION_TOKEN"] = token
    endpoint = s3_endpoint()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    # S3 now offers conditional writes, which delta-rs uses for safe concurrent commits.
    options.setdefault("AWS_CONDITIONAL_PUT", os.environ.get("AWS_CONDITIONAL_PUT", "etag"))
    return options


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, key: str | None, region: str) -> pafs.S3FileSystem:
    _, secret, token, _ = _credentials()
    kwargs: dict = {"region": region}
    if key:
        kwargs |= {"access_key": key, "secret_key": secret, "session_token": token}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs |= {"endpoint_override": parsed.netloc or parsed.path,
                   "scheme": parsed.scheme or "https"}
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a folder or ``s3://`` URI."""
    if is_s3(uri):
        key, _, _, region = _credentials()
        bucket, path = split_s3(uri)
        return _s3_filesystem(s3_endpoint(), key, region), f"{bucket}/{path}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    if not is_s3(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as src:
        return src.read()


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound
