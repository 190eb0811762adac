"""Objects written once, and leases, in the lake's store (a local folder or ``s3://``).

Both rest on one primitive the store guarantees: *create if absent*. On S3 that is a
conditional ``PutObject`` (``If-None-Match: *``, answered 412 when the key exists); on a
folder it is a hard link of a finished temporary file (``link`` fails when the name exists).
Nothing here needs a lock server or a database, so any worker that reaches the lake can take
part, whatever machine it runs on.

A :class:`Lease` is such an object holding its owner and expiry: whoever creates it holds it
until it deletes it or the expiry passes, after which anyone may take it over. A holder that
is killed therefore blocks others for one lease period at most.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks import storage


@lru_cache(maxsize=8)
def _s3_client(endpoint: str | None, key_id: str | None) -> Any:
    # boto3 clients are thread-safe once made, and making one costs ~50 ms: keep one per
    # endpoint and identity (tests point the environment at a new endpoint per session)
    return storage.s3_client()


class Store:
    """Whole-object reads and writes under one root URI."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.s3 = storage.is_s3(root)

    @staticmethod
    def _client() -> Any:
        return _s3_client(storage.s3_endpoint(), os.environ.get("AWS_ACCESS_KEY_ID"))

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def _local(self, key: str) -> Path:
        return Path(storage.filesystem(storage.join(self.root, key))[1])

    def _staged(self, key: str, data: bytes) -> tuple[Path, Path]:
        """(the key's path, a finished temporary file beside it holding ``data``)."""
        target = self._local(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        return target, tmp

    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` unless something is there; True if this call wrote it."""
        if self.s3:
            import botocore.exceptions

            bucket, path = storage.split_s3(storage.join(self.root, key))
            try:
                self._client().put_object(Bucket=bucket, Key=path, Body=data,
                                         IfNoneMatch="*")
            except botocore.exceptions.ClientError as err:
                if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                    return False
                raise
            return True
        target, tmp = self._staged(key, data)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key``, replacing what is there."""
        if self.s3:
            bucket, path = storage.split_s3(storage.join(self.root, key))
            self._client().put_object(Bucket=bucket, Key=path, Body=data)
            return
        target, tmp = self._staged(key, data)
        os.replace(tmp, target)

    def get(self, key: str) -> bytes | None:
        if self.s3:
            bucket, path = storage.split_s3(storage.join(self.root, key))
            client = self._client()
            try:
                return client.get_object(Bucket=bucket, Key=path)["Body"].read()
            except client.exceptions.NoSuchKey:
                return None
        try:
            return self._local(key).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        if self.s3:
            bucket, path = storage.split_s3(storage.join(self.root, key))
            self._client().delete_object(Bucket=bucket, Key=path)
            return
        self._local(key).unlink(missing_ok=True)


@dataclass
class Lease:
    """A named lease in a store: ``acquire`` / ``try_acquire``, ``renew``, ``release``."""

    store: Store
    name: str
    ttl_s: float = 60.0
    owner: str = ""

    def __post_init__(self) -> None:
        self.owner = self.owner or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.key = f"leases/{self.name}"

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.ttl_s}).encode()

    def holder(self) -> dict | None:
        """The current holder's record (owner, expires), or None when nobody holds it."""
        raw = self.store.get(self.key)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            return record if isinstance(record, dict) else {"expires": 0.0}
        except ValueError:
            return {"expires": 0.0}  # a torn record: treat as expired

    def try_acquire(self) -> bool:
        """Take the lease if it is free or its holder's time is up; never waits."""
        if self.store.create(self.key, self._body()):
            return True
        held = self.holder()
        if held is not None and held.get("expires", 0.0) > time.time():
            return held.get("owner") == self.owner
        if held is None:  # released since: race for it
            return self.store.create(self.key, self._body())
        # Expired: exactly one worker may take over this stale record, the one that creates
        # its takeover marker (deleting and re-creating would let two takers both win).
        stale = f"{held.get('owner')}-{held.get('expires')}"
        if not self.store.create(f"{self.key}.takeover/{stale}", self.owner.encode()):
            return False
        self.store.put(self.key, self._body())
        return True

    def acquire(self, timeout_s: float | None = None, poll_s: float = 0.05) -> None:
        """Wait until the lease is ours (at most ``timeout_s``; raises TimeoutError)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = poll_s
        while not self.try_acquire():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"lease {self.name!r} still held by {self.holder()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def renew(self) -> None:
        self.store.put(self.key, self._body())

    def release(self) -> None:
        """Give the lease back (if it lapsed and another worker took it, theirs stays)."""
        held = self.holder()
        if held is not None and held.get("owner") == self.owner:
            self.store.delete(self.key)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):  # a lapsed lease must not mask the real error
            self.release()
