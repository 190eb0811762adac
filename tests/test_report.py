"""The run report: exact per-run counts from a small lake, markdown, PNGs, empty runs."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from tasks import report, storage
from tasks.lake import Lake

NOW = datetime(2026, 11, 23, 12, 5, tzinfo=UTC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _prompt(pid: str, run: str) -> dict:
    return {"prompt_id": pid, "source_uri": f"s3://in/{pid}.jsonl", "source_etag": "e",
            "context": "ctx", "query": "q", "context_tokens": 1, "query_tokens": 1,
            "tokenizer": "t", "run_id": run, "ingested_at": NOW}


def _reject(rid: str, code: str, run: str) -> dict:
    return {"reject_id": rid, "source_uri": "s3://in/x.jsonl", "reason_code": code,
            "reason": f"{code} on a line", "run_id": run, "rejected_at": NOW}


def _response(rid: str, pid: str, run: str) -> dict:
    return {"response_id": rid, "prompt_id": pid, "sample_index": 0, "text": "a",
            "policy_model": "pol", "run_id": run, "created_at": NOW}


def _judgments(rid: str, pid: str, run: str, scores: dict[str, float | None]) -> list[dict]:
    return [{"response_id": rid, "prompt_id": pid, "dimension": dim, "score": score,
             "status": "ok" if score is not None else "failed",
             "error": None if score is not None else "judge timeout after 3 tries",
             "judge_model": "judge-x", "run_id": run, "created_at": NOW}
            for dim, score in scores.items()]


def _pair(pid: str, run: str, skip: str | None = None) -> dict:
    return {"prompt_id": pid, "status": "skipped" if skip else "paired", "skip_reason": skip,
            "chosen_response_id": None if skip else "a1", "margin": None if skip else 2.0,
            "rejected_response_id": None if skip else "a2", "run_id": run, "created_at": NOW}


def _call(cid: str, role: str, run: str, cached: bool, cost: float) -> dict:
    return {"call_id": cid, "request_hash": cid, "role": role, "model": f"{role}-m",
            "tokens_in": 100, "tokens_out": 10, "cost_usd": cost, "cached": cached,
            "status": "ok", "run_id": run, "created_at": NOW}


def _dataset(version: str, number: int, run: str) -> dict:
    return {"version": version, "number": number, "kind": "dpo", "uri": "file:///d",
            "row_count": 1, "content_hash": "h", "config_hash": "c",
            "lineage": json.dumps({"run_id": run, "judge_model": "judge-x"}), "created_at": NOW}


def _all(h: float, lg: float, f: float, c: float | None) -> dict[str, float | None]:
    return {"helpfulness": h, "logicality": lg, "faithfulness": f, "completeness": c}


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake(str(tmp_path / "lake"))
    lake.upsert("prompts", [_prompt("p1", "r1"), _prompt("p2", "r1"), _prompt("p3", "r1"),
                            _prompt("p0", "r0"), _prompt("p9", "r2")])
    lake.upsert("rejects", [_reject("x1", "bad_json", "r1"), _reject("x2", "bad_json", "r1"),
                            _reject("x3", "empty_text", "r1"), _reject("x0", "bad_json", "r0")])
    lake.upsert("responses", [_response("a1", "p1", "r1"), _response("a2", "p1", "r1"),
                              _response("b1", "p2", "r1"), _response("b2", "p2", "r1"),
                              _response("z1", "p0", "r0"), _response("z2", "p0", "r0")])
    lake.upsert("judgments", [*_judgments("a1", "p1", "r1", _all(8, 8, 8, 8)),
                              *_judgments("a2", "p1", "r1", _all(4, 6, 2, 4)),
                              *_judgments("b1", "p2", "r1", _all(7, 7, 7, 7)),
                              *_judgments("b2", "p2", "r1", _all(5, 5, 5, None)),
                              *_judgments("z1", "p0", "r0", _all(1, 1, 1, 1))])
    lake.upsert("pairs", [_pair("p1", "r1"), _pair("p2", "r1", "too few scored answers: 1 < 2"),
                          _pair("p0", "r0")])
    lake.upsert("llm_calls", [_call("c1", "judge", "r1", False, 0.01),
                              _call("c2", "judge", "r1", True, 0.0),
                              _call("c3", "judge", "r1", False, 0.02),
                              _call("c4", "policy", "r1", False, 0.5),
                              _call("c0", "judge", "r0", False, 9.0)])
    lake.upsert("datasets", [_dataset("v1", 1, "r0"), _dataset("v2", 2, "r1")])
    return lake


def test_stats_count_only_the_run(lake: Lake) -> None:
    s = report.collect_run_stats(lake, "r1")
    assert (s.ingested, s.rejected, s.sampled, s.scored) == (3, 3, 4, 4)
    assert (s.judgments_ok, s.judgments_failed) == (15, 1)
    assert s.reject_reasons == [("bad_json", 2), ("empty_text", 1)]
    assert s.failure_reasons == [("judge timeout after 3 tries", 1)]
    dims = {d.dimension: d for d in s.dimensions}
    assert [d.dimension for d in s.dimensions] == list(report.DIMENSIONS)
    assert (dims["completeness"].scored, dims["completeness"].failed) == (3, 1)
    assert dims["faithfulness"].mean == pytest.approx((8 + 2 + 7 + 5) / 4)
    assert dims["helpfulness"].p50 == pytest.approx(6.0)
    assert (s.rewarded, s.reward_mean) == (3, pytest.approx((8 + 4 + 7) / 3))
    assert (s.paired, s.skipped) == (1, 1)
    assert s.skip_reasons == [("too few scored answers: 1 < 2", 1)]
    assert (s.dataset_version, s.dataset_rows) == ("v2", 1)
    usage = {u.role: u for u in s.llm}
    assert (usage["judge"].calls, usage["judge"].cached) == (3, 1)
    assert (usage["judge"].tokens_in, usage["judge"].tokens_out) == (300, 30)
    assert usage["judge"].cost_usd == pytest.approx(0.03)
    assert s.cost_usd == pytest.approx(0.53)
    assert s.cached_share == pytest.approx(0.25)
    assert s.judge_models == ["judge-x"]
    assert report.latest_run_id(lake) == "r2"


def test_markdown_plots_and_terminal(lake: Lake, tmp_path: Path) -> None:
    stats = report.collect_run_stats(lake, "r1")
    uris = report.plot_score_distributions(lake, "r1")
    assert [Path(u).name for u in uris] == ["scores.png", "trend.png"]
    for uri in uris:
        assert Path(uri).parent == tmp_path / "lake" / "reports" / "r1"
        assert Path(uri).read_bytes()[:8] == PNG_MAGIC
    md = report.render_markdown(stats, uris)
    # the images travel inside the artifact: they show wherever it is read
    assert md.count("](data:image/png;base64,") == 2
    tables = report.table_artifacts(stats)
    assert tables["counts"][0]["ingested"] == 3 and len(tables["scores"]) == 4
    assert {"kind": "judgment", "reason": "judge timeout after 3 tries", "count": 1} in \
        tables["failures"]
    assert sum(r["cost_usd"] for r in tables["cost"]) == pytest.approx(0.53)
    assert "| ingested | rejected | sampled | scored | failed | paired | skipped |" in md
    assert "| 3 | 3 | 4 | 4 | 1 | 1 | 1 |" in md
    assert "| completeness | 3 | 1 |" in md
    assert "1 × judge timeout after 3 tries" in md
    assert "2 × bad_json" in md and "`v2` (1 rows)" in md and "25%" in md
    for uri in uris:
        assert f"`{uri}`" in md
    console = Console(record=True, width=120)
    console.print(report.render_terminal(stats))
    text = console.export_text()
    assert "run r1" in text and "judge timeout after 3 tries" in text


def test_run_without_judgments_still_renders(lake: Lake, tmp_path: Path) -> None:
    stats = report.collect_run_stats(lake, "r2")
    assert (stats.ingested, stats.scored, stats.paired, stats.dataset_version) == (1, 0, 0, None)
    assert report.plot_score_distributions(lake, "r2", str(tmp_path / "out")) == []
    md = report.render_markdown(stats, [])
    assert "No judgments in this run." in md and "none published in this run" in md
    assert "![" not in md
    Console(record=True).print(report.render_terminal(stats))


def test_latest_run_id_of_an_empty_lake(tmp_path: Path) -> None:
    assert report.latest_run_id(Lake(str(tmp_path / "empty"))) is None


def test_plots_are_written_to_s3(lake: Lake, bucket: str) -> None:
    # The lake is local here: catalog.connect on an s3:// lake needs httpfs or its fallback.
    out = f"s3://{bucket}/lake/reports/r1"
    uris = report.plot_score_distributions(lake, "r1", out)
    assert uris == [f"{out}/scores.png", f"{out}/trend.png"]
    assert all(storage.read_bytes(u)[:8] == PNG_MAGIC for u in uris)


def test_batches_still_open_are_shown_whoever_submitted_them(lake: Lake, tmp_path: Path) -> None:
    from tasks.llm.batch_ledger import BatchLedger

    earlier = BatchLedger(lake, "judge-x", "judge", "r0")
    earlier.record({"batch_id": "b-done", "status": "submitted", "request_hashes": ["h1"],
                    "requests": 1, "resubmit": 0, "input_file_id": "f1"})
    earlier.record({"batch_id": "b-done", "status": "completed", "succeeded": 1, "failed": 0,
                    "requests": 1, "resubmit": 0})
    earlier.record({"batch_id": "b-open", "status": "submitted", "request_hashes": ["h2", "h3"],
                    "requests": 2, "resubmit": 0, "input_file_id": "f2"})
    BatchLedger(lake, "policy-y", "policy", "r1").record(
        {"batch_id": "b-policy", "status": "submitted", "request_hashes": ["h4"],
         "requests": 1, "resubmit": 0, "input_file_id": "f3"})

    stats = report.collect_run_stats(lake, "r1")
    assert [(b.batch_id, b.role, b.model, b.requests, b.run_id)
            for b in stats.open_batches] == [("b-open", "judge", "judge-x", 2, "r0"),
                                             ("b-policy", "policy", "policy-y", 1, "r1")]
    markdown = report.render_markdown(stats, [])
    assert "## Open batches" in markdown and "3 calls wait" in markdown
    assert "b-open" in markdown and "b-done" not in markdown
    assert [row["batch"] for row in report.table_artifacts(stats)["open-batches"]] == [
        "b-open", "b-policy"]
    console = Console(record=True, width=160)
    console.print(report.render_terminal(stats))
    text = console.export_text()
    assert "open batches" in text and "b-policy" in text


def test_no_open_batches_no_section(lake: Lake) -> None:
    stats = report.collect_run_stats(lake, "r1")
    assert stats.open_batches == []
    assert "Open batches" not in report.render_markdown(stats, [])
    assert report.table_artifacts(stats)["open-batches"] == []


def test_every_table_is_named_as_prefect_names_artifacts(lake: Lake) -> None:
    # a key with an underscore made the nightly flow's report task fail
    keys = report.table_artifacts(report.collect_run_stats(lake, "r1"))
    assert all(re.fullmatch(r"[a-z0-9-]+", f"nightly-{key}") for key in keys), keys
