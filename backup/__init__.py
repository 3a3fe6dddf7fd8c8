"""Encrypted backups and disaster recovery of pai's state (docs/formats/backup.md).

Public entry points: :func:`create`, :func:`verify_many`, :func:`restore`, :func:`prune`,
:func:`copy`, :func:`reindex`, :func:`drill`, :func:`run_job`; the age format lives in
:mod:`pai.backup.age`.
"""

from pai.backup.copy import copy
from pai.backup.create import create
from pai.backup.drill import drill, verify_audit_chain
from pai.backup.prune import Policy, prune
from pai.backup.repo import open_repo, reindex
from pai.backup.restore import daemon_running, restore
from pai.backup.schedule import run_job
from pai.backup.verify import verify_many

__all__ = [
    "Policy",
    "copy",
    "create",
    "daemon_running",
    "drill",
    "open_repo",
    "prune",
    "reindex",
    "restore",
    "run_job",
    "verify_audit_chain",
    "verify_many",
]
