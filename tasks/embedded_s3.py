"""An S3 endpoint on loopback (moto's server) for the demo, tests and benchmarks.

It is a real HTTP S3 API: boto3, pyarrow and delta-rs reach it exactly as they reach AWS or MinIO,
through ``AWS_ENDPOINT_URL``. Needs the ``moto[server]`` extra (installed by ``make``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

_ENV = {
    "AWS_ACCESS_KEY_ID": "longreward-local",
    "AWS_SECRET_ACCESS_KEY": "longreward-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def embedded_s3(buckets: tuple[str, ...] = ()) -> Iterator[str]:
    """Start moto's S3 server, point the AWS environment at it, yield its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RuntimeError("the embedded S3 needs moto's server: pip install 'moto[s3,server]'") \
            from err
    from tasks import storage

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in (*_ENV, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")}
    os.environ.update(_ENV)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    try:
        client = storage.s3_client()
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
