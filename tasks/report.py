"""The run report: what one nightly run did, as numbers, score plots and markdown.

``collect_run_stats`` reads the lake through the DuckDB catalog (bound parameters only);
``plot_score_distributions`` saves two PNGs into the lake (local or ``s3://``): the run's
scores (a panel per dimension and the reward) and each dimension's mean over the last runs;
``render_markdown`` (images embedded) and ``table_artifacts`` are the Prefect artifacts,
``render_terminal`` the CLI view.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

from tasks import catalog, storage
from tasks.lake import Lake
from tasks.schemas import DIMENSIONS

TOP = 5


@dataclass
class DimensionStats:
    dimension: str
    judgments: int
    scored: int
    failed: int
    mean: float | None
    p10: float | None
    p50: float | None
    p90: float | None


@dataclass
class RoleUsage:
    role: str
    models: str
    calls: int
    cached: int
    tokens_in: int
    tokens_out: int
    cost_usd: float | None


@dataclass
class OpenBatch:
    """A batch submitted and not yet collected (any run's): its calls are paid for when the
    next run that needs them collects it."""

    batch_id: str
    role: str
    model: str
    requests: int
    run_id: str
    created_at: str


@dataclass
class RunStats:
    run_id: str
    ingested: int = 0
    rejected: int = 0
    reject_reasons: list[tuple[str, int]] = field(default_factory=list)
    sampled: int = 0
    scored: int = 0  # responses with at least one judgment in this run
    judgments_ok: int = 0
    judgments_failed: int = 0
    dimensions: list[DimensionStats] = field(default_factory=list)
    failure_reasons: list[tuple[str, int]] = field(default_factory=list)
    rewarded: int = 0  # responses whose four dimensions all have a score
    reward_mean: float | None = None
    paired: int = 0
    skipped: int = 0
    skip_reasons: list[tuple[str, int]] = field(default_factory=list)
    dataset_version: str | None = None
    dataset_rows: int | None = None
    llm: list[RoleUsage] = field(default_factory=list)
    judge_models: list[str] = field(default_factory=list)
    open_batches: list[OpenBatch] = field(default_factory=list)  # in the lake, now

    @property
    def llm_calls(self) -> int:
        return sum(u.calls for u in self.llm)

    @property
    def cached_share(self) -> float | None:
        return sum(u.cached for u in self.llm) / self.llm_calls if self.llm_calls else None

    @property
    def cost_usd(self) -> float | None:
        costs = [u.cost_usd for u in self.llm if u.cost_usd is not None]
        return sum(costs) if costs else None

    def headline(self) -> list[tuple[str, int]]:
        return [("ingested", self.ingested), ("rejected", self.rejected),
                ("sampled", self.sampled), ("scored", self.scored),
                ("failed", self.judgments_failed), ("paired", self.paired),
                ("skipped", self.skipped)]


def _one(con, sql: str, params: list) -> tuple:
    return con.execute(sql, params).fetchone()


def _reasons(con, sql: str, params: list) -> list[tuple[str, int]]:
    return [(str(r), int(n)) for r, n in con.execute(sql, params).fetchall()]


def collect_run_stats(lake: Lake, run_id: str) -> RunStats:
    """Counts, score statistics, reasons and LLM usage of one run (rows with that run_id)."""
    con = catalog.connect(lake)
    try:
        s = RunStats(run_id)
        p = [run_id]
        s.ingested = _one(con, "SELECT count(*) FROM prompts WHERE run_id = ?", p)[0]
        s.rejected = _one(con, "SELECT count(*) FROM rejects WHERE run_id = ?", p)[0]
        s.reject_reasons = _reasons(con, "SELECT reason_code, count(*) AS n FROM rejects "
                                    "WHERE run_id = ? GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?",
                                    [run_id, TOP])
        s.sampled = _one(con, "SELECT count(*) FROM responses WHERE run_id = ?", p)[0]
        s.scored, s.judgments_ok, s.judgments_failed = _one(
            con, "SELECT count(DISTINCT response_id), count(score), count(*) - count(score) "
            "FROM judgments WHERE run_id = ?", p)
        rows = con.execute(
            "SELECT dimension, judgments, scored, failed, mean, p10, p50, p90 "
            "FROM score_distribution WHERE run_id = ? "
            "ORDER BY list_position(?, dimension) NULLS LAST, dimension",
            [run_id, list(DIMENSIONS)]).fetchall()
        s.dimensions = [DimensionStats(*r) for r in rows]
        s.failure_reasons = _reasons(
            con, "SELECT left(split_part(coalesce(error, status), chr(10), 1), 120) AS reason, "
            "count(*) AS n FROM judgments WHERE run_id = ? AND score IS NULL "
            "GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?", [run_id, TOP])
        s.rewarded, s.reward_mean = _one(
            con, "SELECT count(reward), avg(reward) FROM rewards WHERE run_id = ?", p)
        s.paired, s.skipped = _one(
            con, "SELECT count(*) FILTER (WHERE status = 'paired'), "
            "count(*) FILTER (WHERE status <> 'paired') FROM pairs WHERE run_id = ?", p)
        s.skip_reasons = _reasons(
            con, "SELECT coalesce(skip_reason, status) AS reason, count(*) AS n FROM pairs "
            "WHERE run_id = ? AND status <> 'paired' GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?",
            [run_id, TOP])
        dataset = _one(con, "SELECT version, row_count FROM datasets "
                       "WHERE json_extract_string(lineage, '$.run_id') = ? "
                       "ORDER BY number DESC LIMIT 1", p)
        if dataset:
            s.dataset_version, s.dataset_rows = dataset
        s.llm = [RoleUsage(*r) for r in con.execute(
            "SELECT role, string_agg(DISTINCT model, ', ' ORDER BY model), count(*), "
            "count(*) FILTER (WHERE cached), coalesce(sum(tokens_in), 0), "
            "coalesce(sum(tokens_out), 0), sum(cost_usd) "
            "FROM llm_calls WHERE run_id = ? GROUP BY role ORDER BY role", p).fetchall()]
        s.judge_models = [m for (m,) in con.execute(
            "SELECT DISTINCT judge_model FROM judgments WHERE run_id = ? ORDER BY 1",
            p).fetchall()]
        s.open_batches = [OpenBatch(*r) for r in con.execute(
            "SELECT batch_id, coalesce(role, 'judge'), model, coalesce(requests, 0), run_id, "
            "strftime(created_at, '%Y-%m-%d %H:%M UTC') FROM llm_batches WHERE status = "
            "'submitted' AND batch_id NOT IN (SELECT batch_id FROM llm_batches "
            "WHERE status <> 'submitted') ORDER BY created_at, batch_id").fetchall()]
        return s
    finally:
        con.close()


def latest_run_id(lake: Lake) -> str | None:
    """The most recent run id in judgments, pairs or prompts (run ids sort by time)."""
    con = catalog.connect(lake)
    try:
        return _one(con, "SELECT max(run_id) FROM (SELECT run_id FROM judgments UNION ALL "
                    "SELECT run_id FROM pairs UNION ALL SELECT run_id FROM prompts)", [])[0]
    finally:
        con.close()


def list_runs(lake: Lake, limit: int = 20, run_id: str | None = None) -> list[dict]:
    """The lake's latest runs (newest first) with what each one wrote (``run_id``: that run
    only, or nothing when it wrote nothing)."""
    con = catalog.connect(lake)
    try:
        rows = con.execute("""
            WITH runs AS (
                SELECT run_id, 'prompts' AS what FROM prompts
                UNION ALL SELECT run_id, 'responses' FROM responses
                UNION ALL SELECT run_id, 'judgments' FROM judgments
                UNION ALL SELECT run_id, 'pairs' FROM pairs)
            SELECT run_id,
                   count(*) FILTER (WHERE what = 'prompts') AS prompts,
                   count(*) FILTER (WHERE what = 'responses') AS responses,
                   count(*) FILTER (WHERE what = 'judgments') AS judgments,
                   count(*) FILTER (WHERE what = 'pairs') AS pair_decisions
            FROM runs WHERE ? IS NULL OR run_id = ?
            GROUP BY run_id ORDER BY run_id DESC LIMIT ?""", [run_id, run_id, limit]).fetchall()
        published = dict(con.execute(
            "SELECT json_extract_string(lineage, '$.run_id'), string_agg(version, ', ') "
            "FROM datasets GROUP BY 1").fetchall())
    finally:
        con.close()
    names = ("run_id", "prompts", "responses", "judgments", "pair_decisions")
    return [dict(zip(names, row, strict=True)) | {"dataset": published.get(row[0], "")}
            for row in rows]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, without pyplot's state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def scores_png(series: list[tuple[str, list[float], int]]) -> bytes:
    """One figure, one histogram panel per dimension (and the reward)."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(4 * len(series), 3)
    for i, (name, scores, failed) in enumerate(series, start=1):
        ax = fig.add_subplot(1, len(series), i)
        mean = f"{sum(scores) / len(scores):.2f}" if scores else "n/a"
        ax.set_title(f"{name}\nn={len(scores)}, mean={mean}, failed={failed}", fontsize=9)
        if scores:
            ax.hist(scores, bins=[i / 2 for i in range(21)], range=(0, 10), color="#4c72b0",
                    edgecolor="white")
        else:
            ax.text(5, 0.5, "no scores", ha="center", va="center", color="grey")
            ax.set_ylim(0, 1)
        ax.set_xlim(0, 10)
        ax.set_xticks(range(0, 11, 2))
        ax.set_xlabel("score (0-10)")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.axes[0].set_ylabel("responses")
    return _png(fig)


def trend_png(runs: list[str], means: dict[str, list[float | None]]) -> bytes:
    """Mean score of each dimension over consecutive runs, so drift is visible."""
    fig = _figure(8, 3.5)
    ax = fig.add_subplot()
    for name, values in means.items():
        ax.plot(range(len(runs)), [float("nan") if v is None else v for v in values],
                marker="o", label=name)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([r[:15] for r in runs], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 10)
    ax.set_ylabel("mean score")
    ax.set_title(f"mean score per run (last {len(runs)} runs)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left", ncols=len(means))
    return _png(fig)


def _run_series(con, run_id: str) -> list[tuple[str, list[float], int]]:
    series = []
    for dim in DIMENSIONS:
        rows = con.execute("SELECT score FROM judgments WHERE run_id = ? AND dimension = ?",
                           [run_id, dim]).fetchall()
        if rows:
            scores = [r for (r,) in rows if r is not None]
            series.append((dim, scores, len(rows) - len(scores)))
    rows = con.execute("SELECT reward FROM rewards WHERE run_id = ?", [run_id]).fetchall()
    if rows:
        rewards = [r for (r,) in rows if r is not None]
        series.append(("reward", rewards, len(rows) - len(rewards)))
    return series


def _trend(con, run_id: str, last: int) -> tuple[list[str], dict[str, list[float | None]]]:
    """Mean score per dimension of the last ``last`` scoring runs up to ``run_id``."""
    rows = con.execute(
        "SELECT run_id, dimension, avg(score) FROM judgments WHERE run_id IN ("
        " SELECT DISTINCT run_id FROM judgments WHERE run_id <= ? ORDER BY run_id DESC LIMIT ?)"
        " GROUP BY ALL", [run_id, last]).fetchall()
    runs = sorted({r for r, _, _ in rows})
    means: dict[str, list[float | None]] = {d: [None] * len(runs) for d in DIMENSIONS}
    for run, dim, mean in rows:
        if dim in means:
            means[dim][runs.index(run)] = mean
    return runs, means


def plot_score_distributions(lake: Lake, run_id: str, out_dir_uri: str | None = None,
                             trend_runs: int = 14) -> list[str]:
    """The run's score figure (a panel per dimension and the reward) and the trend of each
    dimension's mean over the last ``trend_runs`` runs; returns the URIs written.

    Files go to ``<out_dir_uri>/scores.png`` and ``trend.png`` (default
    ``<lake>/reports/<run_id>``). A run that scored nothing gets no plot and returns ``[]``.
    """
    out = out_dir_uri or storage.join(lake.root, "reports", run_id)
    con = catalog.connect(lake)
    try:
        series = _run_series(con, run_id)
        runs, means = _trend(con, run_id, trend_runs) if series else ([], {})
    finally:
        con.close()
    if not series:
        return []
    uris = []
    for name, data in (("scores", scores_png(series)), ("trend", trend_png(runs, means))):
        uri = storage.join(out, f"{name}.png")
        storage.write_bytes(uri, data)
        uris.append(uri)
    return uris


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows), ""]


def _dimension_rows(stats: RunStats) -> list[list[object]]:
    return [[d.dimension, d.scored, d.failed, _num(d.mean), _num(d.p10), _num(d.p50),
             _num(d.p90)] for d in stats.dimensions]


def _usage_rows(stats: RunStats) -> list[list[object]]:
    return [[u.role, u.models, u.calls, u.cached, f"{u.tokens_in:,}", f"{u.tokens_out:,}",
             _num(u.cost_usd, ".4f")] for u in stats.llm]


def _batch_rows(stats: RunStats) -> list[list[object]]:
    return [[b.batch_id, b.role, b.model, b.requests, b.run_id, b.created_at]
            for b in stats.open_batches]


_BATCH_COLUMNS = ["batch", "role", "model", "calls", "submitted by run", "created"]


def render_markdown(stats: RunStats, plot_uris: list[str]) -> str:
    """The run report as compact markdown (the nightly flow's Prefect artifact)."""
    h = stats.headline()
    lines = [f"# longreward run `{stats.run_id}`", ""]
    lines += _table([k for k, _ in h], [[v for _, v in h]])
    dataset = (f"`{stats.dataset_version}` ({stats.dataset_rows} rows)"
               if stats.dataset_version else "none published in this run")
    lines.append(f"Reward: {stats.rewarded} responses with all four scores, mean "
                 f"{_num(stats.reward_mean)}. Judge: {', '.join(stats.judge_models) or '—'}. "
                 f"Dataset: {dataset}.")
    lines += ["", "## Scores per dimension", ""]
    lines += (_table(["dimension", "scored", "failed", "mean", "p10", "p50", "p90"],
                     _dimension_rows(stats)) if stats.dimensions
              else ["No judgments in this run.", ""])
    lines += ["## LLM usage", ""]
    if stats.llm:
        lines += _table(["role", "models", "calls", "cached", "tokens in", "tokens out",
                         "cost (USD)"], _usage_rows(stats))
        lines += [f"Cached-call share: {stats.cached_share:.0%}; total cost "
                  f"{_num(stats.cost_usd, '.4f')} USD.", ""]
    else:
        lines += ["No LLM calls in this run.", ""]
    if stats.open_batches:
        lines += ["## Open batches", "", f"{sum(b.requests for b in stats.open_batches)} calls "
                  "wait in batches not yet collected; the next run that needs them collects "
                  "them.", ""]
        lines += _table(_BATCH_COLUMNS, _batch_rows(stats))
    for title, reasons in (("Judgment failures", stats.failure_reasons),
                           ("Rejects", stats.reject_reasons),
                           ("Pairing skips", stats.skip_reasons)):
        if reasons:
            lines += [f"## {title}", "", *(f"- {n} × {_cell(r)}" for r, n in reasons), ""]
    if plot_uris:
        # Embedded (a data URI), so the image shows wherever the artifact is read, not only
        # on the worker that wrote the file; the file's place in the lake follows it.
        lines += ["## Score distributions and trend", ""]
        for uri in plot_uris:
            name = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".png")
            data = base64.b64encode(storage.read_bytes(uri)).decode()
            lines += [f"![{name}](data:image/png;base64,{data})", f"`{uri}`", ""]
    return "\n".join(lines).rstrip() + "\n"


def table_artifacts(stats: RunStats) -> dict[str, list[dict]]:
    """The report's tables as rows, for Prefect table artifacts (sortable in the UI); each key
    names an artifact, so it holds only lowercase letters, digits and dashes."""
    columns = ["dimension", "scored", "failed", "mean", "p10", "p50", "p90"]
    return {
        "counts": [dict(stats.headline()) | {"rewarded": stats.rewarded,
                                             "dataset_version": stats.dataset_version or ""}],
        "scores": [dict(zip(columns, row, strict=True)) for row in _dimension_rows(stats)],
        "failures": [{"kind": kind, "reason": r, "count": n}
                     for kind, reasons in (("judgment", stats.failure_reasons),
                                           ("reject", stats.reject_reasons),
                                           ("pairing skip", stats.skip_reasons))
                     for r, n in reasons],
        "cost": [{"role": u.role, "models": u.models, "calls": u.calls, "cached": u.cached,
                  "tokens_in": u.tokens_in, "tokens_out": u.tokens_out,
                  "cost_usd": u.cost_usd} for u in stats.llm],
        "open-batches": [dict(zip(_BATCH_COLUMNS, row, strict=True))
                         for row in _batch_rows(stats)],
    }


def render_terminal(stats: RunStats):
    """The run report as rich tables (the ``longreward report`` command)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list = []
    head = Table(title=f"run {stats.run_id}")
    for k, _ in stats.headline():
        head.add_column(k, justify="right")
    head.add_row(*(str(v) for _, v in stats.headline()))
    parts.append(head)
    if stats.dimensions:
        dims = Table(title="scores per dimension")
        for col in ("dimension", "scored", "failed", "mean", "p10", "p50", "p90"):
            dims.add_column(col, justify="left" if col == "dimension" else "right")
        for row in _dimension_rows(stats):
            dims.add_row(*map(str, row))
        parts.append(dims)
    if stats.llm:
        usage = Table(title=f"LLM usage (cached share {stats.cached_share:.0%})")
        for col in ("role", "models", "calls", "cached", "tokens in", "tokens out", "cost"):
            usage.add_column(col, justify="left" if col in ("role", "models") else "right")
        for row in _usage_rows(stats):
            usage.add_row(*map(str, row))
        parts.append(usage)
    if stats.open_batches:
        batches = Table(title="open batches (collected by the next run that needs them)")
        for col in _BATCH_COLUMNS:
            batches.add_column(col, justify="right" if col == "calls" else "left")
        for row in _batch_rows(stats):
            batches.add_row(*map(str, row))
        parts.append(batches)
    for title, reasons in (("judgment failures", stats.failure_reasons),
                           ("rejects", stats.reject_reasons),
                           ("pairing skips", stats.skip_reasons)):
        if reasons:
            t = Table(title=title)
            t.add_column("count", justify="right")
            t.add_column("reason")
            for r, n in reasons:
                t.add_row(str(n), r)
            parts.append(t)
    parts.append(Text(f"reward: {stats.rewarded} rewarded, mean {_num(stats.reward_mean)}; "
                      f"judge: {', '.join(stats.judge_models) or '—'}; dataset: "
                      f"{stats.dataset_version or 'none published in this run'}"))
    return Group(*parts)
