"""Exports for compliance officers: CSV, JSON Lines, an HTML report, and offline evidence.

An export selects the events of a period (``since`` inclusive, ``until`` exclusive) that match
optional actor / action globs and an outcome. With evidence, the output is a folder holding
the report and everything a third party needs to check it without pai: the contiguous run of
chained events around the period up to a signed checkpoint, the checkpoints, the node public
key and ``verify_evidence.py`` (Python standard library plus ``cryptography``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pai.audit.chain import OUTCOMES, Event
from pai.audit.errors import AuditError
from pai.audit.store import parquet_events, segments_dir
from pai.audit.verify import snapshot, verify_log
from pai.canonical import canonical_bytes
from pai.errors import UsageError
from pai.fsutil import atomic_write_bytes, fsync_dir
from pai.settings import Paths
from pai.timeutil import format_time, utcnow

FORMATS = ("csv", "jsonl", "html")
EVIDENCE_TYPE = "pai-audit-evidence"
VERIFIER = Path(__file__).with_name("evidence_verifier.py")


@dataclass(frozen=True)
class Selection:
    """Which events an export holds. Times are ``YYYY-MM-DDTHH:MM:SSZ`` strings."""

    since: str = ""
    until: str = ""
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise UsageError(f"--outcome must be one of {', '.join(OUTCOMES)}")
        if self.since and self.until and self.until <= self.since:
            raise UsageError("--until must be later than --since")

    def in_period(self, event: Event) -> bool:
        return (not self.since or event.time >= self.since) and (
            not self.until or event.time < self.until
        )

    def matches(self, event: Event) -> bool:
        return (
            self.in_period(event)
            and (self.actor is None or fnmatchcase(event.actor, self.actor))
            and (self.action is None or fnmatchcase(event.action, self.action))
            and (self.outcome is None or event.outcome == self.outcome)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since or None,
            "until": self.until or None,
            "actor": self.actor,
            "action": self.action,
            "outcome": self.outcome,
        }


def selection(
    since: datetime | None,
    until: datetime | None,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
) -> Selection:
    return Selection(
        format_time(since) if since else "",
        format_time(until) if until else "",
        actor,
        action,
        outcome,
    )


def all_events(p: Paths) -> tuple[list[Event], list[dict[str, Any]]]:
    """Every event (sealed segments, then the hot table) and every checkpoint document."""
    snap = snapshot(p)
    events: list[Event] = []
    for row in snap.segments:
        events.extend(parquet_events(segments_dir(p) / row.file))
    events.extend(snap.hot)
    return events, [json.loads(row.document) for row in snap.checkpoints]


def verification_status(p: Paths) -> dict[str, Any]:
    """The result of ``pai audit verify`` as data, failures included (for the report)."""
    try:
        return verify_log(p).as_dict()
    except AuditError as exc:
        return {
            "ok": False,
            "code": exc.code,
            "message": exc.diagnostics(),
            "first_bad_seq": exc.seq,
        }


def event_line(event: Event) -> bytes:
    return canonical_bytes(event.record())


def render(fmt: str, events: list[Event], context: dict[str, Any]) -> bytes:
    """The report bytes in one of :data:`FORMATS`."""
    if fmt == "jsonl":
        return b"".join(event_line(e) + b"\n" for e in events)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(Event._fields)
        writer.writerows(events)
        return buffer.getvalue().encode()
    if fmt == "html":
        from pai.audit.report import html_report

        return html_report(events, context).encode()
    raise UsageError(f"--format must be one of {', '.join(FORMATS)}")


def export(
    p: Paths, output: Path, fmt: str, sel: Selection, *, with_evidence: bool = False
) -> dict[str, Any]:
    """Write the report (or, with evidence, a folder); returns a summary of what was written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}")
    if with_evidence:
        if output.exists():
            raise UsageError(f"{output} already exists; evidence goes into a new folder")
        from pai.audit.proofs import checkpoint_now

        checkpoint_now(p)
    events, checkpoints = all_events(p)
    chosen = [e for e in events if sel.matches(e)]
    context = {
        "selection": sel.as_dict(),
        "generated": format_time(utcnow()),
        "verification": verification_status(p),
        "node": _node_kid(p),
        "total_events": len(events),
    }
    data = render(fmt, chosen, context)
    summary: dict[str, Any] = {
        "ok": True,
        "format": fmt,
        "events": len(chosen),
        "output": str(output),
    }
    if not with_evidence:
        atomic_write_bytes(output, data)
        return summary
    evidence = _evidence(p, events, checkpoints, chosen, sel, fmt, data)
    _write_folder(output, evidence)
    summary["evidence"] = sorted(evidence)
    summary["slice"] = json.loads(evidence["evidence.json"])["slice"]
    return summary


def _node_kid(p: Paths) -> str | None:
    path = p.keys / "node.pub"
    try:
        return str(json.loads(path.read_bytes())["kid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _evidence(
    p: Paths,
    events: list[Event],
    checkpoints: list[dict[str, Any]],
    chosen: list[Event],
    sel: Selection,
    fmt: str,
    report: bytes,
) -> dict[str, bytes]:
    """The files of an evidence folder, by name."""
    if not events or not checkpoints:
        raise UsageError("the audit log has no signed checkpoint to anchor evidence to")
    before = [e.seq for e in events if sel.since and e.time < sel.since]
    first = max(before[-1], 1) if before else 1
    after = [e.seq for e in events if sel.until and e.time >= sel.until]
    end = after[0] if after else events[-1].seq
    anchors = sorted(int(c["body"]["seq"]) for c in checkpoints if c["body"]["seq"] >= end)
    if not anchors:
        raise UsageError("no signed checkpoint covers the end of the period")
    last = anchors[0]
    run = [e for e in events if first <= e.seq <= last]
    kept = [c for c in checkpoints if first <= c["body"]["seq"] <= last]
    name = f"report.{fmt}"
    manifest = {
        "type": EVIDENCE_TYPE,
        "version": 1,
        "report": name,
        "format": fmt,
        "selection": sel.as_dict(),
        "slice": {"first_seq": first, "last_seq": last},
        "selected": [e.seq for e in chosen],
        "generated": format_time(utcnow()),
    }
    return {
        name: report,
        "events.jsonl": b"".join(event_line(e) + b"\n" for e in run),
        "checkpoints.jsonl": b"".join(canonical_bytes(c) + b"\n" for c in kept),
        "node.pub": (p.keys / "node.pub").read_bytes(),
        "evidence.json": json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n",
        "verify_evidence.py": VERIFIER.read_bytes(),
        "README.txt": _README.encode(),
    }


def _write_folder(output: Path, files: dict[str, bytes]) -> None:
    """Write all files into a temp folder beside ``output``, then rename it into place."""
    parent = output.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=parent))
    try:
        for name, data in files.items():
            with (tmp / name).open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o755)
        fsync_dir(tmp)
        os.rename(tmp, output)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_README = """pai audit evidence
==================

This folder holds an audit log export and what is needed to check it offline:

  report.*            the export itself (CSV, JSON Lines or HTML)
  events.jsonl        the chained events around the period, up to a signed checkpoint
  checkpoints.jsonl   checkpoints signed by the node key (Ed25519)
  node.pub            the node public key (compare its kid with the one you hold)
  evidence.json       the period, filters and which events the report must hold
  verify_evidence.py  the verifier: Python 3.11+ and the `cryptography` package only

Check it:

  python3 verify_evidence.py .                       # trusts node.pub in this folder
  python3 verify_evidence.py . --pubkey node.pub     # better: a key obtained independently

The verifier checks every signature and hash, that the events form one unbroken chain ending
at a signed checkpoint, that the period is covered from end to end, and that the report holds
exactly the events of the period that match the filters, unchanged. Exit status 0 = verified.
"""
