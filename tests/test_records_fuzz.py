"""Every record is data: generated hostile records never raise out of parsing or ingest."""

from __future__ import annotations

import io
import json
import random
from datetime import datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.ingest import IngestOptions, ingest
from tasks.records import MAX_DEPTH, Record, Reject, parse_object

OPTIONS = IngestOptions("all-MiniLM-L6-v2", max_context_tokens=20_000, max_query_tokens=512)
GOOD = {"context": "The river is 12 km long.", "query": "How long is the river?"}


def _strict(text: str):
    def refuse(name):
        raise ValueError(name)
    return json.loads(text, parse_constant=refuse)


def _deep(n: int, leaf: str = "1") -> str:
    return "[" * n + leaf + "]" * n


def _hostile_value(rng: random.Random) -> str:
    """A JSON-ish value text chosen to break a parser that trusts its input."""
    choices = [
        lambda: _deep(rng.choice([10, 65, 1_000, 10_000, 50_000])),
        lambda: '{"a":' * rng.choice([70, 5_000]) + "1" + "}" * rng.choice([70, 5_000]),
        lambda: rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999"]),
        lambda: "9" * rng.choice([20, 400, 4_400, 20_000]),
        lambda: rng.choice(['"\\ud800"', '"\\udfff x"', '"\\u0000"', '"\\ufeff"', '""', '" "']),
        lambda: rng.choice(["true", "null", "[]", "{}", "[1, 2]", '{"x": [null]}']),
        lambda: json.dumps("".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(50))),
        lambda: json.dumps("x" * rng.choice([1, 10_000, 200_000])),
        lambda: rng.choice(["1.5", "-0", "0.1e2", "123456789012345678901234567890"]),
    ]
    return rng.choice(choices)()


def _hostile_line(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # a record whose fields are hostile values
        fields = {k: (_hostile_value(rng) if rng.random() < 0.5 else json.dumps(GOOD.get(k, k)))
                  for k in rng.sample(["id", "idx", "context", "query", "meta", "extra"],
                                      rng.randrange(1, 6))}
        return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()
    if kind == 1:  # a good record with a hostile meta
        return ('{"context": "c ' + str(rng.random()) + '", "query": "q", "meta": {"m": '
                + _hostile_value(rng) + "}}").encode()
    if kind == 2:  # random bytes, invalid UTF-8 included
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).replace(b"\n", b"")
    if kind == 3:  # a top-level value that is not an object
        return _hostile_value(rng).encode()
    if kind == 4:  # a record cut short
        whole = json.dumps({**GOOD, "meta": {"k": list(range(20))}})
        return whole[: rng.randrange(1, len(whole))].encode()
    return json.dumps({**GOOD, "context": f"Fine record {rng.random()}."}).encode()


def _hostile_parquet(rng: random.Random) -> bytes:
    tables = [
        pa.table({"context": pa.array([10**15], pa.timestamp("s")), "query": ["q"]}),
        pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array(["q"])],
                             names=["context", "context", "query"]),
        pa.table({"context": pa.array([Decimal(10) ** 30], pa.decimal128(38, 0)),
                  "query": ["q"]}),
        pa.table({"context": ["c"], "query": ["q"],
                  "meta": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64()))}),
        pa.table({"context": ["c nan"], "query": ["q"], "meta": [{"x": float("nan")}]}),
        pa.table({"context": [b"\xff\xfe"], "query": [b"q"]}),
        pa.table({"context": [["a", "b"]], "query": ["q"]}),
        pa.table({"context": pa.array([None], pa.string()), "query": ["q"]}),
        pa.table({"context": ["c when"], "query": ["q"],
                  "when": pa.array([datetime(2026, 1, 1)])}),
        pa.table({"context": pa.array(["c dict"]).dictionary_encode(), "query": ["q"]}),
    ]
    buffer = io.BytesIO()
    pq.write_table(rng.choice(tables), buffer)
    data = buffer.getvalue()
    return data if rng.random() < 0.8 else data[: rng.randrange(4, len(data))]


def _check(items: list) -> None:
    for item in items:
        assert isinstance(item, Record | Reject)
        if isinstance(item, Reject):
            assert item.reason_code and item.reason
            for text in (item.reason, item.raw_excerpt or ""):
                text.encode("utf-8")  # storable: no lone surrogate reaches the lake
        else:
            item.context.encode("utf-8")
            item.query.encode("utf-8")
            assert item.context.strip() and item.query.strip()
            if item.meta is not None:
                _strict(item.meta)  # strict JSON: no NaN or Infinity


def test_generated_hostile_jsonl_never_raises():
    rng = random.Random(9)
    for _ in range(40):
        lines = [_hostile_line(rng) for _ in range(25)]
        items = list(parse_object("fuzz.jsonl", b"\n".join(lines)))
        _check(items)
        assert {i.line for i in items if i.line is not None} <= set(range(1, len(lines) + 1))


def test_generated_hostile_parquet_never_raises():
    rng = random.Random(9)
    for _ in range(60):
        _check(list(parse_object("fuzz.parquet", _hostile_parquet(rng))))


def test_each_poison_gets_its_own_reason():
    cases = {
        _deep(10_000).encode(): "not_an_object",
        ('{"context": "c", "query": "q", "meta": ' + _deep(10_000) + "}").encode(): "too_deep",
        ('{"context": "c", "query": "q", "meta": ' + _deep(MAX_DEPTH) + "}").encode():
            "too_deep",
        b'{"context": "c", "query": "q", "meta": {"x": NaN}}': "invalid_number",
        b'{"context": "c", "query": "q", "meta": {"x": 1e999}}': "invalid_number",
        b'{"context": "c", "query": "q", "id": ' + b"9" * 5000 + b"}": "invalid_number",
        b'{"context": 1e999, "query": "q"}': "invalid_number",
    }
    for line, code in cases.items():
        (item,) = parse_object("x.jsonl", line)
        assert isinstance(item, Reject)
        # a 10,000-deep array is rejected for its depth before its type is looked at
        assert item.reason_code in {code, "too_deep"}


def test_a_poison_object_is_ledgered_and_the_next_one_goes_on(tmp_path, lake):
    source = tmp_path / "in"
    source.mkdir()
    (source / "a-poison.jsonl").write_bytes(b"\n".join([
        _deep(10_000).encode(), json.dumps(GOOD).encode(),
        b'{"context": "c", "query": "q", "meta": {"x": NaN}}']))
    (source / "b-poison.parquet").write_bytes(_hostile_parquet(random.Random(1)))
    rng = random.Random(3)
    (source / "c-fuzz.jsonl").write_bytes(b"\n".join(_hostile_line(rng) for _ in range(60)))
    (source / "d-good.jsonl").write_bytes(
        json.dumps({"context": "Another fine one.", "query": "Which one?"}).encode())

    report = ingest(lake, str(source), OPTIONS, run_id="fuzz")
    assert report.objects_new == 4
    ledger = {r["source_uri"].rsplit("/", 1)[1]
              for r in lake.read("ingested_objects").to_pylist()}
    assert ledger == {"a-poison.jsonl", "b-poison.parquet", "c-fuzz.jsonl", "d-good.jsonl"}
    queries = set(lake.read("prompts", columns=["query"]).column(0).to_pylist())
    assert {"How long is the river?", "Which one?"} <= queries
    codes = [r["reason_code"] for r in lake.read("rejects").to_pylist()
             if r["source_uri"].endswith("a-poison.jsonl")]
    assert sorted(codes) == ["invalid_number", "too_deep"]
    assert ingest(lake, str(source), OPTIONS, run_id="again").objects_new == 0
