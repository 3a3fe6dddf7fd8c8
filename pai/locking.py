"""Inter-process locks on lock files (``fcntl.flock``).

DuckDB lets one process write a database at a time, and several pai processes (the daemon, the
CLI, cron) share state; each short write takes the database's lock file first. A flock is
released by the kernel when its holder dies, so a SIGKILLed writer never wedges the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from pai.errors import StateError


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float = 60.0, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive (or shared) lock on ``path`` for the block; wait up to ``timeout``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + timeout
    delay = 0.001
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StateError(
                        f"{path} is locked by another pai process",
                        hint="wait for it to finish, or find it with `fuser`",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)
