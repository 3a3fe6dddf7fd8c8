"""Small signed bundles for the provisioning tests: pai's wheelhouse plus what the node serves.

The wheelhouse holds pai's own wheel (built from this checkout) and its runtime dependencies
for the test hosts (Debian bookworm, Python 3.11: the same as here). The dependency wheels are
downloaded once and cached under ``/var/cache/pai-test-wheels`` keyed by the requirement list.

Until the node serves `pai serve` in these tests, the service command is Python's http.server
over the release's ``www/`` folder, whose ``readyz`` answers like `pai serve`'s /readyz
(``{"status": "ready", "bundles": [{"name", "version"}]}``): the playbooks, supervisor,
firewall and health checks run for real against it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
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
SERVE_COMMAND = (
    "{{ pai_current }}/bin/python -m http.server --bind 0.0.0.0 {{ pai_api_port }} "
    "--directory {{ pai_current }}/bundle/www"
)


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


def make_bundle(work: Path, version: str, wheel: Path) -> Path:
    """A signed bundle of ``version`` (keys from the current PAI_HOME)."""
    source = work / f"src-{version}"
    (source / "wheels").mkdir(parents=True)
    (source / "www").mkdir()
    for whl in dependency_wheels().glob("*.whl"):
        shutil.copy(whl, source / "wheels" / whl.name)
    shutil.copy(wheel, source / "wheels" / wheel.name)
    ready = {"status": "ready", "bundles": [{"name": BUNDLE_NAME, "version": version}]}
    (source / "www" / "readyz").write_text(json.dumps(ready))
    output = work / f"{BUNDLE_NAME}-{version}.bundle"
    pack_bundle(
        source,
        output,
        name=BUNDLE_NAME,
        version=version,
        signers=[keyring.load_signer(paths())],
    )
    shutil.rmtree(source)
    return output
