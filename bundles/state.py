"""Anti-rollback: the highest bundle version accepted per bundle name, in DuckDB.

An attacker who holds an old, correctly signed bundle with a known flaw must not be able to
get it installed again. The air-gapped side therefore keeps, per bundle name, the highest
version it has accepted, and refuses older ones unless the operator explicitly allows it
(that allowance is an audit event).
"""

from __future__ import annotations

from dataclasses import dataclass

from pai.bundles.errors import DowngradeError
from pai.bundles.manifest import parse_semver
from pai.db import connect
from pai.settings import Paths
from pai.timeutil import format_time, utcnow

SCHEMA = """
CREATE TABLE IF NOT EXISTS bundle_versions (
    name VARCHAR PRIMARY KEY,
    version VARCHAR NOT NULL,
    manifest_sha256 VARCHAR NOT NULL,
    accepted_at VARCHAR NOT NULL
);
"""


@dataclass(frozen=True)
class Floor:
    name: str
    version: str
    manifest_sha256: str


def floor(p: Paths, name: str) -> Floor | None:
    """The highest accepted version of ``name``, or None when none was accepted yet."""
    with connect(p.state_db, schema=SCHEMA) as con:
        row = con.execute(
            "SELECT version, manifest_sha256 FROM bundle_versions WHERE name = ?", [name]
        ).fetchone()
    return Floor(name, str(row[0]), str(row[1])) if row else None


def check_floor(p: Paths, name: str, version: str, allow_downgrade: bool) -> Floor | None:
    """Refuse ``version`` when it is below the floor; returns the floor it was compared to.

    Returns the floor when a downgrade was allowed (so the caller can audit it), else None.
    """
    current = floor(p, name)
    if current is None or parse_semver(version) >= parse_semver(current.version):
        return None
    if not allow_downgrade:
        raise DowngradeError(
            f"bundle {name} {version} is older than {current.version}, already accepted here",
            hint="use --allow-downgrade to accept it anyway (recorded in the audit log)",
        )
    return current


def accept(p: Paths, name: str, version: str, manifest_sha256: str) -> None:
    """Raise the floor of ``name`` to ``version`` if it is higher (a downgrade never lowers it)."""
    with connect(p.state_db, schema=SCHEMA) as con:
        con.execute("BEGIN TRANSACTION")
        row = con.execute("SELECT version FROM bundle_versions WHERE name = ?", [name]).fetchone()
        if row is None or parse_semver(version) > parse_semver(str(row[0])):
            con.execute(
                "INSERT OR REPLACE INTO bundle_versions VALUES (?, ?, ?, ?)",
                [name, version, manifest_sha256, format_time(utcnow())],
            )
        con.execute("COMMIT")
