"""Where the audit log lives and how it is read and written (docs/formats/audit.md, "Storage").

Layout under ``$PAI_HOME/audit``::

    audit.duckdb        events (the hot table), checkpoints, segments, meta
    audit.duckdb.lock   flock taken by every reader (shared) and writer (exclusive)
    checkpoints.jsonl   every signed checkpoint, one canonical JSON line each, append-only
    segments/           sealed events: seg-<first>-<last>.parquet and its signed .json manifest

DuckDB lets one process write a file at a time. Every writer (CLI, daemon, cron) takes the
lock file exclusively, opens the database, appends in one transaction, commits and closes:
the commit is durable (DuckDB fsyncs its write-ahead log) before the lock is released, so the
next writer always sees the true head and the chain cannot fork. duckdb is imported only when
the log is opened, keeping ``import pai.audit`` cheap.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pai.audit.chain import FIELDS, GENESIS, Event
from pai.audit.errors import FormatVersionError
from pai.settings import Paths

if TYPE_CHECKING:
    import duckdb

FORMAT_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
INSERT INTO meta VALUES ('format', '1') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT PRIMARY KEY,
    time VARCHAR NOT NULL,
    actor VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    resource VARCHAR NOT NULL,
    outcome VARCHAR NOT NULL,
    details VARCHAR NOT NULL,
    prev_hash VARCHAR NOT NULL,
    hash VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq BIGINT PRIMARY KEY,
    time VARCHAR NOT NULL,
    document VARCHAR NOT NULL,
    frontier VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    first_seq BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    last_hash VARCHAR NOT NULL,
    last_time VARCHAR NOT NULL,
    file VARCHAR NOT NULL,
    manifest VARCHAR NOT NULL
);
"""

_COLUMNS = ", ".join(FIELDS)


def audit_dir(p: Paths) -> Path:
    return p.audit


def db_path(p: Paths) -> Path:
    return p.audit / "audit.duckdb"


def checkpoint_file(p: Paths) -> Path:
    return p.audit / "checkpoints.jsonl"


def segments_dir(p: Paths) -> Path:
    return p.audit / "segments"


@contextlib.contextmanager
def open_log(p: Paths, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    """The audit database under its lock: exclusive to write, shared to read."""
    from pai.db import connect

    path = db_path(p)
    if write:
        p.ensure()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with connect(path, read_only=not write) as con:
        if write and not has_tables(con):
            con.execute(SCHEMA)
        if has_tables(con):
            _check_version(con)
        yield con


def _check_version(con: duckdb.DuckDBPyConnection) -> None:
    row = one(con, "SELECT value FROM meta WHERE key = 'format'")
    if row is None or row[0] != FORMAT_VERSION:
        found = row[0] if row else "none"
        raise FormatVersionError(
            f"the audit database has format version {found}; this pai reads version "
            f"{FORMAT_VERSION}",
            hint="use the pai release that wrote it",
        )


def one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The first row of a query, or None; the result is read to its end (DuckDB 2 refuses
    new statements on a connection with an unfinished result)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def has_tables(con: duckdb.DuckDBPyConnection) -> bool:
    """False for an empty read-only view of a log that was never written."""
    import duckdb

    try:
        con.execute("SELECT 1 FROM meta LIMIT 0").fetchall()
    except duckdb.CatalogException:
        return False
    return True


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    time: str


EMPTY_HEAD = Head(0, GENESIS, "")


def head(con: duckdb.DuckDBPyConnection) -> Head:
    """The last event, whether it is in the hot table or the newest sealed segment."""
    row = one(con, "SELECT seq, hash, time FROM events ORDER BY seq DESC LIMIT 1")
    if row:
        return Head(int(row[0]), str(row[1]), str(row[2]))
    row = one(
        con, "SELECT last_seq, last_hash, last_time FROM segments ORDER BY last_seq DESC LIMIT 1"
    )
    if row:
        return Head(int(row[0]), str(row[1]), str(row[2]))
    return EMPTY_HEAD


def insert(con: duckdb.DuckDBPyConnection, columns: dict[str, list[Any]]) -> None:
    """Insert column lists in one statement (a columnar scan, not one INSERT per row)."""
    import numpy as np

    count = len(columns["seq"])
    if count <= 64:  # a columnar scan costs more than it saves for a few rows
        marks = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * count)
        values = [columns[name][i] for i in range(count) for name in FIELDS]
        con.execute(f"INSERT INTO events ({_COLUMNS}) VALUES {marks}", values)
        return
    batch = {
        name: np.array(values, dtype=np.int64 if name == "seq" else object)
        for name, values in columns.items()
    }
    con.register("pai_audit_batch", batch)
    try:
        con.execute(f"INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM pai_audit_batch")
    finally:
        con.unregister("pai_audit_batch")


def hot_events(
    con: duckdb.DuckDBPyConnection, where: str = "", params: list[Any] | None = None
) -> list[Event]:
    """Hot-table events in sequence order (optionally filtered by a SQL condition)."""
    if not has_tables(con):
        return []
    clause = f"WHERE {where}" if where else ""
    cols = con.execute(
        f"SELECT {_COLUMNS} FROM events {clause} ORDER BY seq", params or []
    ).fetchnumpy()
    return _to_events(cols)


def _to_events(cols: dict[str, Any]) -> list[Event]:
    lists = [cols[name].tolist() for name in FIELDS]
    with paused_gc():
        return list(map(Event._make, zip(*lists, strict=True)))


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small tuples.

    Hundreds of thousands of new tuples trigger collections over and over although none of
    them can be part of a cycle; pausing it makes loading a large log several times faster.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parquet_events(path: Path) -> list[Event]:
    """Events of a sealed segment file, in the order they were written."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        cols = con.execute(
            f"SELECT {_COLUMNS} FROM read_parquet(?) ORDER BY seq", [str(path)]
        ).fetchnumpy()
    finally:
        con.close()
    return _to_events(cols)


@dataclass(frozen=True)
class SegmentRow:
    first_seq: int
    last_seq: int
    last_hash: str
    last_time: str
    file: str
    manifest: str


def segment_rows(con: duckdb.DuckDBPyConnection) -> list[SegmentRow]:
    if not has_tables(con):
        return []
    rows = con.execute(
        "SELECT first_seq, last_seq, last_hash, last_time, file, manifest FROM segments "
        "ORDER BY first_seq"
    ).fetchall()
    return [SegmentRow(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


@dataclass(frozen=True)
class CheckpointRow:
    seq: int
    time: str
    document: str
    frontier: str


def checkpoint_rows(con: duckdb.DuckDBPyConnection) -> list[CheckpointRow]:
    if not has_tables(con):
        return []
    rows = con.execute(
        "SELECT seq, time, document, frontier FROM checkpoints ORDER BY seq"
    ).fetchall()
    return [CheckpointRow(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def latest_checkpoint(con: duckdb.DuckDBPyConnection) -> CheckpointRow | None:
    row = one(
        con, "SELECT seq, time, document, frontier FROM checkpoints ORDER BY seq DESC LIMIT 1"
    )
    return CheckpointRow(int(row[0]), str(row[1]), str(row[2]), str(row[3])) if row else None
