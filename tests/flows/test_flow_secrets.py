"""Through the Prefect flow: a judge that echoes the API key leaves it in no table, log or
artifact."""

from __future__ import annotations

import logging

from flows.nightly import nightly_refresh
from tasks import catalog
from tasks.lake import Lake
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.flows.test_nightly import _demo_source, _latest_artifact, judge_reply

KEY = "sk-flow-0123456789abcdefSECRET"


def test_an_echoed_key_is_in_no_table_log_or_artifact(prefect_api, s3_endpoint, tmp_path,
                                                      monkeypatch, caplog):
    src = _demo_source(1)
    lake = str(tmp_path / "lake")
    with FakeOpenAI(judge_reply) as judge, caplog.at_level(logging.INFO):
        monkeypatch.setenv("LONGREWARD_JUDGE_API_KEY", KEY)
        monkeypatch.setenv("LONGREWARD_JUDGE_BASE_URL", judge.url)
        monkeypatch.setenv("LONGREWARD_JUDGE_MODEL", "scripted")
        judge.inject(Fault.error(401, message="Incorrect API key provided: {api_key}"),
                     times=1000)
        out = nightly_refresh(lake=lake, source=src, batch_prompts=1,
                              overrides={"samples_per_prompt": 2, "pair_min_answers": 2,
                                         "max_retries": 0})
        assert judge.statuses[401] > 0
    assert sum(b["failed"] for b in out["score"]) == 2 * 4
    errors = catalog.query(Lake(lake), "SELECT DISTINCT error FROM judgments").fetchall()
    assert errors and all("[REDACTED]" in e for (e,) in errors)
    for table in ("judgments", "llm_calls", "rewards", "pairs"):
        rows = catalog.query(Lake(lake), f"SELECT * FROM {table}").fetchall()
        assert KEY not in repr(rows)
    report = _latest_artifact(prefect_api, "nightly-report")
    assert out["run_id"] in report and KEY not in report
    assert "Incorrect API key provided: [REDACTED]" in report
    assert KEY not in caplog.text
