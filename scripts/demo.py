"""The main job end to end, as an operator would run it, in a scratch folder.

Two sites are simulated with two state folders: the connected build site (keys, bundle build)
and the air-gapped site (trust store, verify, install, serve, backup, audit). Every step is a
real `pai` command run as a subprocess; the demo stops at the first failure with its output.

Usage: ./dev.sh demo [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAI = [sys.executable, "-m", "pai.cli"]


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.build_home = workdir / "build-site"
        self.site_home = workdir / "air-gapped-site"

    def pai(self, *args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PAI_HOME": str(home)}
        shown = " ".join(["pai", *args])
        print(f"\n\033[1m$ {shown}\033[0m   (PAI_HOME={home.name})", flush=True)
        started = time.monotonic()
        proc = subprocess.run([*PAI, *args], env=env, text=True, capture_output=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        print(f"   [{time.monotonic() - started:.1f}s, exit {proc.returncode}]")
        if check and proc.returncode != 0:
            raise SystemExit(f"demo failed at: {shown}")
        return proc


def prepare_spec(demo: Demo, documents: int = 2000) -> Path:
    """The example spec beside a synthetic CRM data set (a subset, to keep the demo short)."""
    sys.path.insert(0, str(ROOT))
    from pai.crm.synthetic import write

    folder = demo.workdir / "spec"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "examples" / "demo-bundle.toml", folder / "demo-bundle.toml")
    data = write(folder / "data", total=documents)
    print(f"\nsynthetic CRM data: {documents} documents in {data}")
    return folder / "demo-bundle.toml"


def run(demo: Demo) -> None:
    build, site = demo.build_home, demo.site_home
    demo.pai("keys", "init", home=build)
    demo.pai("keys", "trust", "add", str(build / "keys" / "root.pub"), home=site)
    demo.pai("keys", "trust", "list", home=site)
    # Build site: the demo bundle (int8 MiniLM, FAISS index over CRM data, wheels, SBOM).
    spec = prepare_spec(demo)
    bundle = demo.workdir / "crm-demo-1.0.0.pai"
    demo.pai("bundle", "build", str(spec), "-o", str(bundle), home=build)
    # Air-gapped site: verify every byte, then look inside.
    demo.pai("bundle", "verify", str(bundle), home=site)
    demo.pai("bundle", "inspect", str(bundle), home=site)
    demo.pai("bundle", "inspect", "--sbom", str(bundle), home=site)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="Folder for the demo (default: a temp dir).")
    parser.add_argument("--keep", action="store_true", help="Keep the workdir afterwards.")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pai-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(Demo(workdir))
        print("\n\033[1;32mdemo passed\033[0m")
    finally:
        if args.keep or args.workdir:
            print(f"demo files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
