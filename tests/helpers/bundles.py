"""Payload folders and pack invocations shared by the bundle tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def make_payload(folder: Path) -> Path:
    """A small folder shaped like a real bundle: a model, an index, a script, nested files."""
    (folder / "models" / "minilm").mkdir(parents=True)
    (folder / "models" / "minilm" / "model.onnx").write_bytes(os.urandom(70_000))
    (folder / "models" / "minilm" / "tokenizer.json").write_text('{"vocab": {}}')
    (folder / "indexes" / "kb").mkdir(parents=True)
    (folder / "indexes" / "kb" / "index.faiss").write_bytes(bytes(range(256)) * 40)
    (folder / "wheels").mkdir()
    (folder / "wheels" / "empty.txt").write_bytes(b"")
    script = folder / "install.sh"
    script.write_text("#!/bin/sh\necho ok\n")
    script.chmod(0o755)
    return folder


def pack(
    cli: Callable[..., Any], source: Path, out: Path, version: str = "1.0.0", *extra: str
) -> Any:
    return cli(
        "bundle", "pack", str(source), "--name", "crm-ai", "--version", version,
        "-o", str(out), "--component", "minilm=model:models/minilm/",
        "--component", "kb=index:indexes/kb/", *extra,
    )  # fmt: skip
