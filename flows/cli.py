"""``longreward``: the command line. Thin: parse options, call flows and tasks, print."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import duckdb
import pyarrow as pa
import typer
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows import cli_errors as errors
from flows.cli_output import (
    GpuPool,
    OutputFormat,
    ReportFormat,
    Style,
    Ties,
    console,
    emit,
    fit_to_terminal,
    write_text,
)
from flows.cli_output import print_table as _print_arrow
from tasks import catalog, pipeline, publish
from tasks.backends import require_backends
from tasks.config import Settings, load_settings
from tasks.ingest import IngestOptions, ingest
from tasks.lake import Lake
from tasks.pair import PairRule
from tasks.redact import install_log_scrubbing
from tasks.runs import new_run_id
from tasks.sources import list_objects

err_console = errors.err_console


app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False, cls=errors.OneLineErrors)
datasets_app = typer.Typer(help="Published dataset versions.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="TOML config file (default ./longreward.toml or $LONGREWARD_CONFIG).")]
LakeOpt = Annotated[str | None, typer.Option(
    "--lake", help="Lake root: folder or s3://bucket/prefix [env LONGREWARD_LAKE].")]
SourceOpt = Annotated[str | None, typer.Option(
    "--source", help="Where new prompts land: folder or s3://... [env LONGREWARD_SOURCE].")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
OutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o", help="Write to a file (required for parquet).")]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False):
    """Nightly long-context preference data with LongReward AI feedback."""
    errors.verbose = verbose
    fit_to_terminal(console, err_console)
    install_log_scrubbing()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_path=False)])
    for noisy in ("botocore", "urllib3", "werkzeug", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _settings(config: Path | None, **overrides) -> Settings:
    try:
        return load_settings(config, **overrides)
    except (FileNotFoundError, ValueError) as err:
        raise errors.fail(f"config error: {err}", 2) from err


@app.command("ingest")
def ingest_cmd(config: ConfigOpt = None, lake: LakeOpt = None, source: SourceOpt = None,
               max_context_tokens: Annotated[int | None, typer.Option(
                   help="Reject contexts longer than this many tokens.")] = None):
    """Ingest new prompt objects (JSONL/Parquet) from the source into the lake."""
    settings = _settings(config, lake=lake, source=source, max_context_tokens=max_context_tokens)
    errors.check_writable(settings.lake, settings.source)
    the_lake = Lake(settings.lake)
    run_id = new_run_id()
    options = IngestOptions(settings.tokenizer, settings.max_context_tokens,
                            settings.max_query_tokens)
    with _progress() as progress:
        task = progress.add_task("ingest", total=None)
        report = ingest(the_lake, settings.source, options, run_id,
                        on_object=lambda _: progress.advance(task))
    catalog.write_catalog(the_lake, settings.catalog_path)
    console.print(f"[bold]run {run_id}[/bold]: {report.summary()}")


@app.command("sql")
def sql_cmd(query: Annotated[str, typer.Argument(help="One SELECT (or a path to a .sql file).")],
            config: ConfigOpt = None, lake: LakeOpt = None, fmt: FormatOpt = OutputFormat.table,
            output: OutputOpt = None,
            max_rows: Annotated[int, typer.Option(help="Rows shown as a table.")] = 50):
    """Query the lake with DuckDB SQL (read-only). Tables and views: see sql/ and README."""
    settings = _settings(config, lake=lake)
    _check_output(fmt, output)
    if query.endswith(".sql") and Path(query).is_file():
        query = Path(query).read_text()
    try:
        result = catalog.query(errors.existing_lake(settings.lake), query).to_arrow_table()
    except catalog.ReadOnlyError as err:
        err_console.print("refused: " + str(err), markup=False, highlight=False)
        raise typer.Exit(2) from err
    except duckdb.Error as err:  # the sandbox said no, or the user's SQL was wrong
        refused = catalog.refusal(err)
        if refused:
            err_console.print("refused: " + refused, markup=False, highlight=False)
            raise typer.Exit(2) from err
        err_console.print(f"[red]SQL error:[/red] {err}")
        raise typer.Exit(1) from err
    emit(result, fmt, output, max_rows=max_rows)


def _check_output(fmt: OutputFormat, output: Path | None) -> None:
    """Before any work: parquet is binary and goes to a file only."""
    if fmt is OutputFormat.parquet and output is None:
        raise errors.fail("--format parquet needs --output FILE", 2)


@app.command("catalog")
def catalog_cmd(config: ConfigOpt = None, lake: LakeOpt = None,
                path: Annotated[str | None, typer.Option(help="Catalog file to write.")] = None):
    """Write the DuckDB catalog file (views over the lake) for the DuckDB CLI or any client."""
    settings = _settings(config, lake=lake, catalog=path)
    written = catalog.write_catalog(errors.existing_lake(settings.lake), settings.catalog_path)
    console.print(f"catalog written: {written}  (open it with: duckdb -readonly {written})")


@datasets_app.command("list")
def datasets_list(config: ConfigOpt = None, lake: LakeOpt = None,
                  kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
                  fmt: FormatOpt = OutputFormat.table, output: OutputOpt = None):
    """List published dataset versions."""
    settings = _settings(config, lake=lake)
    _check_output(fmt, output)
    versions = publish.list_versions(errors.existing_lake(settings.lake), kind)
    if not versions and fmt is OutputFormat.table:
        console.print("no dataset version published yet")
        return
    emit(pa.Table.from_pylist([
        {"version": v.version, "kind": v.kind, "rows": v.row_count,
         "content_hash": v.content_hash if fmt is not OutputFormat.table
         else v.content_hash[:12], "config_hash": v.config_hash, "data": v.data_uri,
         "created_at": v.created_at} for v in versions],
        schema=None if versions else pa.schema([("version", pa.string())])), fmt, output)


@datasets_app.command("show")
def datasets_show(version: Annotated[str, typer.Argument(help="vN, N or latest.")],
                  config: ConfigOpt = None, lake: LakeOpt = None,
                  fmt: Annotated[ReportFormat, typer.Option(
                      "--format", "-f", help="text or json (the manifest either way).")] =
                  ReportFormat.json, output: OutputOpt = None):
    """Show one version's manifest: counts, hashes, lineage (table versions, code revision)."""
    settings = _settings(config, lake=lake)
    try:
        found = publish.get_version(errors.existing_lake(settings.lake), version)
    except LookupError as err:
        raise errors.fail(f"error: {err}", 1) from err
    manifest = {**found.__dict__, "data": found.data_uri}
    if fmt is ReportFormat.json and output is None:
        console.print_json(json.dumps(manifest, default=str))
    elif fmt is ReportFormat.json:
        write_text(json.dumps(manifest, default=str, indent=1), output)
    else:
        write_text("\n".join(f"{k}: {v}" for k, v in manifest.items()), output)


@app.command("sources")
def sources_cmd(config: ConfigOpt = None, source: SourceOpt = None):
    """List the objects under the source (what ingest would consider)."""
    settings = _settings(config, source=source)
    _print_arrow(pa.Table.from_pylist([o.__dict__ for o in list_objects(settings.source)]))


@app.command("sample")
def sample_cmd(config: ConfigOpt = None, lake: LakeOpt = None,
               k: Annotated[int | None, typer.Option("--k", help="Answers per prompt.")] = None):
    """Sample K answers for every prompt that lacks them (policy endpoint or offline)."""
    settings = _settings(config, lake=lake, samples_per_prompt=k)
    require_backends(settings, "sample")
    errors.check_writable(settings.lake)
    run_id = new_run_id()
    with _progress() as progress:
        task = progress.add_task("sample", total=None)
        report = pipeline.stage_sample(settings, run_id, lambda _: progress.advance(task))
    console.print(f"[bold]run {run_id}[/bold]: {report.summary()}")


@app.command("score")
def score_cmd(config: ConfigOpt = None, lake: LakeOpt = None):
    """Score every unscored response on the four LongReward dimensions."""
    settings = _settings(config, lake=lake)
    require_backends(settings, "score")
    errors.check_writable(settings.lake)
    run_id = new_run_id()
    with _progress() as progress:
        task = progress.add_task("score", total=None)
        report = pipeline.stage_score(settings, run_id, lambda _: progress.advance(task))
    catalog.write_catalog(Lake(settings.lake), settings.catalog_path)
    console.print(f"[bold]run {run_id}[/bold]: {report.summary()}")


@app.command("pair")
def pair_cmd(config: ConfigOpt = None, lake: LakeOpt = None,
             min_answers: Annotated[int | None, typer.Option(
                 help="Rewarded answers needed (default: pair_min_answers, 5).")] = None,
             min_margin: Annotated[float, typer.Option(help="Smallest best-worst gap.")] = 0.0,
             ties: Annotated[Ties, typer.Option(
                 help="Equal best rewards: pair the first, or skip the prompt.")] = Ties.first,
             publish_version: Annotated[bool, typer.Option(
                 "--publish/--no-publish", help="Publish the pairs as a dataset version.")] = True,
             style: Annotated[Style, typer.Option(
                 help="Messages (TRL conversational) or plain text.")] = Style.conversational):
    """Pair best vs worst answer per prompt; publish them as a TRL preference dataset."""
    settings = _settings(config, lake=lake)
    errors.check_writable(settings.lake)
    run_id = new_run_id()
    try:
        rule = PairRule(settings.pair_min_answers if min_answers is None else min_answers,
                        min_margin, ties.value)
    except ValueError as err:
        err_console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from err
    paired, skipped = pipeline.stage_pair(settings, run_id, rule)
    console.print(f"[bold]run {run_id}[/bold]: {paired} pairs, {skipped} prompts skipped "
                  "(reasons: longreward sql \"SELECT skip_reason, count(*) FROM pairs_latest "
                  "GROUP BY 1\")")
    if publish_version:
        version, created = pipeline.stage_publish(settings, run_id, style.value)
        if version:
            console.print(f"dataset {'published' if created else 'unchanged, still'} "
                          f"{version.version} ({version.row_count} pairs)")
    catalog.write_catalog(Lake(settings.lake), settings.catalog_path)


@app.command("demo")
def demo_cmd(config: ConfigOpt = None, lake: LakeOpt = None,
             prompts: Annotated[int, typer.Option(help="Demo prompts to generate.")] = 12):
    """Run the nightly flow end to end on embedded defaults (embedded S3, local lake, offline
    policy and judge), then train a tiny model on the dataset version it published."""
    from flows.demo import run_demo

    settings = _settings(config, lake=lake, offline=True)
    result = run_demo(settings, n_prompts=prompts, config=str(config) if config else None)
    counts = result.counts
    score = {k: sum(b[k] for b in counts["score"]) for k in ("responses", "ok", "failed",
                                                              "judge_calls")}
    console.rule("[bold]longreward demo")
    console.print(f"run {result.run_id} (Prefect flow nightly-refresh; report artifact "
                  "nightly-report)")
    ingest = counts["ingest"]
    console.print(f"  ingest   {ingest['objects_new']} new objects: {ingest['prompts']} "
                  f"prompts, {ingest['rejects']} rejects")
    console.print(f"  sample   {sum(b['responses'] for b in counts['sample'])} responses "
                  f"written in {len(counts['sample'])} batches")
    console.print(f"  score    {score['responses']} responses scored: {score['ok']} judgments "
                  f"ok, {score['failed']} failed, {score['judge_calls']} judge calls")
    published = counts["publish"]
    console.print(f"  pair     {published['paired']} pairs, {published['skipped']} prompts "
                  "skipped")
    if result.dataset:
        verb = "published" if published["created"] else "unchanged, still"
        console.print(f"  publish  dataset {verb} {result.dataset.version} "
                      f"({result.dataset.row_count} pairs)")
    if result.training:
        final = result.training["final_metrics"]
        console.print(f"  train    {result.training['model_version']} on "
                      f"{result.training['dataset_version']}: {final.get('step', 0):g} steps "
                      f"on CPU, loss {final.get('loss', float('nan')):.4f}, reward accuracy "
                      f"{final.get('rewards/accuracies', float('nan')):.2f}; checkpoint "
                      f"{result.training['checkpoint_uri']}")
    elif result.training_skipped:
        console.print(f"  train    skipped: {result.training_skipped}")
    the_lake = Lake(settings.lake)
    for title, sql in [
        ("rejects by reason", "SELECT reason_code, records, example_reason FROM rejects_by_reason"),
        ("score distribution (this run)", "SELECT dimension, scored, failed, round(mean, 2) AS "
         "mean, p10, p50, p90 FROM score_distribution WHERE run_id = ? ORDER BY dimension"),
        ("pairs (this run)", "SELECT prompt_id[:12] AS prompt, round(chosen_reward, 2) AS "
         "chosen, round(rejected_reward, 2) AS rejected, round(margin, 2) AS margin, status "
         "FROM pairs WHERE run_id = ? ORDER BY margin DESC"),
        ("models", "SELECT model_version, dataset_version, base_model, checkpoint_uri "
         "FROM models ORDER BY created_at"),
    ]:
        params = [result.run_id] if "?" in sql else None
        _print_arrow(catalog.query(the_lake, sql, params).to_arrow_table(), title=title)
    console.print(f"lake: {settings.lake}   catalog: {result.catalog}   plots: "
                  f"{settings.lake}/reports/{result.run_id}/")
    console.print("next: longreward report   |   longreward sql \"SELECT * FROM rewards ORDER "
                  f"BY reward DESC\"   |   duckdb -readonly {result.catalog}")


@app.command("run")
def run_cmd(config: ConfigOpt = None, lake: LakeOpt = None, source: SourceOpt = None,
            batch_prompts: Annotated[int, typer.Option(help="Prompts per task.")] = 16,
            train: Annotated[bool, typer.Option(help="Trigger the training deployment.")] =
            False,
            task_runner: Annotated[str | None, typer.Option(
                help="threads, dask or dask://host:port [env LONGREWARD_TASK_RUNNER].")] = None):
    """Run the nightly-refresh Prefect flow once, now, in this process."""
    from flows.nightly import run_nightly

    settings = _settings(config, lake=lake, source=source)
    require_backends(settings, "sample", "score")
    errors.check_writable(settings.lake, settings.source)
    counts = run_nightly(task_runner, lake=lake, source=source,
                         config=str(config) if config else None, batch_prompts=batch_prompts,
                         train=train)
    console.print_json(json.dumps(counts, default=str))


@app.command("serve")
def serve_cmd(cron: Annotated[str, typer.Option(help="Cron schedule.")] = "0 2 * * *",
              timezone: Annotated[str, typer.Option(help="Timezone of the cron.")] = "UTC",
              lake: LakeOpt = None, source: SourceOpt = None,
              train: Annotated[bool, typer.Option(help="Trigger training after.")] = False):
    """Serve the nightly schedule from this process (no worker needed; needs a Prefect server:
    `prefect server start` and PREFECT_API_URL, since a temporary one never fires schedules)."""
    from flows.nightly import nightly_refresh

    nightly_refresh.serve(name="nightly-refresh", cron=cron, timezone=timezone,
                          parameters={"lake": lake, "source": source, "train": train})


@app.command("deploy")
def deploy_cmd(prefect_file: Annotated[Path | None, typer.Option(
                   help="Deployments file (default: the package's infra/prefect.yaml).")] = None,
               gpu_pool_type: Annotated[GpuPool, typer.Option(
                   help="The training pool's worker type.")] = GpuPool.process):
    """Create the work pools and concurrency limits, then register the deployments."""
    import subprocess
    import sys

    from flows.nightly import ensure_limits
    from flows.train import ROOT

    prefect = [sys.executable, "-m", "prefect"]  # this environment's, whatever PATH holds

    pools = [["longreward-cpu", "--type", "process"],
             ["longreward-gpu", "--type", gpu_pool_type.value]]
    if gpu_pool_type is GpuPool.kubernetes:
        pools[1] += ["--base-job-template", str(ROOT / "infra/k8s/gpu-base-job-template.json")]
    for pool in pools:
        subprocess.run([*prefect, "work-pool", "create", *pool, "--overwrite"], check=True)
    ensure_limits(_settings(None))
    deployments = (prefect_file or ROOT / "infra" / "prefect.yaml").resolve()
    subprocess.run([*prefect, "--no-prompt", "deploy", "--all", "--prefect-file",
                    str(deployments)], check=True, cwd=ROOT)
    console.print("deployed; start workers: prefect worker start --pool longreward-cpu "
                  "(and --pool longreward-gpu on the GPU machine)")


@app.command("train")
def train_cmd(dataset: Annotated[str, typer.Option("--dataset", help="vN, N or latest.")],
              local: Annotated[bool, typer.Option(
                  help="Train here, now (CPU or local GPU), instead of on the GPU pool.")] =
              False,
              base_model: Annotated[str | None, typer.Option(
                  help="Base model folder (default: a tiny model built locally with --local).")]
              = None,
              max_steps: Annotated[int | None, typer.Option(help="Stop after N steps.")] = None,
              config: ConfigOpt = None, lake: LakeOpt = None):
    """Train DPO+CE on a dataset version: on the GPU work pool (default) or --local."""
    settings = _settings(config, lake=lake)
    try:
        version = publish.get_version(Lake(settings.lake), dataset).version
    except LookupError as err:
        err_console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from err
    if local:
        from flows.train import train_locally

        result = train_locally(settings, version, base_model=base_model, max_steps=max_steps)
        console.print_json(json.dumps(result, default=str))
        return
    from flows.nightly import TRAIN_DEPLOYMENT, trigger_training_task

    run_id = trigger_training_task.fn(version, TRAIN_DEPLOYMENT)
    console.print(f"training flow run {run_id} scheduled on {version} ({TRAIN_DEPLOYMENT})")


@app.command("report")
def report_cmd(run: Annotated[str | None, typer.Argument(help="Run id (default: latest).")] =
               None, config: ConfigOpt = None, lake: LakeOpt = None,
               fmt: Annotated[ReportFormat, typer.Option(
                   "--format", "-f", help="text (terminal), markdown (the Prefect artifact's) "
                   "or json (the figures).")] = ReportFormat.text, output: OutputOpt = None):
    """Print a run's report: counts, scores per dimension, failures, cost; saves plots."""
    from dataclasses import asdict

    from tasks import report

    settings = _settings(config, lake=lake)
    the_lake = errors.existing_lake(settings.lake)
    run_id = run or report.latest_run_id(the_lake)
    if run_id is None:
        raise errors.fail("error: no run in this lake yet", 1)
    if not report.list_runs(the_lake, run_id=run_id):
        raise errors.fail(f"error: no run {run_id} in the lake at {settings.lake} (longreward runs "
                   "lists them)", 1)
    stats = report.collect_run_stats(the_lake, run_id)
    if fmt is ReportFormat.json:
        write_text(json.dumps(asdict(stats), default=str, indent=1), output)
        return
    plots = report.plot_score_distributions(the_lake, run_id,
                                            f"{settings.lake.rstrip('/')}/reports/{run_id}")
    if fmt is ReportFormat.markdown:
        write_text(report.render_markdown(stats, plots), output)
        return
    console.print(report.render_terminal(stats))
    for uri in plots:
        console.print(f"plot: {uri}")


@app.command("maintain")
def maintain_cmd(config: ConfigOpt = None, lake: LakeOpt = None,
                 retention_hours: Annotated[int, typer.Option(
                     min=0, help="Vacuum only files unreferenced for this long.")] = 168,
                 dry_run: Annotated[bool, typer.Option(
                     "--dry-run", help="Report what would be vacuumed; change nothing.")] = False):
    """Compact small files and vacuum unreferenced ones (never those a dataset version needs)."""
    from tasks.maintenance import maintain

    settings = _settings(config, lake=lake)
    done = maintain(errors.existing_lake(settings.lake), retention_hours=retention_hours,
                    dry_run=dry_run)
    _print_arrow(pa.Table.from_pylist([t.as_dict() for t in done]),
                 "maintenance (dry run)" if dry_run else "maintenance")
    if not dry_run:
        catalog.write_catalog(Lake(settings.lake), settings.catalog_path)


@app.command("runs")
def runs_cmd(config: ConfigOpt = None, lake: LakeOpt = None,
             limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20):
    """The lake's runs with what each wrote and, with a Prefect API, its flow run's state."""
    from tasks import report

    settings = _settings(config, lake=lake)
    runs = report.list_runs(errors.existing_lake(settings.lake), limit)
    states = _flow_run_states([r["run_id"] for r in runs])
    for run in runs:
        run["state"] = states.get(run["run_id"], "")
    _print_arrow(pa.Table.from_pylist(runs), "runs")


def _flow_run_states(names: list[str]) -> dict[str, str]:
    """State of the flow run named after each run id (needs PREFECT_API_URL; else none)."""

    if not names or not os.environ.get("PREFECT_API_URL"):
        return {}
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=names)))
    return {run.name: run.state.name if run.state else "" for run in found}


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, transient=True)


if __name__ == "__main__":
    app()
