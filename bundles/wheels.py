"""The wheelhouse: every wheel an air-gapped node needs to ``pip install --no-index`` pai.

pip itself resolves the requirements for the *target* (its Python version, implementation
and platform tags, which may differ from the build machine), so only binary wheels are
accepted (``--only-binary=:all:``): an sdist would need a compiler on the node. pai's own
wheel is built from its source tree (or taken from the spec) and resolved with the rest, so
its dependencies come along.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import pai
from pai.errors import NotFoundError, PaiError

WHEELS_DIR = "wheels"


class WheelhouseError(PaiError):
    """pip could not build or download the wheels for the target."""

    code = "wheelhouse"


def source_tree() -> Path | None:
    """pai's source checkout (the folder with its pyproject.toml), when pai runs from one."""
    root = Path(pai.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "pai"' in pyproject.read_text(encoding="utf-8"):
        return root
    return None


def _pip(args: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "ERROR" in ln), lines[-1] if lines else "no output")
        raise WheelhouseError(f"{what} failed: {detail.strip()}")


def build_pai_wheel(out: Path, epoch: int) -> Path:
    """Build pai's own wheel from its source tree (timestamps from ``epoch``, repeatable)."""
    root = source_tree()
    if root is None:
        raise NotFoundError(
            "pai is not running from its source tree, so its wheel cannot be built here",
            hint="set pai_wheel in the spec's [wheels] table",
        )
    had_build = (root / "build").exists()
    with tempfile.TemporaryDirectory(prefix="pai-wheel-") as tmp:
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        _pip(
            ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp, str(root)],
            "building pai's wheel",
            env,
        )
        if not had_build:  # setuptools builds in-tree; leave the checkout as it was
            shutil.rmtree(root / "build", ignore_errors=True)
        built = sorted(Path(tmp).glob("pai-*.whl"))
        if not built:
            raise WheelhouseError("building pai's wheel produced no pai-*.whl")
        target = out / built[0].name
        shutil.copyfile(built[0], target)
    return target


def download(
    requirements: list[str],
    dest: Path,
    *,
    python: str,
    implementation: str,
    platforms: list[str],
    find_links: list[Path],
    no_index: bool,
) -> None:
    """``pip download`` binary wheels for the target into ``dest``."""
    if not requirements:
        return
    args = [
        "download",
        "-q",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        implementation,
        "--abi",
        f"{implementation}{python.replace('.', '')}",
    ]
    for tag in platforms:
        args += ["--platform", tag]
    for link in find_links:
        args += ["--find-links", str(link)]
    if no_index:
        args.append("--no-index")
    _pip([*args, *requirements], f"downloading wheels for Python {python} on {platforms[0]}")


def wheel_metadata(path: Path) -> dict[str, Any]:
    """Name, version and license of a wheel, from its METADATA (for the SBOM)."""
    try:
        with zipfile.ZipFile(path) as archive:
            meta_name = next(
                n
                for n in archive.namelist()
                if n.endswith(".dist-info/METADATA") and n.count("/") == 1
            )
            text = archive.read(meta_name).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, StopIteration, OSError) as exc:
        raise WheelhouseError(f"{path.name} is not a readable wheel: {exc}") from None
    headers = HeaderParser().parsestr(text)
    license_text = headers.get("License-Expression") or ""
    if not license_text:
        classifiers = [
            c.split("::")[-1].strip()
            for c in headers.get_all("Classifier") or []
            if c.startswith("License ::")
        ]
        short = (headers.get("License") or "").strip()
        license_text = classifiers[0] if classifiers else (short if len(short) < 80 else "")
    return {
        "name": str(headers.get("Name", "")),
        "version": str(headers.get("Version", "")),
        "license": license_text or None,
    }
