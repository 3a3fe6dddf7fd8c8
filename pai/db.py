"""DuckDB helpers: short-lived connections under a lock, and schema creation.

DuckDB allows one writing process per database file. pai never keeps a write connection open
across user-visible waits: each unit of work opens the database under its lock file
(``<db>.lock``), does its work in a transaction, and closes it. That keeps the CLI, the daemon
and cron from tripping over each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import duckdb

from pai.errors import StateError
from pai.locking import file_lock


@contextlib.contextmanager
def connect(
    path: Path, *, schema: str = "", read_only: bool = False, timeout: float = 60.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open ``path`` under its lock, apply ``schema`` (idempotent DDL), yield, then close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock"), timeout=timeout, shared=read_only):
        try:
            if read_only and not path.exists():
                con = duckdb.connect(":memory:")
            else:
                con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            raise StateError(f"cannot open database {path}: {exc}") from None
        try:
            if schema:
                con.execute(schema)
            yield con
        except duckdb.Error as exc:
            raise StateError(f"database {path}: {exc}") from None
        finally:
            con.close()
