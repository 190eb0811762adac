"""Mistakes and outages end in one line on stderr: config errors exit 2, operational errors
exit 1, a traceback only under --verbose."""

from __future__ import annotations

import csv
import io

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from flows.cli import app
from tasks import preflight


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "60", **(env or {})})


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_config_errors_are_one_line_with_exit_2(tmp_path):
    bad = tmp_path / "lr.toml"
    bad.write_text("[longreward]\nsamles_per_prompt = 6\n")
    out = invoke("sql", "SELECT 1", "--config", str(bad))
    assert out.exit_code == 2
    assert "did you mean 'samples_per_prompt'" in _one_line(out.stderr)
    out = invoke("ingest", "--lake", str(tmp_path / "lake"),
                 env={"LONGREWARD_MAX_CONTEXT_TOKENS": "-5"})
    assert out.exit_code == 2
    assert _one_line(out.stderr).startswith("config error: max_context_tokens:")


@pytest.mark.parametrize("command", [["ingest"], ["run"]])
def test_a_missing_source_folder_is_one_line(tmp_path, command):
    out = invoke(*command, "--source", str(tmp_path / "nope"), "--lake", str(tmp_path / "l"))
    assert out.exit_code == 1
    assert _one_line(out.stderr) == f"error: source folder not found: {tmp_path / 'nope'}"


def test_a_lake_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for command in (["score"], ["pair"], ["ingest", "--source", str(tmp_path)]):
        out = invoke(*command, "--lake", str(blocker / "lake"))
        assert out.exit_code == 1
        assert _one_line(out.stderr).startswith(f"error: the lake folder {blocker / 'lake'} "
                                                "cannot be written")


def test_an_error_that_surfaces_late_is_one_line_and_verbose_shows_it(tmp_path):
    from tasks.lake import Lake

    lake = Lake(str(tmp_path / "lake"))
    lake.ensure("prompts")
    log = tmp_path / "lake" / "tables" / "prompts" / "_delta_log"
    for entry in log.glob("*.json"):
        entry.write_text("{not json")  # a torn log: found only when the table is read
    out = invoke("sql", "SELECT count(*) FROM prompts", "--lake", lake.root)
    assert out.exit_code == 1
    assert "--verbose shows the traceback" in _one_line(out.stderr)
    out = invoke("--verbose", "sql", "SELECT count(*) FROM prompts", "--lake", lake.root)
    assert out.exit_code == 1 and out.exception is not None


@pytest.mark.parametrize("command", [["sql", "SELECT 1"], ["report"], ["datasets", "list"],
                                     ["runs"], ["catalog"], ["maintain"]])
def test_reading_a_lake_that_is_not_there_fails_and_creates_nothing(tmp_path, command):
    typo = tmp_path / "lkae"
    out = invoke(*command, "--lake", str(typo))
    assert out.exit_code == 1
    assert _one_line(out.stderr).startswith(f"error: no lake at {typo}")
    assert not typo.exists()


def test_the_report_of_a_run_that_does_not_exist_is_an_error(tmp_path):
    from datetime import UTC, datetime

    from tasks.lake import Lake

    Lake(str(tmp_path / "lake")).upsert("prompts", [{
        "prompt_id": "p", "source_uri": "s3://b/x", "source_etag": "e", "context": "c",
        "query": "q", "context_tokens": 1, "query_tokens": 1, "tokenizer": "t", "run_id": "r1",
        "ingested_at": datetime.now(UTC)}])
    out = invoke("report", "r-typo", "--lake", str(tmp_path / "lake"))
    assert out.exit_code == 1 and "no run r-typo" in _one_line(out.stderr)
    assert invoke("report", "r1", "--lake", str(tmp_path / "lake")).exit_code == 0


def test_a_missing_bucket_is_one_line(s3_endpoint, tmp_path):
    out = invoke("ingest", "--source", "s3://no-such-bucket-here/in", "--lake",
                 str(tmp_path / "lake"))
    assert out.exit_code == 1
    assert _one_line(out.stderr) == ("error: source s3://no-such-bucket-here/in: the bucket "
                                     "does not exist (NoSuchBucket)")


def test_refused_credentials_are_named():
    err = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "no such key"}},
                      "HeadBucket")
    assert preflight.explain(err).startswith("S3 refused the credentials (InvalidAccessKeyId)")
    assert preflight.explain(ValueError("a bug")) is None


def test_csv_of_list_and_struct_columns_is_json_text(tmp_path):
    from tasks.lake import Lake

    Lake(str(tmp_path / "lake")).ensure("prompts")
    out = invoke("sql", "SELECT [1, 2] AS l, {'a': 'x'} AS s, NULL::INT[] AS e, 3 AS n",
                 "-f", "csv", "--lake", str(tmp_path / "lake"))
    assert out.exit_code == 0, out.output
    (row,) = csv.DictReader(io.StringIO(out.stdout))
    assert row == {"l": "[1, 2]", "s": '{"a": "x"}', "e": "", "n": "3"}
