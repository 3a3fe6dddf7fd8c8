"""``pai backup prune``: restic's retention policy, then removal of unreferenced blobs.

Policy (restic ``forget`` semantics): snapshots are taken newest first. ``--keep-last N`` keeps
the N newest. ``--keep-daily N`` keeps, for each of the N most recent days that have snapshots,
the newest snapshot of that day; weekly uses ISO weeks, monthly calendar months (all in UTC).
A snapshot is kept if any rule keeps it. With no rule at all, prune refuses to run, as restic does.

Removal order keeps the repository consistent at every moment: sidecar first (the snapshot is
no longer committed), then the archive, then the catalog row; blobs no remaining sidecar
references are removed last.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pai.backup.errors import PolicyError
from pai.backup.repo import (
    Repo,
    catalog_remove,
    clean_stale,
    open_repo,
    read_sidecar,
    sidecar_ids,
)
from pai.errors import PaiError
from pai.fsutil import fsync_dir
from pai.timeutil import parse_time


@dataclass(frozen=True)
class Policy:
    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def empty(self) -> bool:
        return not (self.last or self.daily or self.weekly or self.monthly)


def _buckets(moment: datetime) -> dict[str, str]:
    iso = moment.isocalendar()
    return {
        "daily": moment.strftime("%Y-%m-%d"),
        "weekly": f"{iso.year}-W{iso.week:02d}",
        "monthly": moment.strftime("%Y-%m"),
    }


def plan(snapshots: list[tuple[str, str]], policy: Policy) -> dict[str, list[str]]:
    """Map each snapshot id to the rules that keep it (empty list: it is removed).

    ``snapshots`` holds (id, time) pairs in any order.
    """
    if policy.empty():
        raise PolicyError(
            "no retention rule given; prune would remove every snapshot",
            hint="pass --keep-last/--keep-daily/--keep-weekly/--keep-monthly",
        )
    for name in ("last", "daily", "weekly", "monthly"):
        if getattr(policy, name) < 0:
            raise PolicyError(f"--keep-{name} must not be negative")
    ordered = sorted(snapshots, key=lambda s: (s[1], s[0]), reverse=True)
    left = {
        "last": policy.last,
        "daily": policy.daily,
        "weekly": policy.weekly,
        "monthly": policy.monthly,
    }
    seen: dict[str, str | None] = {"daily": None, "weekly": None, "monthly": None}
    reasons: dict[str, list[str]] = {}
    for sid, time in ordered:
        why: list[str] = []
        if left["last"] > 0:
            left["last"] -= 1
            why.append("last")
        for rule, bucket in _buckets(parse_time(time)).items():
            if left[rule] > 0 and bucket != seen[rule]:
                seen[rule] = bucket
                left[rule] -= 1
                why.append(rule)
        reasons[sid] = why
    return reasons


def prune(repo_root: Path, policy: Policy, *, dry_run: bool) -> dict[str, Any]:
    repo = open_repo(repo_root)
    with repo.lock():
        sidecars = {}
        unreadable = []
        for sid in sidecar_ids(repo):
            try:
                sidecars[sid] = read_sidecar(repo.sidecar_path(sid))
            except PaiError as exc:
                unreadable.append(f"{sid}: {exc.diagnostics()}")
        if unreadable:
            raise PolicyError(
                f"refusing to prune: {len(unreadable)} sidecar(s) do not verify ({unreadable[0]})",
                hint="run `pai backup verify --all`; an unreadable sidecar may reference blobs",
            )
        reasons = plan([(sid, sc.time) for sid, sc in sidecars.items()], policy)
        remove = sorted(sid for sid, why in reasons.items() if not why)
        keep = sorted(sid for sid, why in reasons.items() if why)
        referenced = {b["name"] for sid in keep for b in sidecars[sid].blobs}
        present = _blob_names(repo)
        orphans = sorted(present - referenced)
        freed = sum(repo.blob_path(n).stat().st_size for n in orphans)
        freed += sum(int(sidecars[s].body["archive"]["size"]) for s in remove)
        if not dry_run:
            for sid in remove:
                repo.sidecar_path(sid).unlink()
                fsync_dir(repo.snapshots)
                repo.archive_path(sid).unlink(missing_ok=True)
            for name in orphans:
                repo.blob_path(name).unlink(missing_ok=True)
            catalog_remove(repo, remove, orphans)
            clean_stale(repo)
        return {
            "dry_run": dry_run,
            "keep": [{"snapshot": s, "reasons": reasons[s]} for s in keep],
            "remove": remove,
            "blobs_removed": orphans,
            "bytes_freed": freed,
        }


def _blob_names(repo: Repo) -> set[str]:
    if not repo.blobs.is_dir():
        return set()
    return {p.name[:-4] for p in repo.blobs.glob("??/*.age")}
