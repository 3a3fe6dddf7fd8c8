"""``pai audit``: verify the hash-chained log, sign checkpoints, prove events, export, seal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from pai.audit import record_event
from pai.audit.errors import AuditError
from pai.cli.common import JSON_OPTION
from pai.cli.output import console, emit, err_console, json_mode, set_json
from pai.errors import UsageError
from pai.settings import paths
from pai.timeutil import parse_time

app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")


def _verified(d: dict[str, Any]) -> None:
    console.print(
        f"[bold green]audit log verified[/]: {d['events']} events, head {d['head_hash'][:16]}…, "
        f"{d['checkpoints']} signed checkpoints"
        + (f" by key {d['signer_kid']}" if d["signer_kid"] else "")
        + (f", {d['segments']} sealed segments" if d["segments"] else "")
    )
    for warning in d["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")


@app.command("verify")
def verify(
    checkpoints: list[Path] = typer.Option(
        [], "--checkpoints", help="A copy of checkpoints.jsonl kept off the machine (repeatable)."
    ),
    pubkey: Path | None = typer.Option(
        None, "--pubkey", help="The node public key to trust (default keys/node.pub)."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Check every event, link, segment and signed checkpoint; exit 1 at the first bad one."""
    from pai.audit.verify import verify_log

    set_json(json_out)
    try:
        result = verify_log(paths(), checkpoint_files=checkpoints, pubkey=pubkey)
    except AuditError as exc:
        _failed(exc)
    emit(result.as_dict(), _verified)


def _failed(exc: AuditError) -> NoReturn:
    """A failed check is the verification's result: report it with its first bad seq.

    Other errors (no key, unreadable files) go to the one catch point in pai.cli.main.
    """
    if json_mode():
        error = {"code": exc.code, "message": exc.diagnostics(), "first_bad_seq": exc.seq}
        sys.stdout.write(json.dumps({"ok": False, "error": error}, sort_keys=True) + "\n")
    where = f" (first bad seq: {exc.seq})" if exc.seq is not None else ""
    err_console.print(f"[bold red]audit log NOT verified:[/] {exc.diagnostics()}{where}")
    raise typer.Exit(exc.exit_code)


@app.command("checkpoint")
def checkpoint(json_out: bool = JSON_OPTION) -> None:
    """Sign a checkpoint at the head now (also done every N events or T minutes)."""
    from pai.audit.proofs import checkpoint_now

    set_json(json_out)
    p = paths()
    # logged first, so the checkpoint covers its own event and verify has nothing unsigned
    record_event("audit.checkpoint", resource="checkpoint", details={"trigger": "command"})
    doc, made = checkpoint_now(p)
    body = doc["body"]
    fields = ("seq", "head_hash", "merkle_root", "time", "kid")
    emit(
        {"ok": True, "new": made, **{k: body[k] for k in fields}},
        lambda d: console.print(
            f"signed checkpoint at seq [bold]{d['seq']}[/] root {d['merkle_root'][:16]}… "
            f"by key {d['kid']}"
        ),
    )


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    from pai.fsutil import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


@app.command("prove")
def prove(
    seq: int = typer.Argument(..., help="Sequence number of the event to prove."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the proof (JSON)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Write an inclusion proof of one event to a signed checkpoint."""
    from pai.audit.proofs import prove as make_proof

    set_json(json_out)
    p = paths()
    proof = make_proof(p, seq)
    _write_json(output, proof)
    record_event(
        "audit.prove",
        resource=f"event:{seq}",
        details={"seq": seq, "tree_size": proof["tree_size"]},
    )
    emit(
        {"ok": True, "seq": seq, "tree_size": proof["tree_size"], "proof": str(output)},
        lambda d: console.print(
            f"proof of event {d['seq']} in a tree of {d['tree_size']} written to {d['proof']}"
        ),
    )


@app.command("check-proof")
def check_proof(
    proof: Path = typer.Argument(..., help="A proof written by `pai audit prove`."),
    pubkey: Path = typer.Option(..., "--pubkey", help="The node public key (node.pub)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Verify an inclusion proof with only the node's public key."""
    from pai.audit.errors import ProofError
    from pai.audit.proofs import check_proof as verify_proof

    set_json(json_out)
    try:
        doc = json.loads(proof.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {proof}: {exc.strerror}") from None
    except ValueError:
        raise ProofError(f"{proof} is not JSON") from None
    result = verify_proof(doc, pubkey)
    emit(
        result,
        lambda d: console.print(
            f"[bold green]proof verified[/]: event {d['seq']} is in the log signed at seq "
            f"{d['tree_size']} ({d['checkpoint_time']}) by key {d['signer_kid']}"
        ),
    )


@app.command("seal")
def seal(
    before: str = typer.Option(..., "--before", help="Seal events older than this date/time."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Move older events into a signed, compressed Parquet segment."""
    from pai.audit.seal import seal as seal_log

    set_json(json_out)
    p = paths()
    body = seal_log(p, parse_time(before, "--before"))
    if body is None:
        emit({"ok": True, "sealed": 0}, lambda d: console.print("no events to seal"))
        return
    record_event(
        "audit.seal",
        resource=f"segment:{body['file']}",
        details={k: body[k] for k in ("first_seq", "last_seq", "count", "sha256")},
    )
    emit(
        {"ok": True, "sealed": body["count"], **body},
        lambda d: console.print(
            f"sealed events {d['first_seq']}..{d['last_seq']} into {d['file']} ({d['size']} bytes)"
        ),
    )


@app.command("export")
def export(
    output: Path = typer.Option(
        ..., "--output", "-o", help="Report file (a folder with --with-evidence)."
    ),
    fmt: str = typer.Option("html", "--format", help="csv, jsonl or html."),
    since: str | None = typer.Option(None, "--since", help="Start of the period (inclusive)."),
    until: str | None = typer.Option(None, "--until", help="End of the period (exclusive)."),
    actor: str | None = typer.Option(None, "--actor", help="Only this actor (glob, e.g. 'svc:*')."),
    action: str | None = typer.Option(
        None, "--action", help="Only this action (glob, e.g. 'keys.*')."
    ),
    outcome: str | None = typer.Option(None, "--outcome", help="Only ok, denied or failed."),
    with_evidence: bool = typer.Option(
        False,
        "--with-evidence",
        help="Also write events, checkpoints, key and an offline verifier.",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Export a period of the log as CSV, JSON Lines or an HTML report."""
    from pai.audit import export as exporter

    set_json(json_out)
    p = paths()
    sel = exporter.selection(
        parse_time(since, "--since") if since else None,
        parse_time(until, "--until") if until else None,
        actor,
        action,
        outcome,
    )
    summary = exporter.export(p, output, fmt, sel, with_evidence=with_evidence)
    record_event(
        "audit.export",
        resource=f"export:{fmt}",
        details={
            "events": summary["events"],
            "evidence": with_evidence,
            **{k: v for k, v in sel.as_dict().items() if v is not None},
        },
    )
    emit(
        summary,
        lambda d: console.print(
            f"exported {d['events']} events as {d['format']} to {d['output']}"
            + (" with offline evidence" if with_evidence else "")
        ),
    )
