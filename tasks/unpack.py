"""What producers write, unwrapped before records are parsed: compression and framing.

- ``.gz`` and ``.zst`` objects are decompressed (pyarrow's streams; the name loses the
  suffix, so ``batch.jsonl.gz`` is read as ``batch.jsonl``), with a cap on the decompressed
  size so a small bomb cannot exhaust memory;
- a UTF-8 byte-order mark at the start is dropped (editors on Windows write one);
- a ``.json`` file holding one JSON array of records (or one pretty-printed record) becomes
  one record per line, so every element is parsed, and rejected, on its own like a JSON Lines
  record.

Anything that cannot be unwrapped raises :class:`Unreadable` with a reason: the object gets a
reject and its ledger entry, and ingestion goes on.
"""

from __future__ import annotations

import json

import pyarrow as pa

BOM = b"\xef\xbb\xbf"
CODECS = {".gz": "gzip", ".zst": "zstd"}
MAX_BYTES = 4 << 30   # decompressed size of one object
_CHUNK = 1 << 20


class Unreadable(ValueError):
    """The object's bytes cannot be unwrapped into records."""


def _decompress(data: bytes, codec: str, limit: int) -> bytes:
    try:
        stream = pa.CompressedInputStream(pa.BufferReader(data), codec)
        parts, size = [], 0
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise Unreadable(f"decompresses to more than {limit:,} bytes")
            parts.append(chunk)
    except (OSError, pa.ArrowException) as err:
        raise Unreadable(f"not valid {codec} data: {err}") from err
    return b"".join(parts)


def _document_as_lines(data: bytes) -> bytes:
    """A ``.json`` document holding one array of records (or one record spread over several
    lines) as JSON Lines; anything else is returned unchanged, to be read as JSON Lines."""
    if data.lstrip()[:1] not in (b"[", b"{"):
        return data
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return data  # JSON Lines, or broken: the record parser says which, line by line
    records = document if isinstance(document, list) else [document]
    return b"\n".join(json.dumps(r, ensure_ascii=False, allow_nan=True).encode()
                      for r in records)


def unpack(name: str, data: bytes, limit: int = MAX_BYTES) -> tuple[str, bytes]:
    """(name without a compression suffix, the bytes the record parser should read)."""
    for suffix, codec in CODECS.items():
        if name.lower().endswith(suffix):
            name, data = name[: -len(suffix)], _decompress(data, codec, limit)
            break
    if data.startswith(BOM):
        data = data[len(BOM):]
    if name.lower().endswith(".json"):
        data = _document_as_lines(data)
    return name, data
