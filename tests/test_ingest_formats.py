"""Ingest what producers write: compressed objects, a byte-order mark, a JSON array file; bad
records inside them still get their own rejects, and an unreadable object is one reject."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest

from tasks.demo_data import jsonl
from tasks.ingest import IngestOptions, ingest
from tasks.unpack import Unreadable, unpack
from tests.test_ingest import _parquet, _rec

OPTIONS = IngestOptions("all-MiniLM-L6-v2", max_context_tokens=20_000, max_query_tokens=512)


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


def test_real_producer_formats_land_and_their_bad_records_are_rejected(lake, bucket, put):
    bad = b'{"context": "no query here"}\n'
    put("in/a.jsonl.gz", gzip.compress(jsonl([_rec(1), _rec(2)]) + bad))
    put("in/b.jsonl.zst", _zstd(jsonl([_rec(3)])))
    put("in/c.jsonl", b"\xef\xbb\xbf" + jsonl([_rec(4), _rec(5)]))
    put("in/d.json", json.dumps([_rec(6), _rec(7), {"query": "no context"}]).encode())
    put("in/e.parquet.gz", gzip.compress(_parquet([_rec(8)])))
    put("in/f.json", json.dumps(_rec(9), indent=2).encode())   # one pretty-printed record
    report = ingest(lake, f"s3://{bucket}/in", OPTIONS, run_id="r")
    assert (report.objects_new, report.prompts, report.rejects) == (6, 9, 2)
    reasons = {(r["source_uri"].rsplit("/", 1)[-1], r["reason_code"])
               for r in lake.read("rejects").to_pylist()}
    assert reasons == {("a.jsonl.gz", "missing_field"), ("d.json", "missing_field")}


def test_a_corrupt_or_bombing_object_is_one_reject_and_the_next_goes_on(lake, bucket, put):
    put("in/a.jsonl.gz", b"\x1f\x8b\x08 this is not gzip")
    put("in/b.jsonl", jsonl([_rec(1)]))
    report = ingest(lake, f"s3://{bucket}/in", OPTIONS, run_id="r")
    assert (report.prompts, report.rejects) == (1, 1)
    assert lake.read("rejects").to_pylist()[0]["reason_code"] == "unreadable_object"
    assert len(lake.read("ingested_objects")) == 2  # ledgered: not read again every night
    with pytest.raises(Unreadable, match="more than"):
        unpack("x.jsonl.gz", gzip.compress(b"0" * 10_000), limit=1_000)
