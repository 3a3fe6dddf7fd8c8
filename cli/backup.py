"""``pai backup``: encrypted snapshots of the state folder, verification, restore and DR."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from pai import backup as bk
from pai.audit import record_event
from pai.backup import keys as bkeys
from pai.backup.errors import VerificationFailed
from pai.backup.repo import catalog_snapshots, default_repo, open_repo, resolve, sidecar_ids
from pai.backup.schedule import DEFAULT_CRON_FILE, install, remove
from pai.cli.common import JSON_OPTION, passphrase
from pai.cli.output import byte_progress, console, emit, set_json, table
from pai.errors import PaiError, UsageError
from pai.fsutil import atomic_write_bytes
from pai.settings import paths

app = typer.Typer(no_args_is_help=True, help="Encrypted backups, restore and DR drills.")

REPO_OPTION = typer.Option(
    None, "--repo", help="Backup repository folder (default: [backup] repo in the config)."
)
RECIPIENT_OPTION = typer.Option(
    None, "--recipient", "-r", help="age public key (age1...) or a file of them; repeatable."
)
IDENTITY_OPTION = typer.Option(
    None, "--identity", "-i", help="age identity file (AGE-SECRET-KEY-1...) that decrypts."
)
BACKUP_PASSPHRASE_OPTION = typer.Option(
    None, "--passphrase-file", help="File holding the backup passphrase (age scrypt)."
)


KEEP_LAST = typer.Option(0, "--keep-last", help="Keep the N newest snapshots.")
KEEP_DAILY = typer.Option(0, "--keep-daily", help="Keep the newest snapshot of each of N days.")
KEEP_WEEKLY = typer.Option(0, "--keep-weekly", help="Keep the newest of each of N ISO weeks.")
KEEP_MONTHLY = typer.Option(0, "--keep-monthly", help="Keep the newest of each of N months.")


@contextlib.contextmanager
def _audit_failure(action: str, resource: str = "backup") -> Iterator[None]:
    """A command that fails still leaves its audit event, with the error's code only."""
    try:
        yield
    except PaiError as exc:
        record_event(action, resource=resource, outcome="failed", details={"error": exc.code})
        raise


def _secret(file: Path | None) -> bytes | None:
    return passphrase(file) if file is not None else None


@app.command("keygen")
def keygen(
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the identity file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Make an age identity for backups; prints the public key (the recipient) for cron."""
    set_json(json_out)
    identity = bkeys.keygen(output, force)
    recipient = str(identity.recipient)
    record_event(
        "backup.keygen", resource=f"recipient:{recipient}", details={"recipient": recipient}
    )
    emit(
        {"ok": True, "identity_file": str(output), "recipient": recipient},
        lambda d: console.print(
            f"{d['recipient']}\nidentity written to {d['identity_file']}: keep it OFF this node"
        ),
    )


@app.command("create")
def create(
    repo: Path | None = REPO_OPTION,
    recipient: list[str] | None = RECIPIENT_OPTION,
    passphrase_file: Path | None = BACKUP_PASSPHRASE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Take an encrypted, consistent snapshot of the state folder."""
    set_json(json_out)
    p = paths()
    root = default_repo(repo)
    recipients = bkeys.recipients(list(recipient or []), _secret(passphrase_file), p)
    with _audit_failure("backup.create"), byte_progress("backing up", None) as advance:
        result = bk.create(p, root, recipients, progress=advance)
    sizes = result.sidecar["sizes"]
    record_event(
        "backup.create",
        resource=f"backup:{result.snapshot}",
        details={
            "snapshot": result.snapshot,
            "repository": result.sidecar["repository"],
            "archive_sha256": result.sidecar["archive"]["sha256"],
            "new_bytes": sizes["new_bytes"],
        },
    )
    emit(
        {
            "ok": True,
            "snapshot": result.snapshot,
            "repo": str(root),
            "files": sizes["files"],
            "plain_bytes": sizes["plain_bytes"],
            "new_bytes": sizes["new_bytes"],
            "new_blobs": result.new_blobs,
            "reused_blobs": result.reused_blobs,
            "archive_sha256": result.sidecar["archive"]["sha256"],
        },
        lambda d: console.print(
            f"snapshot [bold]{d['snapshot']}[/]: {d['files']} files, "
            f"{d['plain_bytes']} bytes; {d['new_bytes']} new bytes in the repository "
            f"({d['new_blobs']} new blobs, {d['reused_blobs']} reused)"
        ),
    )


@app.command("list")
def list_(repo: Path | None = REPO_OPTION, json_out: bool = JSON_OPTION) -> None:
    """List the snapshots in the repository's catalog."""
    set_json(json_out)
    rows = catalog_snapshots(open_repo(default_repo(repo)))
    emit(
        {"snapshots": rows},
        lambda d: table(
            "snapshots",
            ["id", "time", "host", "files", "bytes", "new bytes", "archive sha256"],
            [
                [
                    r["id"],
                    r["time"],
                    r["host"],
                    r["files"],
                    r["plain_bytes"],
                    r["new_bytes"],
                    r["archive_sha256"][:16],
                ]
                for r in d["snapshots"]
            ],
        ),
    )


@app.command("verify")
def verify(
    snapshot: str | None = typer.Argument(None, help="Snapshot id, prefix or 'latest'."),
    all_: bool = typer.Option(False, "--all", help="Verify every snapshot."),
    repo: Path | None = REPO_OPTION,
    identity: Path | None = IDENTITY_OPTION,
    passphrase_file: Path | None = BACKUP_PASSPHRASE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Check signatures and ciphertext hashes; with a key, decrypt and check every file."""
    set_json(json_out)
    r = open_repo(default_repo(repo))
    if all_ == (snapshot is not None):
        raise UsageError("name one snapshot (or 'latest'), or pass --all")
    ids = sidecar_ids(r) if all_ else [resolve(r, str(snapshot))]
    secret = _secret(passphrase_file)
    ids_for = bkeys.identities(identity, secret) if identity or secret else None
    with _audit_failure("backup.verify"), byte_progress("verifying", None) as advance:
        passed, failures = bk.verify_many(r, ids, ids_for, advance)
    outcome = "failed" if failures else "ok"
    record_event(
        "backup.verify",
        resource=f"backup:{ids[0] if len(ids) == 1 else 'all'}",
        outcome=outcome,
        details={"snapshots": len(ids), "failed": len(failures), "decrypted": ids_for is not None},
    )
    if failures:
        raise VerificationFailed(
            f"{len(failures)} of {len(ids)} snapshot(s) failed verification: " + "; ".join(failures)
        )
    emit(
        {"ok": True, "verified": passed, "decrypted": ids_for is not None},
        lambda d: console.print(
            f"{len(d['verified'])} snapshot(s) verified"
            + (" (decrypted, every file hashed)" if d["decrypted"] else " (signatures, ciphertext)")
        ),
    )


@app.command("restore")
def restore(
    snapshot: str = typer.Argument(..., help="Snapshot id, prefix or 'latest'."),
    repo: Path | None = REPO_OPTION,
    identity: Path | None = IDENTITY_OPTION,
    passphrase_file: Path | None = BACKUP_PASSPHRASE_OPTION,
    target: Path | None = typer.Option(
        None, "--target", help="Folder to restore into (default: the state folder)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Restore even though serve.pid is locked (stop the daemon first)."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Restore a snapshot into staging, verify it, then swap it in atomically."""
    set_json(json_out)
    ids = bkeys.identities(identity, _secret(passphrase_file))
    dest = target or paths().home
    with (
        _audit_failure("backup.restore", f"backup:{snapshot}"),
        byte_progress("restoring", None) as advance,
    ):
        report = bk.restore(default_repo(repo), snapshot, ids, dest, force=force, progress=advance)
    record_event(
        "backup.restore",
        resource=f"backup:{report['snapshot']}",
        details={
            "snapshot": report["snapshot"],
            "sidecar_sha256": report["sidecar_sha256"],
            "files": report["files"],
        },
    )
    emit(
        {"ok": True, **report},
        lambda d: console.print(
            f"restored {d['snapshot']} ({d['files']} files) into {d['target']}"
            + (f"; previous state kept in {d['previous']}" if d["previous"] else "")
        ),
    )


@app.command("prune")
def prune(
    repo: Path | None = REPO_OPTION,
    keep_last: int = KEEP_LAST,
    keep_daily: int = KEEP_DAILY,
    keep_weekly: int = KEEP_WEEKLY,
    keep_monthly: int = KEEP_MONTHLY,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; remove nothing."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Apply a retention policy (restic's semantics) and drop unreferenced blobs."""
    set_json(json_out)
    policy = bk.Policy(keep_last, keep_daily, keep_weekly, keep_monthly)
    with _audit_failure("backup.prune"):
        result = bk.prune(default_repo(repo), policy, dry_run=dry_run)
    if not dry_run:
        record_event(
            "backup.prune",
            resource="backup",
            details={"removed": result["remove"], "blobs_removed": len(result["blobs_removed"])},
        )
    emit(
        {"ok": True, **result},
        lambda d: console.print(
            ("would remove " if d["dry_run"] else "removed ")
            + f"{len(d['remove'])} snapshot(s) and {len(d['blobs_removed'])} blob(s), "
            f"{d['bytes_freed']} bytes; kept {len(d['keep'])}"
        ),
    )


@app.command("copy")
def copy(
    to: Path = typer.Option(..., "--to", help="The other repository (created if missing)."),
    repo: Path | None = REPO_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Replicate every snapshot to another repository, verifying hashes on the way."""
    set_json(json_out)
    with _audit_failure("backup.copy"), byte_progress("copying", None) as advance:
        result = bk.copy(default_repo(repo), to.absolute(), advance)
    record_event(
        "backup.copy",
        resource="backup",
        details={"copied": result["copied"], "bytes": result["bytes_transferred"]},
    )
    emit(
        {"ok": True, **result},
        lambda d: console.print(
            f"copied {len(d['copied'])} snapshot(s), {d['bytes_transferred']} bytes; "
            f"{len(d['already_present'])} already present"
        ),
    )


@app.command("reindex")
def reindex(repo: Path | None = REPO_OPTION, json_out: bool = JSON_OPTION) -> None:
    """Rebuild the repository's catalog from the sidecar files alone."""
    set_json(json_out)
    r = open_repo(default_repo(repo))
    with r.lock():
        result = bk.reindex(r)
    record_event("backup.reindex", resource="backup", details={"snapshots": result["snapshots"]})
    emit(
        {"ok": True, **result},
        lambda d: console.print(
            f"catalog rebuilt: {d['snapshots']} snapshot(s)"
            + (f"; skipped unreadable: {d['unreadable']}" if d["unreadable"] else "")
        ),
    )


@app.command("schedule")
def schedule(
    cron: str | None = typer.Option(None, "--cron", help="Cron schedule, e.g. '0 2 * * *'."),
    repo: Path | None = REPO_OPTION,
    recipient: list[str] | None = RECIPIENT_OPTION,
    passphrase_file: Path | None = BACKUP_PASSPHRASE_OPTION,
    keep_last: int = KEEP_LAST,
    keep_daily: int = KEEP_DAILY,
    keep_weekly: int = KEEP_WEEKLY,
    keep_monthly: int = KEEP_MONTHLY,
    cron_file: Path = typer.Option(DEFAULT_CRON_FILE, "--cron-file", help="cron.d file to write."),
    remove_: bool = typer.Option(False, "--remove", help="Remove the scheduled backup."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Install (or --remove) a cron entry that runs `pai backup run` (create, then prune)."""
    set_json(json_out)
    if remove_:
        removed = remove(cron_file)
        record_event("backup.schedule.remove", resource=f"cron:{cron_file}")
        emit(
            {"ok": True, "removed": removed, "cron_file": str(cron_file)},
            lambda d: console.print(
                f"removed {d['cron_file']}" if d["removed"] else f"{d['cron_file']} was not there"
            ),
        )
        return
    if cron is None:
        raise UsageError("give --cron SCHEDULE, or --remove")
    p = paths()
    root = default_repo(repo)
    values = list(recipient or [])
    bkeys.recipients(values, _secret(passphrase_file), p)  # fail now, not at 2 am
    bk.Policy(keep_last, keep_daily, keep_weekly, keep_monthly)
    args = ["--repo", str(root)]
    for value in values:
        args += ["--recipient", value]
    if passphrase_file is not None:
        args += ["--passphrase-file", str(passphrase_file.absolute())]
    for flag, n in (
        ("--keep-last", keep_last),
        ("--keep-daily", keep_daily),
        ("--keep-weekly", keep_weekly),
        ("--keep-monthly", keep_monthly),
    ):
        if n:
            args += [flag, str(n)]
    line = install(cron_file, cron, p.home, args)
    record_event("backup.schedule", resource=f"cron:{cron_file}", details={"cron": cron})
    emit(
        {"ok": True, "cron_file": str(cron_file), "entry": line},
        lambda d: console.print(f"wrote {d['cron_file']}:\n{d['entry']}"),
    )


@app.command("run")
def run(
    repo: Path | None = REPO_OPTION,
    recipient: list[str] | None = RECIPIENT_OPTION,
    passphrase_file: Path | None = BACKUP_PASSPHRASE_OPTION,
    keep_last: int = KEEP_LAST,
    keep_daily: int = KEEP_DAILY,
    keep_weekly: int = KEEP_WEEKLY,
    keep_monthly: int = KEEP_MONTHLY,
    json_out: bool = JSON_OPTION,
) -> None:
    """The scheduled job: create then prune under a lock; one JSON line; exit 0/1/3/75."""
    set_json(True)
    _ = json_out  # always one JSON line: this is what cron logs and monitoring read
    p = paths()
    root = default_repo(repo)
    recipients = bkeys.recipients(list(recipient or []), _secret(passphrase_file), p)
    policy = bk.Policy(keep_last, keep_daily, keep_weekly, keep_monthly)
    summary, code = bk.run_job(p, root, recipients, None if policy.empty() else policy)
    record_event(
        "backup.run",
        resource=f"backup:{summary['snapshot'] or 'none'}",
        outcome="ok" if code == 0 else "failed",
        details={"snapshot": summary["snapshot"], "exit": code},
    )
    summary["exit"] = code
    sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    raise typer.Exit(code)


@app.command("drill")
def drill(
    snapshot: str = typer.Argument(..., help="Snapshot id, prefix or 'latest'."),
    repo: Path | None = REPO_OPTION,
    identity: Path | None = IDENTITY_OPTION,
    passphrase_file: Path | None = BACKUP_PASSPHRASE_OPTION,
    scratch: Path | None = typer.Option(
        None, "--scratch", help="Restore under this folder and keep it (default: temp, removed)."
    ),
    report: Path | None = typer.Option(None, "--report", help="Also write the evidence here."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Restore into scratch, verify the audit chain, databases and bundles: DR evidence."""
    set_json(json_out)
    ids = bkeys.identities(identity, _secret(passphrase_file))
    with (
        _audit_failure("backup.drill", f"backup:{snapshot}"),
        byte_progress("drill", None) as advance,
    ):
        evidence = bk.drill(default_repo(repo), snapshot, ids, scratch, advance)
    if report is not None:
        atomic_write_bytes(report, json.dumps(evidence, indent=2, sort_keys=True).encode() + b"\n")
    passed = evidence["result"] == "pass"
    record_event(
        "backup.drill",
        resource=f"backup:{evidence['snapshot']}",
        outcome="ok" if passed else "failed",
        details={"snapshot": evidence["snapshot"], "checks": evidence["checks"]},
    )
    emit(evidence, _render_drill)
    if not passed:
        raise typer.Exit(1)


def _render_drill(d: dict[str, Any]) -> None:
    colour = "green" if d["result"] == "pass" else "red"
    console.print(f"DR drill of {d['snapshot']}: [bold {colour}]{d['result'].upper()}[/]")
    for name, ok in d["checks"].items():
        console.print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    audit = d["audit"]
    console.print(
        f"  audit: {audit['events']} events, head {str(audit.get('head', ''))[:16]}"
        + (f", {audit['error']}" if audit.get("error") else "")
    )
    console.print(f"  files restored: {d['restored']['files']}, bytes {d['restored']['bytes']}")
    for b in d["bundles"]:
        console.print(f"  bundle {b['path']} sha256 {b['sha256'][:16]}")
