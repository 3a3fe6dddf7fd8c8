"""Small signed bundles for the provisioning tests: pai's wheelhouse plus a model to serve.

The wheelhouse holds pai's own wheel (built from this checkout) and its runtime dependencies
for the test hosts (Debian bookworm, Python 3.11: the same as here), never the control-node
extra (ansible, testinfra). The dependency wheels are downloaded once and cached under
``/var/cache/pai-test-wheels`` keyed by the requirement list.

The bundle also carries a tiny BERT model (tests/helpers/tiny_model.py, exported to ONNX), so
the hosts run the real `pai serve --bundle /opt/pai/current/bundle`, which loads it in a
second, and the health role's smoke embedding goes through the real model.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from pai import keyring
from pai.bundles.pack import pack_bundle
from pai.settings import paths

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/pai-test-wheels")
BUNDLE_NAME = "pai-node"
MODEL_NAME = "tiny"


def requirements() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return sorted(data["project"]["dependencies"])


def dependency_wheels() -> Path:
    """pai's runtime dependencies as wheels, downloaded once per requirement list."""
    reqs = requirements()
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:16]
    folder = CACHE / key
    if (folder / "complete").exists():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                 "-d", str(folder), *reqs],
                check=True, capture_output=True,
            )  # fmt: skip
            (folder / "complete").write_text("\n".join(reqs))
    return folder


def pai_wheel(dest: Path) -> Path:
    """pai's own wheel, built from this checkout."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dest), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    return next(dest.glob("pai-*.whl"))


def tiny_model(dest: Path) -> Path:
    """A tiny BERT exported for pai (fp32 ONNX, tokenizer, pooling): loads in about a second."""
    from pai.bundles.models import ModelSpec, build_model
    from tests.helpers.tiny_model import make_tiny_model

    source = make_tiny_model(dest / "src")
    build_model(
        ModelSpec(name=MODEL_NAME, source=source, dtype="fp32", version="1.0.0"), dest / "m"
    )
    return dest / "m"


def make_bundle(work: Path, version: str, wheel: Path, model: Path) -> Path:
    """A signed bundle of ``version`` (keys from the current PAI_HOME): wheels and ``model``."""
    source = work / f"src-{version}"
    (source / "wheels").mkdir(parents=True)
    for whl in dependency_wheels().glob("*.whl"):
        shutil.copy(whl, source / "wheels" / whl.name)
    shutil.copy(wheel, source / "wheels" / wheel.name)
    shutil.copytree(model, source / "models" / MODEL_NAME)
    output = work / f"{BUNDLE_NAME}-{version}.bundle"
    pack_bundle(
        source,
        output,
        name=BUNDLE_NAME,
        version=version,
        signers=[keyring.load_signer(paths())],
        components=[
            {"name": "wheels", "kind": "wheelhouse", "path": "wheels/"},
            {"name": MODEL_NAME, "kind": "model", "path": f"models/{MODEL_NAME}/"},
        ],
    )
    shutil.rmtree(source)
    return output
