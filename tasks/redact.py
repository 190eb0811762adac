"""Keep secrets out of everything we store: tables, logs, artifacts.

Two things are scrubbed: the values of the configured API keys (``LONGREWARD_*_API_KEY``,
``OPENAI_API_KEY``), wherever they appear, and anything shaped like a bearer token
(``sk-...``, ``Bearer ...``), which catches keys we were never told about. Applied at the
boundaries: LLM error reasons, every string column written to the lake, every log record,
the report artifact.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

REDACTED = "[REDACTED]"
KEY_ENV = re.compile(r"^(LONGREWARD_[A-Z0-9_]+_API_KEY|OPENAI_API_KEY)$")
# Shorter values ("EMPTY", "x": what a local vLLM gets) are placeholders, not secrets, and
# scrubbing them would mangle ordinary text.
MIN_KEY_CHARS = 8
# RE2 and Python's re both accept this pattern (pyarrow's kernels use RE2).
TOKEN_SHAPES = r"(sk-[A-Za-z0-9_\-]{8,}|[Bb]earer\s+[A-Za-z0-9._~+/\-]{8,}=*)"
_TOKEN_RE = re.compile(TOKEN_SHAPES)


def configured_keys() -> list[str]:
    """The API key values in this process's environment, longest first."""
    values = {v for k, v in os.environ.items() if KEY_ENV.match(k) and len(v) >= MIN_KEY_CHARS}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, keys: Iterable[str] | None = None) -> str:
    """``text`` with every configured key and bearer-shaped token replaced by [REDACTED]."""
    if not text:
        return text
    for key in configured_keys() if keys is None else keys:
        text = text.replace(key, REDACTED)
    return _TOKEN_RE.sub(REDACTED, text)


def scrub_table(table: pa.Table, keep_shapes: Iterable[str] = ()) -> pa.Table:
    """Every string column scrubbed (vectorised); ``keep_shapes`` columns are only scrubbed
    of the configured keys, not of token shapes (source text is data, kept as written)."""
    keys = configured_keys()
    keep = set(keep_shapes)
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for key in keys:
                column = pc.replace_substring(column, key, REDACTED)
            if name not in keep:
                column = pc.replace_substring_regex(column, TOKEN_SHAPES, REDACTED)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=table.schema)


class ScrubFilter(logging.Filter):
    """Rewrites a log record's message (and its exception text) without secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must still be logged
            message = str(record.msg)
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


_installed = False


def install_log_scrubbing() -> None:
    """Scrub every log record this process creates, whatever logger or handler it goes to
    (Prefect's run loggers included): the filter runs in the record factory."""
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()
    scrubber = ScrubFilter()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        scrubber.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
