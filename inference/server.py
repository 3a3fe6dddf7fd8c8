"""Running the daemon: the pid file, the listening socket, uvicorn, and the signals.

* ``$PAI_HOME/serve.pid`` holds the daemon's pid under an exclusive ``flock`` for as long as it
  runs; other commands (``pai backup``) test the lock to know a daemon is up, and a second
  ``pai serve`` on the same state folder refuses to start.
* The socket is bound before the models load, so ``--port 0`` works: the real address is in
  the ``ready`` line printed on stdout (one JSON object) once the models are warm.
* SIGTERM / SIGINT: stop accepting, finish every request already accepted (up to
  ``drain_timeout_s``), flush the audit log, exit 0. SIGHUP: reload the bundles in place.
* ``$PAI_HOME/serve/state.json`` says what is being served, for `pai doctor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import uvicorn

from pai.errors import StateError, UsageError
from pai.fsutil import atomic_write_text
from pai.inference.app import Daemon, build_app
from pai.inference.config import ServeConfig
from pai.inference.registry import check_aliases, load_components
from pai.settings import Paths
from pai.timeutil import format_time, utcnow


def pid_file(p: Paths) -> Path:
    return p.home / "serve.pid"


def state_file(p: Paths) -> Path:
    return p.home / "serve" / "state.json"


@contextlib.contextmanager
def hold_pid_file(p: Paths) -> Iterator[None]:
    """Hold ``serve.pid`` locked with our pid in it; refuse if another daemon holds it."""
    path = pid_file(p.ensure())
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateError(
            f"pai serve is already running on {p.home} (pid {other})",
            hint="stop it first, or use another --home",
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _open_access_log(path: str) -> IO[str]:
    try:
        return open(path, "a")  # closed by the caller's exit stack
    except OSError as exc:
        raise UsageError(f"cannot open the access log {path}: {exc.strerror}") from None


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful shutdown (killing the process with -15);
    a drained daemon exits 0 instead, after its last words."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def _write_state(p: Paths, daemon: Daemon, host: str, port: int) -> None:
    gen = daemon.generation
    doc: dict[str, Any] = {
        "pid": os.getpid(),
        "url": f"http://{host}:{port}",
        "updated": format_time(utcnow()),
        **(gen.describe() if gen else {}),
    }
    atomic_write_text(state_file(p), json.dumps(doc, indent=2, sort_keys=True) + "\n")


def serve(p: Paths, config: ServeConfig, *, json_lines: bool = False) -> None:
    """Run until SIGTERM/SIGINT; returns after a clean drain.

    stdout gets one line when ready and one when stopped: JSON objects with ``json_lines``
    (for scripts and tests), else sentences; access logs go to stderr or ``access_log``.
    """
    if not config.bundles:
        raise UsageError("nothing to serve", hint="pass --bundle PATH or set [serve] bundles")
    with hold_pid_file(p):
        # Bound before the (slow) model load so that a taken port fails at once; closed on
        # every way out, a refused bundle included.
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(bind(config.host, config.port))
            stack.callback(state_file(p).unlink, missing_ok=True)
            log = sys.stderr
            if config.access_log != "-":
                log = stack.enter_context(_open_access_log(config.access_log))
            daemon = _run(p, config, sock, log, json_lines)
        if not daemon.ready and daemon.generation is None:
            raise StateError("the daemon failed to start; see the lines above")
        _say(json_lines, {"event": "stopped", "pid": os.getpid()}, "pai serve: drained and stopped")


def _run(
    p: Paths, config: ServeConfig, sock: socket.socket, log: IO[str], json_lines: bool
) -> Daemon:
    """Load the bundles, then serve on ``sock`` until a signal; returns the stopped daemon."""
    host, port = sock.getsockname()[:2]
    daemon = Daemon(p, config, log=log)
    daemon.preloaded = load_components(p, config, list(config.bundles))
    check_aliases(config, daemon.preloaded)
    server = _Server(
        uvicorn.Config(
            build_app(daemon),
            log_level="warning",
            access_log=False,
            lifespan="on",
            loop=_loop(),
            http="httptools",
            timeout_graceful_shutdown=int(config.drain_timeout_s) or None,
            timeout_keep_alive=30,
            backlog=2048,
        )
    )

    def ready() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(_sighup(daemon)))
        _write_state(p, daemon, host, port)
        daemon.after_reload = lambda: _write_state(p, daemon, host, port)
        event = {"event": "ready", "host": host, "port": port, "pid": os.getpid()}
        gen = daemon.generation
        models = ", ".join(sorted(gen.models)) if gen else ""
        _say(
            json_lines,
            event,
            f"pai serve: ready on http://{host}:{port} (pid {os.getpid()}); models {models}",
        )

    daemon.on_ready = ready
    server.run(sockets=[sock])
    return daemon


def _say(json_lines: bool, event: dict[str, Any], text: str) -> None:
    print(json.dumps(event) if json_lines else text, flush=True)


async def _sighup(daemon: Daemon) -> None:
    try:
        await daemon.reload()
    except Exception as exc:  # a bad new bundle keeps the old generation serving
        sys.stderr.write(json.dumps({"event": "reload_failed", "error": str(exc)}) + "\n")


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"
