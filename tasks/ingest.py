"""Ingest new prompt objects from the source into ``prompts`` (bad records into ``rejects``).

Only objects whose (uri, ETag) is not in the ``ingested_objects`` ledger are read. Each object's
rows are written first and the ledger entry last, all by key, so a run killed anywhere reruns
to the same tables: no duplicate and no lost row.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow.compute as pc

from tasks.lake import Lake
from tasks.records import Record, Reject, excerpt, parse_object
from tasks.sources import ObjectVanished, SourceObject, list_objects, read_object
from tasks.tokens import count_tokens, load_tokenizer
from tasks.unpack import Unreadable, unpack

log = logging.getLogger(__name__)

# No tokenizer packs more than this many characters into one token: a cheap guard that rejects
# absurd contexts before paying to tokenize them.
_MAX_CHARS_PER_TOKEN = 32


@dataclass
class ObjectResult:
    uri: str
    prompts: int = 0
    rejects: int = 0
    bytes: int = 0
    skipped: bool = False


@dataclass
class IngestReport:
    run_id: str
    objects_listed: int = 0
    objects_new: int = 0
    prompts: int = 0
    rejects: int = 0
    bytes: int = 0
    tokens: int = 0
    seconds: float = 0.0
    objects: list[ObjectResult] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.objects_new} new of {self.objects_listed} objects: "
                f"{self.prompts} prompts, {self.rejects} rejects, "
                f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f}s")


@dataclass(frozen=True)
class IngestOptions:
    tokenizer: str
    max_context_tokens: int
    max_query_tokens: int


def new_objects(lake: Lake, source: str) -> tuple[list[SourceObject], int]:
    """Objects under the source that the ledger has not seen (by uri and ETag)."""
    listed = list_objects(source)
    done = lake.keys("ingested_objects")
    return [o for o in listed if (o.uri, o.etag) not in done], len(listed)


def ingest(lake: Lake, source: str, options: IngestOptions, run_id: str,
           on_object: Callable[[ObjectResult], None] | None = None) -> IngestReport:
    """Ingest every new object under ``source``; returns counts."""
    started = time.perf_counter()
    todo, listed = new_objects(lake, source)
    report = IngestReport(run_id, objects_listed=listed, objects_new=len(todo))
    log.info("ingest %s: %d objects listed, %d new", source, listed, len(todo))
    for obj in todo:
        result = ingest_object(lake, obj, options, run_id, report)
        report.objects.append(result)
        if on_object:
            on_object(result)
    report.seconds = time.perf_counter() - started
    log.info("ingest done: %s", report.summary())
    return report


def ingest_object(lake: Lake, obj: SourceObject, options: IngestOptions, run_id: str,
                  report: IngestReport) -> ObjectResult:
    now = datetime.now(UTC)
    result = ObjectResult(obj.uri)
    try:
        data = read_object(obj)
    except ObjectVanished as err:
        # Not ledgered: if the object comes back, it will be read then.
        reject = Reject(None, "object_vanished", str(err))
        result.rejects = lake.upsert("rejects", [_reject_row(obj, reject, run_id, now)])
        report.rejects += result.rejects
        result.skipped = True
        log.warning("skipped %s: %s", obj.uri, err)
        return result
    result.bytes = len(data)
    records: list[Record] = []
    rejects: list[Reject] = []
    try:
        name, data = unpack(obj.name, data)
    except Unreadable as err:
        rejects.append(Reject(None, "unreadable_object", f"{obj.name}: {err}"))
    else:
        for item in parse_object(name, data):
            (records if isinstance(item, Record) else rejects).append(item)
    del data
    records, dup_rejects = _drop_duplicates(lake, obj, records)
    rejects += dup_rejects
    rows, size_rejects, tokens = _count_and_cap(records, obj, options, run_id, now)
    rejects += size_rejects

    result.prompts = lake.upsert("prompts", rows)
    result.rejects = lake.upsert("rejects", [_reject_row(obj, r, run_id, now) for r in rejects])
    # The ledger entry goes last: until it commits, a rerun reads this object again.
    lake.upsert("ingested_objects", [{
        "source_uri": obj.uri, "etag": obj.etag, "size": obj.size, "n_prompts": len(rows),
        "n_rejects": len(rejects), "run_id": run_id, "ingested_at": now}])
    report.prompts += result.prompts
    report.rejects += result.rejects
    report.bytes += result.bytes
    report.tokens += tokens
    log.info("ingested %s: %d prompts, %d rejects", obj.uri, len(rows), len(rejects))
    return result


def _drop_duplicates(lake: Lake, obj: SourceObject,
                     records: list[Record]) -> tuple[list[Record], list[Reject]]:
    """Reject records whose content or id repeats an earlier record (this file or the lake).

    A row this very object wrote in an earlier, interrupted run is not a duplicate: the record
    stays, and the keyed write makes it a no-op.
    """
    if not records:
        return [], []
    ids = sorted({r.prompt_id for r in records})
    source_ids = sorted({r.source_id for r in records if r.source_id is not None})
    flt = pc.field("prompt_id").isin(ids)
    if source_ids:
        flt = flt | pc.field("source_id").isin(source_ids)
    columns = ["prompt_id", "source_id", "source_uri", "source_etag", "source_line"]
    earlier = lake.read("prompts", columns=columns, filter=flt).to_pylist()
    by_content = {}
    by_source_id = {}
    for row in earlier:
        own = row["source_uri"] == obj.uri and row["source_etag"] == obj.etag
        where = (row["source_uri"], row["source_line"], own)
        by_content.setdefault(row["prompt_id"], where)
        if row["source_id"] is not None:
            by_source_id.setdefault(row["source_id"], (row["prompt_id"], *where))

    kept, rejects = [], []
    for rec in records:
        pid = rec.prompt_id
        seen = by_content.get(pid)
        if seen and not (seen[2] and seen[1] == rec.line):
            rejects.append(Reject(rec.line, "duplicate_prompt",
                                  f"same context and query as prompt {pid} from "
                                  f"{seen[0]} line {seen[1]}", excerpt(rec.query)))
            continue
        if rec.source_id is not None:
            other = by_source_id.get(rec.source_id)
            if other and other[0] != pid:
                rejects.append(Reject(rec.line, "duplicate_id",
                                      f"id {rec.source_id!r} is already used by a different "
                                      f"prompt from {other[1]} line {other[2]}",
                                      excerpt(rec.query)))
                continue
            by_source_id.setdefault(rec.source_id, (pid, obj.uri, rec.line, True))
        by_content.setdefault(pid, (obj.uri, rec.line, True))
        kept.append(rec)
    return kept, rejects


def _count_and_cap(records: list[Record], obj: SourceObject, options: IngestOptions,
                   run_id: str, now: datetime) -> tuple[list[dict], list[Reject], int]:
    """Token counts for each record; contexts over the cap become rejects."""
    rejects: list[Reject] = []
    sane = []
    for rec in records:
        if len(rec.context) > options.max_context_tokens * _MAX_CHARS_PER_TOKEN:
            rejects.append(_oversize(rec, "context", f"{len(rec.context)} characters",
                                     options.max_context_tokens))
        else:
            sane.append(rec)
    tokenizer = load_tokenizer(options.tokenizer)
    context_tokens = count_tokens(tokenizer, [r.context for r in sane])
    query_tokens = count_tokens(tokenizer, [r.query for r in sane])
    rows, total = [], 0
    for rec, n_ctx, n_q in zip(sane, context_tokens, query_tokens, strict=True):
        if n_ctx > options.max_context_tokens:
            rejects.append(_oversize(rec, "context", f"{n_ctx} tokens", options.max_context_tokens))
            continue
        if n_q > options.max_query_tokens:
            rejects.append(_oversize(rec, "query", f"{n_q} tokens", options.max_query_tokens))
            continue
        total += n_ctx + n_q
        rows.append({
            "prompt_id": rec.prompt_id, "source_id": rec.source_id, "source_uri": obj.uri,
            "source_etag": obj.etag, "source_line": rec.line, "context": rec.context,
            "query": rec.query, "meta": rec.meta, "context_tokens": n_ctx, "query_tokens": n_q,
            "tokenizer": options.tokenizer, "run_id": run_id, "ingested_at": now})
    return rows, rejects, total


def _oversize(rec: Record, name: str, size: str, cap: int) -> Reject:
    return Reject(rec.line, "oversize", f"{name} is {size}, over the cap of {cap} tokens",
                  excerpt(rec.query))


def _reject_row(obj: SourceObject, reject: Reject, run_id: str, now: datetime) -> dict:
    key = f"{obj.uri}\x00{obj.etag}\x00{reject.line}\x00{reject.reason_code}"
    return {
        "reject_id": hashlib.sha256(key.encode()).hexdigest()[:32], "source_uri": obj.uri,
        "source_etag": obj.etag, "line": reject.line, "reason_code": reject.reason_code,
        "reason": reject.reason, "raw_excerpt": reject.raw_excerpt, "run_id": run_id,
        "rejected_at": now}
