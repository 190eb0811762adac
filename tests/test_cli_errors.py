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
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = invoke("sql", "SELECT 1", "--lake", str(blocker / "lake"))
    assert out.exit_code == 1
    assert "--verbose shows the traceback" in _one_line(out.stderr)
    out = invoke("--verbose", "sql", "SELECT 1", "--lake", str(blocker / "lake"))
    assert out.exit_code == 1 and isinstance(out.exception, OSError)


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
    out = invoke("sql", "SELECT [1, 2] AS l, {'a': 'x'} AS s, NULL::INT[] AS e, 3 AS n",
                 "-f", "csv", "--lake", str(tmp_path / "lake"))
    assert out.exit_code == 0, out.output
    (row,) = csv.DictReader(io.StringIO(out.stdout))
    assert row == {"l": "[1, 2]", "s": '{"a": "x"}', "e": "", "n": "3"}
