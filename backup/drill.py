"""``pai backup drill``: restore a snapshot into scratch and prove the restored node is sound.

The evidence an operator files: the snapshot and sidecar hashes, that every file matched the
manifest (restore already refuses otherwise), that the audit log verifies exactly as
`pai audit verify` would (hash chain, sealed segments, signed checkpoints:
:func:`pai.audit.verify.verify_log` run on the restored folder), that every DuckDB database
opens, and the sha256 of every installed bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from pai.backup import age
from pai.backup.repo import open_repo, resolve
from pai.backup.restore import restore_into, scratch_folder
from pai.backup.verify import Progress, _no_progress
from pai.errors import PaiError
from pai.settings import paths
from pai.timeutil import format_time, utcnow


def verify_audit_chain(home: Path) -> dict[str, Any]:
    """``pai audit verify`` on the restored state folder: every event's hash and link, the
    sealed segments, and every signed checkpoint (database and checkpoint file) against the
    restored node public key. Never raises: a failure is evidence, reported as such."""
    from pai.audit.verify import verify_log

    if not (home / "audit" / "audit.duckdb").exists():
        return {"ok": True, "events": 0, "head": None, "note": "no audit log in the snapshot"}
    try:
        result = verify_log(paths(home))
    except PaiError as exc:
        return {"ok": False, "events": None, "error": exc.diagnostics(), "code": exc.code}
    report = result.as_dict()
    return {"ok": True, "events": result.events, "head": result.head_hash, "verify": report}


def check_databases(home: Path) -> list[dict[str, Any]]:
    out = []
    for db in sorted(home.rglob("*.duckdb")):
        try:
            con = duckdb.connect(str(db), read_only=True)
            tables = con.execute("SELECT count(*) FROM duckdb_tables()").fetchone()
            con.close()
            out.append(
                {
                    "path": db.relative_to(home).as_posix(),
                    "ok": True,
                    "tables": tables[0] if tables else 0,
                }
            )
        except duckdb.Error as exc:
            out.append({"path": db.relative_to(home).as_posix(), "ok": False, "error": str(exc)})
    return out


def drill(
    repo_root: Path,
    wanted: str,
    identities: list[age.Identity],
    scratch: Path | None,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Restore into scratch and collect pass/fail evidence; never touches live state."""
    repo = open_repo(repo_root)
    snapshot_id = resolve(repo, wanted)
    started = format_time(utcnow())
    with scratch_folder(scratch) as folder:
        restored = restore_into(repo, snapshot_id, identities, folder, progress)
        manifest = restored.pop("manifest")
        audit = verify_audit_chain(folder)
        databases = check_databases(folder)
    bundles = [
        {"path": f["path"], "sha256": f["sha256"], "size": f["size"], "ok": True}
        for f in manifest["files"]
        if f["path"].startswith("bundles/") and f.get("type") == "file"
    ]
    checks = {
        "restore": True,
        "audit_chain": bool(audit["ok"]),
        "databases": all(d["ok"] for d in databases),
        "bundles": all(b["ok"] for b in bundles),
    }
    return {
        "result": "pass" if all(checks.values()) else "fail",
        "snapshot": snapshot_id,
        "repository": str(repo.root),
        "started": started,
        "finished": format_time(utcnow()),
        "checks": checks,
        "restored": restored,
        "audit": audit,
        "databases": databases,
        "bundles": bundles,
        "scratch": str(folder) if scratch else None,
    }
