"""One exception per failed audit check (the codes are listed in docs/formats/audit.md).

Each verification failure names the first bad sequence number when there is one, so an
operator can go straight to the row (``--json`` prints it as ``first_bad_seq``).
"""

from __future__ import annotations

from pai.errors import PaiError


class AuditError(PaiError):
    """The audit log, a checkpoint, a segment or a proof does not check out."""

    code = "audit"

    def __init__(self, message: str, *, seq: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.seq = seq


class FormatVersionError(AuditError):
    """The audit database or a document has a version this pai does not know: refuse it."""

    code = "audit-version"


class CheckpointFileError(AuditError):
    """A line of the checkpoint file is not a checkpoint document."""

    code = "audit-checkpoint-file"


class CheckpointSignatureError(AuditError):
    """A checkpoint is not signed by the node key given (forged, altered or re-signed)."""

    code = "audit-checkpoint-signature"


class SegmentError(AuditError):
    """A sealed segment is missing, altered, or its manifest's signature does not verify."""

    code = "audit-segment"


class SequenceError(AuditError):
    """Sequence numbers are not 1, 2, 3, ... without gap or repeat (rows deleted or added)."""

    code = "audit-sequence"


class EventHashError(AuditError):
    """A row's hash is not sha256(prev_hash || canonical(event)): the row was modified."""

    code = "audit-hash"


class ChainLinkError(AuditError):
    """A row's prev_hash is not its predecessor's hash: rows were removed, added or moved."""

    code = "audit-chain"


class TimeOrderError(AuditError):
    """A row's time is earlier than its predecessor's."""

    code = "audit-time"


class TruncatedError(AuditError):
    """A signed checkpoint covers more events than the log holds: its tail was cut off."""

    code = "audit-truncated"


class CheckpointMismatchError(AuditError):
    """A signed checkpoint's head hash or Merkle root differs from the log's."""

    code = "audit-checkpoint-mismatch"


class ProofError(AuditError):
    """An inclusion proof is malformed or does not lead to its signed checkpoint."""

    code = "audit-proof"
