"""Reference log-probabilities: computed once per dataset version with the frozen base model.

DPO compares the policy with the frozen reference (the base model) on every pair. The reference
side never changes during a run, so it is computed in one no-grad pass (shared-prefix layout:
each long prompt encoded once for both answers) and stored next to the version's data as
``<version folder>/reference_logps.parquet``: one row per pair, keyed by ``prompt_id``, with
``ref_chosen_logps``, ``ref_rejected_logps`` (the names TRL reads), the token counts and
``ids_sha`` (a digest of the exact prompt/chosen/rejected token ids, so a change of tokenizer,
template or truncation limits is seen). The Parquet metadata (key ``longreward``) names the base
model, its content hash, the dataset version and the code revision.

``load_or_compute_reference`` reuses the file when the base model hash and every pair's ids
digest match, and otherwise recomputes and overwrites it (the file is a cache beside the
immutable data: the version's content hash covers ``data.parquet`` only). Training then needs
no second copy of the model in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from tasks import storage
from tasks.publish import DatasetVersion, code_revision
from tasks.train.data import TokenizedPair
from tasks.train.logprobs import pair_logprobs_shared, pair_logprobs_unshared

log = logging.getLogger(__name__)
REFERENCE_FILE = "reference_logps.parquet"
META_KEY = b"longreward"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class ReferenceLogps:
    """Reference sums aligned with the pairs they were asked for (shape ``[N]``, float32)."""

    chosen: Tensor
    rejected: Tensor
    uri: str
    reused: bool  # True when read from the stored file, False when computed now
    base_model_hash: str


def reference_uri(version: DatasetVersion) -> str:
    return storage.join(version.uri, REFERENCE_FILE)


def model_hash(base_model: str) -> str:
    """SHA-256 over a model folder's config and weight files (names and contents).

    Not a folder (a hub name): the name itself is hashed, so only the name is checked.
    """
    path = Path(base_model)
    if not path.is_dir():
        return hashlib.sha256(f"name:{base_model}".encode()).hexdigest()
    files = sorted(f for f in path.rglob("*") if f.is_file() and (
        f.name == "config.json" or f.name.endswith(WEIGHT_SUFFIXES)
        or f.name.endswith(".index.json")))
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(str(path), stamp)


@lru_cache(maxsize=8)
def _hash_files(root: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    """Cached per (path, size, mtime): a 15 GB model is read once per process, not per call."""
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(str(Path(name).relative_to(root)).encode() + b"\0")
        with open(name, "rb") as src:
            while block := src.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def ids_sha(pair: TokenizedPair) -> str:
    data = json.dumps([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]).encode()
    return hashlib.sha256(data).hexdigest()[:32]


@torch.no_grad()
def compute_reference(
    model: nn.Module, pairs: Sequence[TokenizedPair], micro_batch_size: int = 4,
    shared_prefix: bool = True,
) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) summed log-probs of every pair under ``model``, in eval mode."""
    pair_fn = pair_logprobs_shared if shared_prefix else pair_logprobs_unshared
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for start in range(0, len(pairs), micro_batch_size):
            batch = pairs[start : start + micro_batch_size]
            c, r = pair_fn(model, [p.prompt_ids for p in batch], [p.chosen_ids for p in batch],
                           [p.rejected_ids for p in batch])
            chosen.append(c.logps.float().cpu())
            rejected.append(r.logps.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def load_reference(
    uri: str, pairs: Sequence[TokenizedPair], base_model_hash: str
) -> ReferenceLogps | None:
    """The stored reference for ``pairs``, or None when absent or stale (logged why)."""
    if not storage.exists(uri):
        return None
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    if meta.get("base_model_hash") != base_model_hash:
        log.info("reference %s was computed with another base model (%s); recomputing", uri,
                 meta.get("base_model"))
        return None
    rows = {(r["prompt_id"], r["ids_sha"]): r for r in table.to_pylist()}
    keys = [(p.prompt_id, ids_sha(p)) for p in pairs]
    missing = [key[0] for key in keys if key not in rows]
    if missing:
        log.info("reference %s lacks or mismatches %d pairs (e.g. %s); recomputing", uri,
                 len(missing), missing[0])
        return None
    # TRL's column names; references written before we used them say chosen_/rejected_logps
    old = "ref_chosen_logps" not in table.column_names
    chosen = torch.tensor([rows[key]["chosen_logps" if old else "ref_chosen_logps"]
                           for key in keys])
    rejected = torch.tensor([rows[key]["rejected_logps" if old else "ref_rejected_logps"]
                             for key in keys])
    return ReferenceLogps(chosen.float(), rejected.float(), uri, True, base_model_hash)


def write_reference(
    uri: str, pairs: Sequence[TokenizedPair], chosen: Tensor, rejected: Tensor, meta: dict
) -> None:
    table = pa.table({
        "prompt_id": [p.prompt_id for p in pairs],
        "ref_chosen_logps": chosen.double().tolist(),   # the names TRL's DPOTrainer reads
        "ref_rejected_logps": rejected.double().tolist(),
        "chosen_tokens": [len(p.chosen_ids) for p in pairs],
        "rejected_tokens": [len(p.rejected_ids) for p in pairs],
        "ids_sha": [ids_sha(p) for p in pairs],
    })
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    storage.write_bytes(uri, buffer.getvalue())


def load_or_compute_reference(
    version: DatasetVersion,
    pairs: Sequence[TokenizedPair],
    base_model: str,
    model: nn.Module | Callable[[], nn.Module],
    *,
    micro_batch_size: int = 4,
    shared_prefix: bool = True,
    write: bool = True,
) -> ReferenceLogps:
    """Reference log-probs of ``pairs`` (tokenized rows of ``version``) under ``base_model``.

    ``model`` is the frozen base model, or a zero-argument function that loads it: it is
    called only when the stored file cannot be reused. ``write=False`` (non-zero ranks of a
    distributed run) computes without storing.
    """
    base_hash = model_hash(base_model)
    uri = reference_uri(version)
    found = load_reference(uri, pairs, base_hash)
    if found is not None:
        return found
    module = model if isinstance(model, nn.Module) else model()
    chosen, rejected = compute_reference(module, pairs, micro_batch_size, shared_prefix)
    if write:
        meta = {"base_model": base_model, "base_model_hash": base_hash,
                "dataset_version": version.version, "content_hash": version.content_hash,
                "shared_prefix": shared_prefix, "code_revision": code_revision(),
                "created_at": datetime.now(UTC).isoformat()}
        write_reference(uri, pairs, chosen, rejected, meta)
        log.info("reference log-probs of %d pairs stored at %s", len(pairs), uri)
    return ReferenceLogps(chosen, rejected, uri, False, base_hash)
