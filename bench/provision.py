"""Install time on 2, 4 and 8 real SSH test hosts (forks = hosts), and the no-change re-run.

Runs `pai install` (its own process: ansible patches ``sys.intern``) against hosts made as in
the integration tests (needs root and debootstrap), each ending with the real `pai serve` and
its smoke embedding. Prints seconds and the ratio to the 2-host time measured in the same run.
Usage: .venv/bin/python bench/provision.py [--hosts 2,4,8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from tests.helpers.cli import run_cli, run_cli_process
from tests.integration import hosts, nodebundle


def timed_install(bundle: Path, inventory: Path, forks: int) -> float:
    start = time.perf_counter()
    args = ["install", str(bundle), "-i", str(inventory), "--forks", str(forks), "--json"]
    result = run_cli_process(*args)
    elapsed = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(f"install failed: {result.output[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", default="2,4,8")
    counts = [int(n) for n in parser.parse_args().hosts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="pai-bench-provision-"))
    os.environ["PAI_HOME"] = str(work / "home")
    assert run_cli("keys", "init").exit_code == 0
    assert run_cli("keys", "trust", "add", str(work / "home/keys/root.pub")).exit_code == 0
    model = nodebundle.tiny_model(work / "model")
    bundle = nodebundle.make_bundle(work, "1.0.0", nodebundle.pai_wheel(work / "wheel"), model)
    rows: list[tuple[int, float, float]] = []
    for n in counts:
        with hosts.lab(n) as lab:
            inventory = lab.inventory(work / f"hosts-{n}.ini")
            first = timed_install(bundle, inventory, n)
            again = timed_install(bundle, inventory, n)
        rows.append((n, first, again))
        print(f"{n} hosts: install {first:.1f} s, no-change {again:.1f} s", file=sys.stderr)
    base_first, base_again = rows[0][1], rows[0][2]
    table = Table(title=f"pai install on test hosts (forks = hosts, {os.cpu_count()} CPUs)")
    for col in ("hosts", "install s", "x 2-host", "no-change s", "x 2-host", "no-change/install"):
        table.add_column(col, justify="right")
    for n, first, again in rows:
        table.add_row(
            str(n),
            f"{first:.1f}",
            f"{first / base_first:.2f}",
            f"{again:.1f}",
            f"{again / base_again:.2f}",
            f"{again / first:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
