"""The read-only door to the lake: one SELECT-like statement, run inside DuckDB's own sandbox.

Two locks, each enough on its own for the common escapes:
- the statement is parsed by DuckDB and must be a single query (SELECT, DESCRIBE, SHOW,
  SUMMARIZE, or EXPLAIN of one of those); ``EXPLAIN ANALYZE`` executes what it explains, so
  the explained statement is parsed and checked too;
- the connection's tables are Arrow datasets registered before the sandbox closes, then
  ``enable_external_access`` goes off with no allowed directory (no file can be read or
  written by path, no extension installed or loaded) and ``lock_configuration`` goes on, so no
  ``SET`` can give any of it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import duckdb

# Applied in this order; the last one locks every setting, including these.
SANDBOX_SETTINGS = (
    ("autoinstall_known_extensions", False),
    ("autoload_known_extensions", False),
    ("allow_community_extensions", False),
    ("python_enable_replacements", False),   # Python variables are not tables
    ("enable_external_access", False),
    ("lock_configuration", True),
)
_EXPLAIN_MODIFIERS = {"analyze", "analyse"}
# Query nodes that only read. DuckDB also parses writes inside a query (``WITH x AS (DELETE
# ... RETURNING *)``, ``WITH x AS (COPY ...)``): their nodes are *_QUERY_NODE, refused.
_READ_NODES = {"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"}
ALLOWED = "one read-only query (SELECT, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN of one)"


class ReadOnlyError(ValueError):
    """A statement that would change something was sent to a read-only query."""


def lock_down(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Close the sandbox: from now on the connection reads only what is already registered."""
    for name, value in SANDBOX_SETTINGS:
        con.execute(f"SET {name} = {str(value).lower()}")
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise :class:`ReadOnlyError` unless ``sql`` is exactly one read-only query."""
    try:
        statements = con.extract_statements(sql)
    except (duckdb.Error, ValueError) as err:  # ValueError: a type the client cannot name
        raise ReadOnlyError(f"cannot parse the statement: {_first_line(err)}") from err
    if len(statements) != 1:
        raise ReadOnlyError(f"only {ALLOWED} is allowed per call, got {len(statements)} "
                            "statements")
    _require_query(con, statements[0], depth=0)


def _require_query(con: duckdb.DuckDBPyConnection, statement, depth: int) -> None:
    kind = statement.type
    if kind == duckdb.StatementType.SELECT:
        _require_read_nodes(con, statement.query)
        return
    if kind == duckdb.StatementType.EXPLAIN and depth < 4:
        inner = con.extract_statements(_explained_text(statement.query))
        if len(inner) == 1:
            _require_query(con, inner[0], depth + 1)
            return
    what = kind.name if depth == 0 else f"EXPLAIN of {kind.name}"
    raise ReadOnlyError(f"only {ALLOWED} is allowed, got {what}")


def _require_read_nodes(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse a SELECT that holds a write (a DML or COPY common table expression)."""
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0])
    if tree.get("error"):
        raise ReadOnlyError(f"only {ALLOWED} is allowed: {tree.get('error_message')}")
    writes = sorted({t for t in _types(tree) if t.endswith("_NODE") and t not in _READ_NODES})
    if writes:
        raise ReadOnlyError(f"only {ALLOWED} is allowed, got a query that holds "
                            f"{', '.join(w.removesuffix('_QUERY_NODE') for w in writes)}")


def _types(node) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield node["type"]
        for value in node.values():
            yield from _types(value)
    elif isinstance(node, list):
        for value in node:
            yield from _types(value)


def _explained_text(query: str) -> str:
    """The statement after ``EXPLAIN [ANALYZE] [(options)]``, found with DuckDB's tokenizer."""
    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(query)
              if kind != duckdb.token_type.comment]
    i = 1  # tokens[0] is EXPLAIN
    if i < len(tokens) and _word(query, tokens, i).lower() in _EXPLAIN_MODIFIERS:
        i += 1
    if i < len(tokens) and query[tokens[i][0]] == "(":
        depth = 0
        while i < len(tokens):
            char = query[tokens[i][0]]
            depth += char == "("
            depth -= char == ")"
            i += 1
            if depth == 0:
                break
    return query[tokens[i][0]:] if i < len(tokens) else ""


def _word(query: str, tokens: list, i: int) -> str:
    end = tokens[i + 1][0] if i + 1 < len(tokens) else len(query)
    return query[tokens[i][0]:end].strip()


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def refusal(err: Exception) -> str | None:
    """The sandbox's refusal behind a DuckDB error, or None for an ordinary SQL mistake."""
    if isinstance(err, duckdb.PermissionException):
        return ("the SQL sandbox reads only the lake's tables and views, no file by path: "
                + _first_line(err))
    if isinstance(err, duckdb.Error) and "configuration has been locked" in str(err):
        return "settings cannot be changed from a read-only query: " + _first_line(err)
    return None
