"""The real `longreward` CLI over the lake written by the demo."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli import app

COMMANDS = [[], ["demo"], ["ingest"], ["sample"], ["score"], ["pair"], ["sql"], ["catalog"],
            ["sources"], ["datasets"], ["datasets", "list"], ["datasets", "show"]]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, check=check, env={**__import__("os").environ,
                                                       "COLUMNS": "200"})


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory) -> str:
    lake = str(tmp_path_factory.mktemp("demo") / "lake")
    out = cli("demo", "--lake", lake, "--prompts", "6")
    assert "6 prompts, 6 rejects" in out.stdout
    assert "60 responses written" in out.stdout
    assert "240 judgments ok, 0 failed" in out.stdout
    assert "published v1 (6 pairs)" in out.stdout
    return lake


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "root")
def test_every_command_has_help(args):
    out = CliRunner().invoke(app, [*args, "--help"])
    assert out.exit_code == 0
    assert "Usage" in out.output and "--help" in out.output


def test_sql_answers_over_the_demo_lake(demo_lake):
    out = cli("sql", "SELECT count(*) AS n FROM prompts", "--lake", demo_lake, "-f", "json")
    assert json.loads(out.stdout) == [{"n": 6}]
    out = cli("sql", "SELECT reason_code FROM rejects ORDER BY 1", "--lake", demo_lake,
              "-f", "csv")
    codes = [row["reason_code"] for row in csv.DictReader(io.StringIO(out.stdout))]
    assert codes == sorted(["malformed_json", "missing_field", "empty_field", "wrong_type",
                            "invalid_utf8", "duplicate_prompt"])
    out = cli("sql", "SELECT version, row_count FROM datasets", "--lake", demo_lake)
    assert "v1" in out.stdout


def test_sql_example_files_and_parquet_output(demo_lake, tmp_path):
    for query in sorted(Path("sql/queries").glob("*.sql")):
        cli("sql", str(query), "--lake", demo_lake)
    target = tmp_path / "out.parquet"
    cli("sql", "SELECT prompt_id, context_tokens FROM prompts", "--lake", demo_lake,
        "-f", "parquet", "-o", str(target))
    assert pq.read_table(target).num_rows == 6


def test_sql_is_read_only_and_errors_are_readable(demo_lake):
    out = cli("sql", "DELETE FROM prompts", "--lake", demo_lake, check=False)
    assert out.returncode == 2 and "refused: only one read-only query" in out.stderr
    out = cli("sql", "SELECT nope FROM prompts", "--lake", demo_lake, check=False)
    assert out.returncode == 1 and "SQL error" in out.stderr


def test_catalog_file_opens_in_any_duckdb_client(demo_lake):
    con = duckdb.connect(str(Path(demo_lake) / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM prompts").fetchone() == (6,)
    assert con.execute("SELECT count(reward) FROM rewards").fetchone() == (60,)
    assert con.execute("SELECT sum(records) FROM rejects_by_reason").fetchone() == (6,)


def test_demo_rerun_ingests_nothing_new(demo_lake):
    out = cli("demo", "--lake", demo_lake, "--prompts", "6")
    assert "0 new objects: 0 prompts" in out.stdout
    assert "0 responses written" in out.stdout
    assert "0 responses scored" in out.stdout
    assert "unchanged, still v1" in out.stdout


def test_datasets_list_and_show(demo_lake):
    assert "v1" in cli("datasets", "list", "--lake", demo_lake).stdout
    shown = json.loads(cli("datasets", "show", "v1", "--lake", demo_lake).stdout)
    assert shown["row_count"] == 6 and shown["kind"] == "preference"
    assert shown["lineage"]["judge_model"] == "offline-judge"
    missing = cli("datasets", "show", "v7", "--lake", demo_lake, check=False)
    assert missing.returncode == 1 and "no dataset version" in missing.stderr


def test_report_and_datasets_answer_in_the_format_asked(demo_lake, tmp_path):
    listed = json.loads(cli("datasets", "list", "--lake", demo_lake, "-f", "json").stdout)
    assert [(v["version"], v["rows"]) for v in listed] == [("v1", 6)]
    assert pq.read_table(listed[0]["data"]).num_rows == 6        # the data URI resolves
    run = json.loads(cli("sql", "SELECT min(run_id) AS run FROM judgments", "--lake",
                         demo_lake, "-f", "json").stdout)[0]["run"]
    stats = json.loads(cli("report", run, "--lake", demo_lake, "-f", "json").stdout)
    assert stats["run_id"] == run and stats["scored"] == 60
    target = tmp_path / "report.md"
    cli("report", run, "--lake", demo_lake, "-f", "markdown", "-o", str(target))
    assert "| faithfulness |" in target.read_text()


@pytest.mark.parametrize("args, says", [
    (["sql", "SELECT 1", "-f", "xml"], "'xml' is not one of 'table', 'csv', 'json', 'parquet'"),
    (["report", "-f", "html"], "'html' is not one of 'text', 'markdown', 'json'"),
    (["pair", "--ties", "random"], "'random' is not one of 'first', 'skip'"),
    (["pair", "--style", "chatml"], "'chatml' is not one of 'conversational', 'plain'"),
    (["sql", "SELECT 1", "-f", "parquet"], "--format parquet needs --output FILE"),
])
def test_a_mistyped_choice_is_refused_before_any_work(tmp_path, args, says):
    lake = tmp_path / "lake"
    out = cli(*args, "--lake", str(lake), check=False)
    assert out.returncode == 2 and says in " ".join(out.stderr.split()), out.stderr
    assert not lake.exists()


def test_report_prints_the_demo_run_and_saves_plots(demo_lake):
    scored_run = json.loads(cli("sql", "SELECT min(run_id) AS run FROM judgments", "--lake",
                                demo_lake, "-f", "json").stdout)[0]["run"]
    out = cli("report", scored_run, "--lake", demo_lake)   # a rerun may be the latest run
    assert "ingested" in out.stdout and "faithfulness" in out.stdout
    plots = [line.split("plot: ", 1)[1] for line in out.stdout.splitlines()
             if line.startswith("plot: ")]
    assert [Path(p).name for p in plots] == ["scores.png", "trend.png"]
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_demo_pairs_a_good_answer_with_a_planted_defect(demo_lake):
    """The offline policy plants one defect per answer style; the offline judge ranks a correct
    answer first and a defective one last, as a person would."""
    out = cli("sql", "SELECT json_extract_string(c.params, '$.meta.style') AS chosen, "
              "json_extract_string(r.params, '$.meta.style') AS rejected FROM pairs_latest p "
              "JOIN responses c ON c.response_id = p.chosen_response_id "
              "JOIN responses r ON r.response_id = p.rejected_response_id", "--lake", demo_lake,
              "-f", "json")
    pairs = json.loads(out.stdout)
    assert len(pairs) == 6
    # chosen: a correct answer, complete ("good") in most pairs; a partial one can win where
    # 128-token segments split the demo's facts and a complete answer loses faithfulness
    assert all(p["chosen"] in ("good", "partial") for p in pairs), pairs
    assert sum(p["chosen"] == "good" for p in pairs) >= 3, pairs
    assert all(p["rejected"] != "good" for p in pairs), pairs


def test_demo_trained_a_model_linked_to_its_dataset(demo_lake):
    out = cli("sql", "SELECT model_version, dataset_version, checkpoint_uri FROM models",
              "--lake", demo_lake, "-f", "json")
    models = json.loads(out.stdout)
    assert len(models) == 1 and models[0]["dataset_version"] == "v1"
    assert Path(models[0]["checkpoint_uri"], "COMPLETE").is_file()
