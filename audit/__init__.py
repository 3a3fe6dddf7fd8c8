"""The hash-chained audit log. Other parts of pai use only :func:`record_event`."""

from pai.audit.log import record_event

__all__ = ["record_event"]
