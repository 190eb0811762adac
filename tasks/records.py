"""Parse a source object's bytes into prompt records, or rejects with a readable reason.

Accepted: JSON Lines (``.jsonl``, ``.json``, ``.ndjson``) and Parquet, with records
``{id?, context, query, meta?}`` or the published LongReward names ``{idx, query, context}``.
Pure functions: no I/O, no lake.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

EXCERPT_CHARS = 200
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
_KNOWN = {"id", "idx", "context", "query", "meta"}


@dataclass(frozen=True)
class Record:
    """A valid prompt record, before token counting."""

    line: int
    source_id: str | None
    context: str
    query: str
    meta: str | None

    @property
    def prompt_id(self) -> str:
        return prompt_id(self.context, self.query)


@dataclass(frozen=True)
class Reject:
    line: int | None
    reason_code: str
    reason: str
    raw_excerpt: str | None = None


def prompt_id(context: str, query: str) -> str:
    """Content address of a prompt: the same context and query always get the same id."""
    digest = hashlib.sha256()
    for part in (context, query):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:32]


def excerpt(raw: Any) -> str:
    if isinstance(raw, bytes):
        raw = raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    elif not isinstance(raw, str):
        raw = json.dumps(raw, default=str, ensure_ascii=False)
    return raw[:EXCERPT_CHARS]


def parse_object(name: str, data: bytes) -> Iterator[Record | Reject]:
    """Records and rejects of one object, in order; never raises on bad content."""
    if not data.strip():
        yield Reject(None, "empty_object", "the object is empty: it holds no records")
        return
    lower = name.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        yield from _parse_parquet(data)
    elif lower.endswith(JSONL_SUFFIXES):
        yield from _parse_jsonl(data)
    else:
        yield Reject(None, "unsupported_format",
                     f"unsupported file type {name!r}: expected .jsonl/.json/.ndjson or .parquet",
                     excerpt(data))


def _parse_jsonl(data: bytes) -> Iterator[Record | Reject]:
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield Reject(number, "invalid_utf8",
                         f"line is not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset "
                         f"{err.start})", excerpt(raw))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            yield Reject(number, "malformed_json", f"malformed JSON: {err.msg} at column "
                         f"{err.colno}", excerpt(text))
            continue
        yield validate(obj, number, text)


def _parse_parquet(data: bytes) -> Iterator[Record | Reject]:
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        batches = list(parquet.iter_batches(batch_size=1024))
    except (pa.ArrowException, OSError, ValueError) as err:
        yield Reject(None, "unreadable_parquet", f"cannot read Parquet file: {err}", excerpt(data))
        return
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            yield validate(row, number, row)


def validate(obj: Any, line: int, raw: Any) -> Record | Reject:
    """Check one decoded record's fields and types."""
    if not isinstance(obj, dict):
        return Reject(line, "not_an_object",
                      f"record must be a JSON object, got {type(obj).__name__}", excerpt(raw))
    if not obj:
        return Reject(line, "empty_record", "record is an empty object {}", excerpt(raw))
    fields: dict[str, str] = {}
    for name in ("context", "query"):
        value = obj.get(name)
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                return Reject(line, "invalid_utf8", f"field {name!r} is not valid UTF-8",
                              excerpt(raw))
        if value is None:
            return Reject(line, "missing_field", f"required field {name!r} is missing",
                          excerpt(raw))
        if not isinstance(value, str):
            return Reject(line, "wrong_type",
                          f"field {name!r} must be a string, got {type(value).__name__}",
                          excerpt(raw))
        if not value.strip():
            return Reject(line, "empty_field", f"field {name!r} is empty", excerpt(raw))
        if not _encodable(value):
            return Reject(line, "invalid_unicode",
                          f"field {name!r} holds text that is not valid Unicode (lone surrogate)",
                          excerpt(raw))
        fields[name] = value
    source_id = obj.get("id", obj.get("idx"))
    if source_id is not None and (isinstance(source_id, bool)
                                  or not isinstance(source_id, str | int)):
        return Reject(line, "wrong_type",
                      f"field 'id' must be a string or integer, got {type(source_id).__name__}",
                      excerpt(raw))
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        return Reject(line, "wrong_type", f"field 'meta' must be an object, got "
                      f"{type(meta).__name__}", excerpt(raw))
    extra = {k: v for k, v in obj.items() if k not in _KNOWN}
    merged = {**(meta or {}), **({"extra": extra} if extra else {})}
    try:
        meta_json = json.dumps(merged, default=str, ensure_ascii=False) if merged else None
        if meta_json is not None and not _encodable(meta_json):
            raise ValueError("lone surrogate")
    except (TypeError, ValueError):
        return Reject(line, "wrong_type", "field 'meta' cannot be stored as JSON", excerpt(raw))
    return Record(line, None if source_id is None else str(source_id), fields["context"],
                  fields["query"], meta_json)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
