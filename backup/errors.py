"""Backup failures, one class per failed check (docs/formats/backup.md, "Verification order")."""

from __future__ import annotations

from pai.errors import NotFoundError, PaiError, StateError, UsageError


class BackupError(PaiError):
    """A backup operation failed; nothing half-written was left behind."""

    code = "backup"


class RepositoryError(BackupError):
    """The folder is not a pai backup repository, or of an unknown version."""

    code = "backup-repository"


class UnsupportedVersionError(RepositoryError):
    """A repository, sidecar or manifest declares a version this pai does not know: refuse."""

    code = "backup-version"


class SnapshotNotFoundError(NotFoundError):
    """No snapshot matches the given id (or the repository holds none for ``latest``)."""

    code = "backup-not-found"


class SidecarError(BackupError):
    """A sidecar manifest is unreadable, malformed or not canonical."""

    code = "backup-sidecar"


class SidecarSignatureError(BackupError):
    """A sidecar's signature does not verify: it was altered or signed by another key."""

    code = "backup-signature"


class MissingFileError(BackupError):
    """A file a sidecar or manifest names is absent from the repository."""

    code = "backup-missing"


class CiphertextMismatchError(BackupError):
    """An encrypted file's size or sha256 differs from its sidecar: it was altered."""

    code = "backup-ciphertext"


class ContentMismatchError(BackupError):
    """A decrypted file's size or sha256 differs from the snapshot manifest."""

    code = "backup-content"


class ManifestError(BackupError):
    """The manifest inside a snapshot is missing, malformed, or names an unsafe path."""

    code = "backup-manifest"


class VerificationFailed(BackupError):
    """One or more snapshots failed verification (the message names each failure)."""

    code = "backup-verify"


class DaemonRunningError(StateError):
    """The target state folder belongs to a running ``pai serve``; restoring over it would
    corrupt the daemon's open databases."""

    code = "daemon-running"


class BusyError(StateError):
    """Another backup run holds the repository's or schedule's lock."""

    code = "backup-busy"


class PolicyError(UsageError):
    """A retention policy or a cron schedule is missing or malformed."""

    code = "backup-policy"
