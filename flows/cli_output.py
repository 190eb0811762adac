"""How the CLI prints what it read: the typed choices of its options, and one writer per format.

Choices are enums so typer refuses a mistyped value before any work, listing the valid ones.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

console = Console()


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


class ReportFormat(StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"


class Ties(StrEnum):
    first = "first"
    skip = "skip"


class Style(StrEnum):
    conversational = "conversational"
    plain = "plain"


class GpuPool(StrEnum):
    process = "process"
    kubernetes = "kubernetes"


def fit_to_terminal(*consoles: Console) -> None:
    """Honour this invocation's ``COLUMNS`` (the consoles were made at import, maybe before it
    was set, e.g. by a test runner invoking the app in-process)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        for each in consoles:
            each.width = int(columns)


def emit(table: pa.Table, fmt: OutputFormat, output: Path | None = None,
         title: str | None = None, max_rows: int = 50) -> None:
    """``table`` in ``fmt``, to ``output`` or stdout (parquet needs a file: callers check that
    before any work)."""
    if fmt is OutputFormat.table:
        print_table(table, title, max_rows)
    elif fmt is OutputFormat.csv:
        pacsv.write_csv(flat(table), str(output) if output else sys.stdout.buffer)
    elif fmt is OutputFormat.json:
        write_text(json.dumps(table.to_pylist(), default=str, ensure_ascii=False, indent=1),
                   output)
    else:
        pq.write_table(table, str(output))


def write_text(text: str, output: Path | None) -> None:
    if output:
        output.write_text(text + "\n")
    else:
        print(text)


def print_table(table: pa.Table, title: str | None = None, max_rows: int = 50) -> None:
    out = Table(title=title, show_lines=False)
    for name in table.column_names:
        out.add_column(name, overflow="fold")
    for row in table.slice(0, max_rows).to_pylist():
        out.add_row(*("" if v is None else short(v) for v in row.values()))
    console.print(out)
    if table.num_rows > max_rows:
        console.print(f"... {table.num_rows - max_rows} more rows")


def flat(table: pa.Table) -> pa.Table:
    """Lists, structs and maps as JSON text: CSV has no nested values."""
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_nested(field.type):
            column = pa.array([None if v is None else json.dumps(v, default=str,
                                                                 ensure_ascii=False)
                               for v in column.to_pylist()], pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def short(value, limit: int = 120) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
