"""Prefect task results in the lake's store, so task caching survives the machine that ran it.

Prefect keeps a cached task's result (and the record its cache key points at) in result
storage, by default a folder under ``PREFECT_HOME``: a pod that dies takes it along, and a
worker on another machine never sees it. Here the batches' results go to
``<lake>/prefect/results``, where every worker of the lake reads and writes: a folder lake is
a plain path (Prefect makes it a ``LocalFileSystem``); an ``s3://`` lake is Prefect's
fsspec-based ``RemoteFileSystem`` over the pyarrow S3 filesystem the lake already uses (same
credentials and endpoint, no extra package), saved as a block on the Prefect API, since a task
accepts only saved storage. The block holds the path alone: credentials stay in each worker's
environment.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fsspec.implementations.arrow import ArrowFSWrapper
from prefect.filesystems import RemoteFileSystem

from tasks import storage

RESULTS_DIR = "prefect/results"


class LakeResultStorage(RemoteFileSystem):
    """``RemoteFileSystem`` on an ``s3://`` path through the lake's own S3 filesystem."""

    _block_type_name = "longreward lake results"

    @property
    def filesystem(self) -> Any:
        # Prefect builds fsspec's "s3" filesystem, which needs s3fs; the lake's pyarrow
        # filesystem (AWS chain, AWS_ENDPOINT_URL) wrapped for fsspec does the same job.
        return ArrowFSWrapper(storage.filesystem(self.basepath)[0])


def result_storage(lake: str) -> Path | LakeResultStorage:
    """Where task results of runs over ``lake`` are persisted: ``<lake>/prefect/results``
    (an ``s3://`` lake's storage block is saved, or updated, on the current Prefect API)."""
    root = storage.join(lake, RESULTS_DIR)
    if not storage.is_s3(lake):
        return Path(root).absolute()
    block = LakeResultStorage(basepath=root)
    block.save(f"lake-{hashlib.sha256(root.encode()).hexdigest()[:16]}", overwrite=True)
    return block
