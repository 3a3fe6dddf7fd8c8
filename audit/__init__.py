"""The hash-chained audit log.

Other parts of pai use :func:`record_event` (one event, durable on return) or
:class:`AuditBatcher` (many events from a hot path). Importing this package loads neither
DuckDB nor the export machinery; they are imported when first used.
"""

from pai.audit.batcher import AuditBatcher
from pai.audit.log import PendingEvent, pending, record_event, record_events

__all__ = ["AuditBatcher", "PendingEvent", "pending", "record_event", "record_events"]
