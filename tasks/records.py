"""Parse a source object's bytes into prompt records, or rejects with a readable reason.

Accepted: JSON Lines (``.jsonl``, ``.json``, ``.ndjson``) and Parquet, with records
``{id?, context, query, meta?}`` or the published LongReward names ``{idx, query, context}``.
Pure functions: no I/O, no lake. Every record is data: whatever the bytes (nesting thousands
deep, NaN, 1e999, a 5,000-digit integer, a timestamp out of range, duplicate Parquet columns),
parsing yields rejects with a reason and never raises.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

EXCERPT_CHARS = 200
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
_KNOWN = {"id", "idx", "context", "query", "meta"}
MAX_DEPTH = 64                   # nesting of a record (its meta); deeper is a reject
MAX_RECORD_BYTES = 64 * 2**20    # one JSON Lines record; a 131k-token context is ~0.5 MB
MAX_INT_DIGITS = 1000            # Python refuses to parse ints past 4,300 digits anyway


class _BadNumber(ValueError):
    """A number JSON cannot carry faithfully (NaN, Infinity, 1e999, thousands of digits)."""


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
        try:
            raw = json.dumps(raw, default=str, ensure_ascii=False)
        except (RecursionError, TypeError, ValueError):
            raw = repr(raw)[: EXCERPT_CHARS * 4]
    return raw[:EXCERPT_CHARS].encode("utf-8", errors="replace").decode("utf-8")


def parse_object(name: str, data: bytes) -> Iterator[Record | Reject]:
    """Records and rejects of one object, in order; never raises on bad content.

    A failure nobody foresaw still ends as one reject for the rest of the object (the records
    before it stand), so the object is ledgered and the next one goes on.
    """
    line = None
    try:
        for item in _parse_object(name, data):
            line = item.line
            yield item
    except Exception as err:  # noqa: BLE001 - the last guard: bad bytes must never stop a run
        yield Reject(None, "unparseable", f"parsing stopped after line {line}: "
                     f"{type(err).__name__}: {str(err)[:200]}")


def _parse_object(name: str, data: bytes) -> Iterator[Record | Reject]:
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
        if len(raw) > MAX_RECORD_BYTES:
            yield Reject(number, "oversize_record", f"record is {len(raw)} bytes, over the cap "
                         f"of {MAX_RECORD_BYTES}", excerpt(raw))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield Reject(number, "invalid_utf8",
                         f"line is not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset "
                         f"{err.start})", excerpt(raw))
            continue
        try:
            obj = _loads(text)
        except json.JSONDecodeError as err:
            yield Reject(number, "malformed_json", f"malformed JSON: {err.msg} at column "
                         f"{err.colno}", excerpt(text))
            continue
        except _BadNumber as err:
            yield Reject(number, "invalid_number", str(err), excerpt(text))
            continue
        except RecursionError:
            yield Reject(number, "too_deep", f"record is nested deeper than {MAX_DEPTH} levels",
                         excerpt(text))
            continue
        yield validate(obj, number, text)


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)


def _constant(name: str) -> float:
    raise _BadNumber(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"number {text[:40]} is out of range")
    return value


def _int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise _BadNumber(f"integer with {len(text)} digits is out of range")
    return int(text)


def _parse_parquet(data: bytes) -> Iterator[Record | Reject]:
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        batches = list(parquet.iter_batches(batch_size=1024))
    except (pa.ArrowException, OSError, ValueError) as err:
        yield Reject(None, "unreadable_parquet", f"cannot read Parquet file: {err}", excerpt(data))
        return
    names = parquet.schema_arrow.names
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        yield Reject(None, "ambiguous_columns", f"Parquet columns repeat: {repeated}")
        return
    number = 0
    for batch in batches:
        for row in _rows(batch):
            number += 1
            yield validate(row, number, row) if isinstance(row, dict) else Reject(
                number, "unreadable_value", f"a value cannot be read as Python: {row}")


def _rows(batch: pa.RecordBatch) -> list[dict | str]:
    """The batch's rows; one that Python cannot hold (a timestamp past year 9999) is a reason."""
    try:
        return batch.to_pylist()
    except (pa.ArrowException, ArithmeticError, ValueError):
        rows: list[dict | str] = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).to_pylist()[0])
            except (pa.ArrowException, ArithmeticError, ValueError) as err:
                rows.append(f"{type(err).__name__}: {str(err)[:200]}")
        return rows


def validate(obj: Any, line: int, raw: Any) -> Record | Reject:
    """Check one decoded record's fields and types."""
    if _depth(obj) > MAX_DEPTH:
        return Reject(line, "too_deep", f"record is nested deeper than {MAX_DEPTH} levels",
                      excerpt(raw))
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
        meta_json = (json.dumps(merged, default=str, ensure_ascii=False, allow_nan=False)
                     if merged else None)
        if meta_json is not None and not _encodable(meta_json):
            raise ValueError("lone surrogate")
    except (TypeError, ValueError, RecursionError):
        return Reject(line, "wrong_type", "field 'meta' cannot be stored as JSON", excerpt(raw))
    return Record(line, None if source_id is None else str(source_id), fields["context"],
                  fields["query"], meta_json)


def _depth(obj: Any) -> int:
    """Nesting depth of lists and dicts, without recursion (so any depth is measurable)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list | tuple):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
