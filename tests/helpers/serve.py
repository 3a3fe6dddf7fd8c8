"""Start `pai serve` as a real subprocess on a free port and talk to it over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def write_bundle(folder: Path, name: str, version: str, components: dict[str, Path]) -> Path:
    """An installed bundle folder: ``manifest.json`` and copies of model/index folders.

    ``components`` maps ``"model:<name>"`` or ``"index:<name>"`` to a built folder.
    """
    entries: list[dict[str, Any]] = []
    for key, source in components.items():
        kind, cname = key.split(":", 1)
        rel = f"{kind}s/{cname}/"
        shutil.copytree(source, folder / rel)
        entries.append({"name": cname, "kind": kind, "path": rel, "meta": {}})
    manifest = {"name": name, "version": version, "components": entries}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def retag_model(source: Path, dest: Path, version: str) -> Path:
    """A copy of a model folder that calls itself another version (for reload and canary)."""
    shutil.copytree(source, dest)
    doc = json.loads((dest / "pai-model.json").read_text())
    doc["version"] = version
    (dest / "pai-model.json").write_text(json.dumps(doc))
    return dest


class Server:
    """A `pai serve` subprocess; its access log goes to a file (a full pipe would block it)."""

    def __init__(self, home: Path, *args: str, config: str = "") -> None:
        self.home = home
        self.log_path = home / "serve-stderr.log"
        env = {**os.environ, "PAI_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        env.pop("PAI_CONFIG", None)
        if config:
            home.mkdir(parents=True, exist_ok=True)
            (home / "config.toml").write_text(config)
        self.stderr = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pai.cli", "serve", "--json", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            text=True,
        )
        self.port = self._await_ready()
        self.url = f"http://127.0.0.1:{self.port}"

    def _await_ready(self) -> int:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise AssertionError(f"pai serve did not start: {self.log_path.read_text()}")
        event = json.loads(line)
        assert event["event"] == "ready", line
        return int(event["port"])

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def log_lines(self) -> list[dict[str, Any]]:
        self.stderr.flush()
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def terminate(self, timeout: float = 60) -> tuple[int, str]:
        """SIGTERM, wait, and return the exit code and what it printed on stdout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.stderr.close()
        return self.proc.returncode, out

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.terminate()


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")
