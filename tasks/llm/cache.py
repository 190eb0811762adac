"""A durable call cache: one SQLite row per finished LLM call, keyed by the request's hash.

A rerun looks every request up here before calling, so a finished call is never paid twice.
Each insert is its own committed transaction (WAL journal, ``synchronous=NORMAL``): a run killed
mid-flight loses no call that had finished. One connection shared by threads behind a lock;
the async wrappers run the blocking SQLite work in a worker thread so the event loop never
waits on a disk flush. Several processes may share the file (WAL + busy timeout).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
CALL_LEASE_S = 60.0  # a worker killed mid-call delays that call for the others this long at most

# Numbered, append-only migrations; PRAGMA user_version records how many have run.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS llm_cache (
        request_hash TEXT PRIMARY KEY,
        role         TEXT NOT NULL,
        model        TEXT NOT NULL,
        response     TEXT NOT NULL,
        created_at   TEXT NOT NULL
    )
    """,
]


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def request_hash(model: str, messages: Any, params: Mapping[str, Any]) -> str:
    """sha256 of everything that determines an answer: model, messages and sampling params.

    ``params`` carries temperature, top_p, max_tokens, seed, sample index, n, extra body, ...;
    ``None`` values are dropped so that adding a new optional parameter later does not change
    the hash of requests that never set it. The endpoint URL is deliberately not part of the
    key: moving a model to another server must not invalidate the cache.
    """
    clean = {k: v for k, v in params.items() if v is not None}
    blob = canonical_json({"model": model, "messages": messages, "params": clean})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CallCache:
    """SQLite-backed map ``request_hash -> response`` (JSON object), safe across threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        with self._lock:
            self._connection()  # create the file and run migrations now, not at first use

    def _connection(self) -> sqlite3.Connection:
        """The shared connection, (re)opened on demand so a closed cache can be used again."""
        if self._db is None:
            # isolation_level=None: autocommit, every INSERT is committed when it returns.
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                 timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a killed process (what a crashed run needs);
            # only a power cut can lose the last few, and FULL would fsync every call (~4 ms).
            db.execute("PRAGMA synchronous=NORMAL")
            _migrate(db)
            self._db = db
        return self._db

    def __repr__(self) -> str:
        return f"CallCache({str(self.path)!r})"

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._connection().execute(
                "SELECT response FROM llm_cache WHERE request_hash = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, *, role: str, model: str, response: Mapping[str, Any]) -> bool:
        """Store a finished call; the first answer for a key wins. True if it was new."""
        created = datetime.now(UTC).isoformat()
        with self._lock:
            cur = self._connection().execute(
                "INSERT OR IGNORE INTO llm_cache (request_hash, role, model, response, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, role, model, json.dumps(dict(response), ensure_ascii=False), created))
        return cur.rowcount == 1

    async def aget(self, key: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.get, key)

    async def aput(self, key: str, *, role: str, model: str,
                   response: Mapping[str, Any]) -> bool:
        return await asyncio.to_thread(self.put, key, role=role, model=model, response=response)

    async def acquire(self, key: str) -> dict[str, Any] | None:
        """Before paying for ``key``: another worker's answer if it finishes one meanwhile,
        else None once this worker may make the call. One process needs no lease (identical
        calls in flight already share one request), so here it is a plain lookup."""
        return None

    async def arelease(self, key: str) -> None:
        """After the call for ``key`` (answered or failed)."""

    def __len__(self) -> int:
        with self._lock:
            return self._connection().execute("SELECT count(*) FROM llm_cache").fetchone()[0]

    def close(self) -> None:
        """Close the connection; the next use reopens it."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> CallCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _migrate(db: sqlite3.Connection) -> None:
    done = db.execute("PRAGMA user_version").fetchone()[0]
    for number, sql in enumerate(_MIGRATIONS[done:], start=done + 1):
        db.execute("BEGIN IMMEDIATE")
        db.execute(sql)
        db.execute(f"PRAGMA user_version = {number}")  # an int of ours, not user input
        db.execute("COMMIT")


class SharedCallCache(CallCache):
    """The call cache every worker shares: finished calls as objects in the lake's store.

    The local SQLite file stays as a fast front. A lookup that misses it reads
    ``<store>/calls/<hash[:2]>/<hash>.json`` (one GET on S3; a 404 for a call nobody made);
    a stored call is written there once (first answer wins). Before paying, a worker takes a
    lease on the call (``<store>/leases/call-<hash>``, renewed while the call runs): a second
    worker asking the same call waits for the first one's answer instead of paying again, and
    takes over when the holder dies (its lease lapses after ``lease_s``).
    """

    def __init__(self, path: str | Path, store: str, lease_s: float | None = None,
                 poll_s: float = 0.25):
        super().__init__(path)
        from tasks.leases import Store

        self.store = Store(store)
        self.lease_s = CALL_LEASE_S if lease_s is None else lease_s
        self.poll_s = poll_s
        self._held: dict[str, tuple[Any, asyncio.Task]] = {}

    def __repr__(self) -> str:
        return f"SharedCallCache({str(self.path)!r}, {self.store.root!r})"

    @staticmethod
    def _object(key: str) -> str:
        return f"calls/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        hit = super().get(key)
        if hit is not None:
            return hit
        raw = self.store.get(self._object(key))
        if raw is None:
            return None
        record = json.loads(raw)
        super().put(key, role=record["role"], model=record["model"], response=record["response"])
        return record["response"]

    def put(self, key: str, *, role: str, model: str, response: Mapping[str, Any]) -> bool:
        new = super().put(key, role=role, model=model, response=response)
        record = {"role": role, "model": model, "response": dict(response),
                  "created_at": datetime.now(UTC).isoformat()}
        self.store.create(self._object(key), json.dumps(record, ensure_ascii=False).encode())
        return new

    async def acquire(self, key: str) -> dict[str, Any] | None:
        from tasks.leases import Lease

        lease = Lease(self.store, f"call-{key}", ttl_s=self.lease_s)
        while not await asyncio.to_thread(lease.try_acquire):
            await asyncio.sleep(self.poll_s)
            hit = await self.aget(key)
            if hit is not None:
                return hit
        # Look again under the lease: another worker may have finished the call (and released
        # its lease) between our caller's lookup and our acquiring it.
        hit = await self.aget(key)
        if hit is not None:
            await asyncio.to_thread(lease.release)
            return hit
        self._held[key] = (lease, asyncio.create_task(self._renew(lease)))
        return None

    async def _renew(self, lease: Any) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await asyncio.to_thread(lease.renew)

    async def arelease(self, key: str) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            lease, renewal = held
            renewal.cancel()
            await asyncio.to_thread(lease.release)
