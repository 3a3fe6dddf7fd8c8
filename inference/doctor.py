"""`pai doctor`: what this node can run and what is missing, checked without side effects."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any

from pai.inference.auth import jwt_dir
from pai.inference.gpu import faiss_gpus, gpu_readings, nvml_status
from pai.settings import Paths


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"installed": False, "providers": []}
    return {
        "installed": True,
        "version": ort.__version__,
        "device": ort.get_device(),
        "providers": list(ort.get_available_providers()),
    }


def _faiss() -> dict[str, Any]:
    try:
        import faiss
    except ImportError:
        return {"installed": False}
    options = getattr(faiss, "get_compile_options", lambda: "")()
    return {
        "installed": True,
        "version": getattr(faiss, "__version__", "?"),
        "compile_options": str(options).split(),
        "gpus": faiss_gpus(),
    }


def daemon_running(p: Paths) -> int | None:
    """The pid of a `pai serve` holding this state folder's pid file, else None."""
    path = p.home / "serve.pid"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None


def _serving(p: Paths) -> dict[str, Any] | None:
    path = p.home / "serve" / "state.json"
    if daemon_running(p) is None or not path.is_file():
        return None
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc


def diagnose(p: Paths) -> dict[str, Any]:
    """Everything `pai doctor` reports, and a list of what is missing, worst first."""
    gpus = gpu_readings()
    ort = _onnxruntime()
    faiss = _faiss()
    trusted = jwt_dir(p) / "trusted"
    keys = sorted(e.name for e in trusted.iterdir()) if trusted.is_dir() else []
    serving = _serving(p)
    missing: list[str] = []
    if not ort["installed"]:
        missing.append("onnxruntime is not installed: no model can run")
    if not faiss["installed"]:
        missing.append("faiss is not installed: no index can be searched")
    if not gpus:
        missing.append(f"no GPU visible ({nvml_status()}); inference runs on CPU")
    elif "CUDAExecutionProvider" not in ort.get("providers", []):
        missing.append(
            "a GPU is present but onnxruntime has no CUDAExecutionProvider "
            "(install the `gpu` extra: onnxruntime-gpu)"
        )
    if gpus and faiss.get("installed") and not faiss.get("gpus"):
        missing.append("a GPU is present but FAISS is a CPU build (install faiss-gpu)")
    if not keys:
        missing.append(
            "no trusted JWT keys: every API request will get 401 (run `pai token keygen`)"
        )
    if serving is None:
        missing.append("no `pai serve` is running on this state folder")
    return {
        "home": str(p.home),
        "gpus": gpus,
        "onnxruntime": ort,
        "faiss": faiss,
        "jwt_trusted_keys": keys,
        "serving": serving,
        "missing": missing,
        "python": sys.version.split()[0],
        "config": str(p.config_file) if Path(p.config_file).exists() else None,
    }
