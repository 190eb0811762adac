"""Where new prompts land: an ``s3://bucket/prefix`` (listed with boto3) or a local folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

from tasks import storage


class ObjectVanished(Exception):
    """The object was listed but was gone (or replaced) when we went to read it."""


@dataclass(frozen=True)
class SourceObject:
    uri: str
    etag: str
    size: int

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]


def list_objects(source: str) -> list[SourceObject]:
    """Every object under the source, in key order (folder markers skipped)."""
    if storage.is_s3(source):
        bucket, prefix = storage.split_s3(source)
        prefix = prefix.rstrip("/")
        paginator = storage.s3_client().get_paginator("list_objects_v2")
        # The source is a "folder" (everything under prefix/) or one object (key == prefix).
        found = [
            SourceObject(f"s3://{bucket}/{item['Key']}", item["ETag"].strip('"'), item["Size"])
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")
            and (not prefix or item["Key"] == prefix or item["Key"].startswith(prefix + "/"))
        ]
        return sorted(found, key=lambda o: o.uri)
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"source not found: {source}")
    paths = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    found = []
    for path in paths:
        stat = path.stat()
        # A local file has no ETag: size + mtime changes whenever its content is rewritten.
        found.append(SourceObject(str(path), f"{stat.st_size}-{stat.st_mtime_ns}", stat.st_size))
    return found


def read_object(obj: SourceObject) -> bytes:
    """The object's bytes, exactly the version that was listed (``IfMatch`` on its ETag)."""
    if storage.is_s3(obj.uri):
        bucket, key = storage.split_s3(obj.uri)
        try:
            reply = storage.s3_client().get_object(Bucket=bucket, Key=key, IfMatch=obj.etag)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "PreconditionFailed", "412"):
                raise ObjectVanished(f"{obj.uri} changed or disappeared after listing ({code})") \
                    from err
            raise
        return reply["Body"].read()
    try:
        return Path(obj.uri).read_bytes()
    except FileNotFoundError as err:
        raise ObjectVanished(f"{obj.uri} disappeared after listing") from err
