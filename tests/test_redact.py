"""Secrets never stored: an endpoint that echoes the API key leaves no trace of it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pyarrow as pa

from tasks import catalog, pipeline
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.redact import REDACTED, install_log_scrubbing, scrub, scrub_table
from tests.fakes.openai_server import FakeOpenAI, Fault

KEY = "sk-test-0123456789abcdefSECRET"
ODD_KEY = "plain-key-without-shape-42"   # a configured key with no recognisable shape
NOW = datetime(2026, 11, 23, tzinfo=UTC)
ECHO = "Incorrect API key provided: {api_key}. You can find your API key at example.com."


def test_scrub_removes_configured_keys_and_token_shapes(monkeypatch):
    monkeypatch.setenv("LONGREWARD_JUDGE_API_KEY", ODD_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")  # a placeholder, not a secret
    text = (f"key {ODD_KEY}; header Authorization: Bearer abcdefgh12345678; "
            f"echo {KEY}; EMPTY stays EMPTY; sk-short stays")
    out = scrub(text)
    assert ODD_KEY not in out and KEY not in out and "abcdefgh12345678" not in out
    assert out.count(REDACTED) == 3 and "EMPTY stays EMPTY" in out and "sk-short" in out


def test_scrub_table_keeps_source_text_shapes_but_never_a_key(monkeypatch):
    monkeypatch.setenv("LONGREWARD_POLICY_API_KEY", ODD_KEY)
    table = pa.table({"context": [f"docs mention sk-exampleexample and {ODD_KEY}"],
                      "error": [f"401: {KEY}"], "n": [1]})
    out = scrub_table(table, keep_shapes=["context"]).to_pylist()[0]
    assert out == {"context": f"docs mention sk-exampleexample and {REDACTED}",
                   "error": f"401: {REDACTED}", "n": 1}


def test_log_records_are_scrubbed_whatever_the_logger(caplog, monkeypatch):
    monkeypatch.setenv("LONGREWARD_JUDGE_API_KEY", ODD_KEY)
    install_log_scrubbing()
    with caplog.at_level(logging.INFO):
        logging.getLogger("anything.at.all").info("calling with %s", ODD_KEY)
        try:
            raise RuntimeError(f"Incorrect API key provided: {KEY}")
        except RuntimeError:
            logging.getLogger("tasks.score.stage").exception("task failed")
    assert "calling with" in caplog.text and "Incorrect API key" in caplog.text
    assert ODD_KEY not in caplog.text and KEY not in caplog.text


def _lake_with_one_answer(tmp_path) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    lake.upsert("prompts", [{
        "prompt_id": "p1", "source_uri": "s3://b/x", "source_etag": "e",
        "context": "The river is 12 km long. It flows north.", "query": "How long is it?",
        "context_tokens": 12, "query_tokens": 4, "tokenizer": "t", "run_id": "r",
        "ingested_at": NOW}])
    lake.upsert("responses", [{
        "response_id": "p1-0", "prompt_id": "p1", "sample_index": 0,
        "text": "It is 12 km long.", "policy_model": "m", "run_id": "r", "created_at": NOW}])
    return lake


def test_a_key_echoed_by_the_judge_reaches_no_table_and_no_log(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("LONGREWARD_JUDGE_API_KEY", KEY)
    install_log_scrubbing()
    lake = _lake_with_one_answer(tmp_path)
    with FakeOpenAI(lambda body: "[[5]]") as judge, caplog.at_level(logging.DEBUG):
        judge.inject(Fault.error(401, message=ECHO), times=100)
        settings = load_settings(None, lake=lake.root, judge_base_url=judge.url,
                                 judge_model="scripted", max_retries=0)
        report = pipeline.stage_score(settings, "run-secret")
        assert judge.statuses[401] > 0 and judge.last_headers["authorization"] == f"Bearer {KEY}"
    assert report.judgments_failed == 4
    errors = [r["error"] for r in lake.read("judgments").to_pylist()]
    assert all("Incorrect API key provided: [REDACTED]" in e for e in errors)
    for table in ("judgments", "llm_calls"):
        dump = catalog.query(lake, f"SELECT * FROM {table}").to_arrow_table().to_pylist()
        assert dump and KEY not in repr(dump)
    assert KEY not in caplog.text
