"""Ingest from a real S3 endpoint: only new objects, bad records to rejects, good rows land."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import storage
from tasks.demo_data import jsonl, make_prompts
from tasks.ingest import IngestOptions, ingest
from tasks.lake import Lake

OPTIONS = IngestOptions("all-MiniLM-L6-v2", max_context_tokens=20_000, max_query_tokens=512)


def _rec(i: int, **extra) -> dict:
    return {"id": f"r{i}", "context": f"Document {i}. The river is {i} km long.",
            "query": f"How long is river {i}?", **extra}


def _parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def _run(lake: Lake, bucket: str, **kw):
    return ingest(lake, f"s3://{bucket}/in", OPTIONS, run_id="run-test", **kw)


def test_second_run_ingests_nothing_and_a_new_object_alone(lake, bucket, put):
    put("in/a.jsonl", jsonl([_rec(1), _rec(2)]))
    put("in/b.parquet", _parquet([_rec(3)]))
    first = _run(lake, bucket)
    assert (first.objects_new, first.prompts, first.rejects) == (2, 3, 0)

    second = _run(lake, bucket)
    assert (second.objects_listed, second.objects_new, second.prompts) == (2, 0, 0)

    put("in/c.jsonl", jsonl([_rec(4)]))
    third = _run(lake, bucket)
    assert [o.uri for o in third.objects] == [f"s3://{bucket}/in/c.jsonl"]
    assert third.prompts == 1
    assert lake.count("prompts") == 4
    assert sorted(lake.read("prompts", columns=["source_id"]).column(0).to_pylist()) == \
        ["r1", "r2", "r3", "r4"]


def test_published_longreward_field_names_are_accepted(lake, bucket, put):
    put("in/lr.jsonl", jsonl([{"idx": 17, "query": "Who?", "context": "Ana wrote it.",
                               "dataset": "longbench"}]))
    _run(lake, bucket)
    row = lake.read("prompts").to_pylist()[0]
    assert row["source_id"] == "17"
    assert json.loads(row["meta"]) == {"extra": {"dataset": "longbench"}}
    assert row["context_tokens"] > 0 and row["query_tokens"] > 0


def test_prompt_id_is_content_addressed(lake, bucket, put):
    put("in/a.jsonl", jsonl([_rec(1)]))
    _run(lake, bucket)
    other = Lake(lake.root + "-other")
    put("in/b.jsonl", jsonl([{**_rec(1), "id": None}]))
    ingest(other, f"s3://{bucket}/in/b.jsonl", OPTIONS, run_id="x")
    assert lake.read("prompts").column("prompt_id").to_pylist() == \
        other.read("prompts").column("prompt_id").to_pylist()


# Each bad record kind: (object key, body, line or None, reason_code, words in the reason)
BAD_KINDS = [
    ("malformed", b'{"id": "m", "context": "x", "query": ', 1, "malformed_json", "malformed JSON"),
    ("missing", json.dumps({"id": "q", "context": "text"}).encode(), 1, "missing_field",
     "'query' is missing"),
    ("empty-field", json.dumps({"context": "  ", "query": "why?"}).encode(), 1, "empty_field",
     "'context' is empty"),
    ("wrong-type", json.dumps({"context": 42, "query": "why?"}).encode(), 1, "wrong_type",
     "must be a string, got int"),
    ("wrong-id", json.dumps({"id": {"a": 1}, "context": "c", "query": "q"}).encode(), 1,
     "wrong_type", "'id' must be a string or integer"),
    ("not-utf8", b'{"context": "caf\xe9 au lait", "query": "what?"}', 1, "invalid_utf8",
     "not valid UTF-8"),
    ("surrogate", b'{"context": "bad \\ud800 text", "query": "what?"}', 1, "invalid_unicode",
     "lone surrogate"),
    ("empty-record", b"{}", 1, "empty_record", "empty object"),
    ("not-object", b"[1, 2]", 1, "not_an_object", "must be a JSON object"),
    ("oversize", json.dumps({"context": "word " * 25_000, "query": "q?"}).encode(), 1,
     "oversize", "over the cap of 20000 tokens"),
]


@pytest.mark.parametrize(("name", "bad", "line", "code", "words"), BAD_KINDS,
                         ids=[k[0] for k in BAD_KINDS])
def test_each_bad_record_is_one_reject_and_good_rows_land(lake, bucket, put, name, bad, line,
                                                         code, words):
    body = bad + b"\n" + jsonl([_rec(1), _rec(2)])
    put(f"in/{name}.jsonl", body)
    report = _run(lake, bucket)
    rejects = lake.read("rejects").to_pylist()
    assert len(rejects) == 1, rejects
    assert (rejects[0]["line"], rejects[0]["reason_code"]) == (line, code)
    assert words in rejects[0]["reason"]
    assert rejects[0]["source_uri"] == f"s3://{bucket}/in/{name}.jsonl"
    assert report.prompts == 2 and lake.count("prompts") == 2


def test_duplicates_within_and_across_files(lake, bucket, put):
    put("in/1.jsonl", jsonl([_rec(1), _rec(1), {**_rec(2), "id": "r1"}]))
    put("in/2.jsonl", jsonl([_rec(1, id="fresh"), {**_rec(3), "id": "r2"}, _rec(4)]))
    _run(lake, bucket)
    rejects = {(r["source_uri"].rsplit("/", 1)[1], r["line"]): r
               for r in lake.read("rejects").to_pylist()}
    assert {k: r["reason_code"] for k, r in rejects.items()} == {
        ("1.jsonl", 2): "duplicate_prompt",   # same record twice in one file
        ("1.jsonl", 3): "duplicate_id",       # id r1 reused for other content
        ("2.jsonl", 1): "duplicate_prompt",   # content already ingested from 1.jsonl
    }
    assert "1.jsonl line 1" in rejects[("2.jsonl", 1)]["reason"]
    # id r2 is not in the lake (its line was rejected), so r3-with-id-r2 is legitimate
    assert sorted(lake.read("prompts", columns=["source_id"]).column(0).to_pylist()) == \
        ["r1", "r2", "r4"]


def test_empty_object_truncated_parquet_and_unknown_format(lake, bucket, put):
    good = _parquet([_rec(i) for i in range(50)])
    put("in/a-empty.jsonl", b"")
    put("in/b-truncated.parquet", good[: len(good) // 2])
    put("in/c-notes.txt", b"hello")
    put("in/d-good.parquet", good)
    _run(lake, bucket)
    codes = sorted((r["source_uri"].rsplit("/", 1)[1], r["line"], r["reason_code"])
                   for r in lake.read("rejects").to_pylist())
    assert codes == [("a-empty.jsonl", None, "empty_object"),
                     ("b-truncated.parquet", None, "unreadable_parquet"),
                     ("c-notes.txt", None, "unsupported_format")]
    assert lake.count("prompts") == 50


def test_object_deleted_between_list_and_get(lake, bucket, put):
    put("in/a.jsonl", jsonl([_rec(1)]))
    put("in/b.jsonl", jsonl([_rec(2)]))
    client = storage.s3_client()

    def delete_b(result):  # runs after a.jsonl, before b.jsonl is read
        if result.uri.endswith("a.jsonl"):
            client.delete_object(Bucket=bucket, Key="in/b.jsonl")

    report = _run(lake, bucket, on_object=delete_b)
    rejects = lake.read("rejects").to_pylist()
    assert [r["reason_code"] for r in rejects] == ["object_vanished"]
    assert "disappeared" in rejects[0]["reason"] or "changed" in rejects[0]["reason"]
    assert report.prompts == 1
    # not ledgered: if it comes back, the next run reads it
    put("in/b.jsonl", jsonl([_rec(2)]))
    assert _run(lake, bucket).prompts == 1


def test_local_folder_source(lake, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "x.jsonl").write_bytes(jsonl([p.record() for p in make_prompts(3)]))
    report = ingest(lake, str(folder), OPTIONS, run_id="r")
    assert report.prompts == 3
    assert ingest(lake, str(folder), OPTIONS, run_id="r2").objects_new == 0
