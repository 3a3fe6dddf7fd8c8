"""Benchmark: `pai backup` against `restic` and a `tar | zstd | age` pipeline on the same state.

Builds a state folder of about 1.1 GiB (bundles and model files, a FAISS-sized index, a JSON
document store, an audit database, keys and config), then times, in one run and on one machine:

* the first backup, and an unchanged second backup (with the new bytes each adds);
* a full restore of the latest snapshot.

Ratios are throughput relative to the baseline (> 1.0 means pai is faster). Page caches are
warm for every tool alike (the state is read once before timing). Usage:

    .venv/bin/python bench/backup.py [--size-mib 1100] [--repeat 3] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pai.audit import pending, record_events
from pai.settings import paths

PAI = [sys.executable, "-m", "pai.cli"]
ROOT = Path(__file__).resolve().parent.parent
RESTIC_PASSWORD = "bench-password"


def build_state(home: Path, size_mib: int) -> int:
    """A node's state: mostly large immutable files, some compressible text, a database."""
    rng = os.urandom
    (home / "bundles" / "crm").mkdir(parents=True)
    (home / "indexes").mkdir()
    (home / "docs").mkdir()
    (home / "audit").mkdir()
    big = max(size_mib - 150, 64)
    for i, share in enumerate((0.5, 0.3, 0.2)):
        path = home / "bundles" / "crm" / f"model-part-{i}.onnx"
        with path.open("wb") as out:
            for _ in range(int(big * share)):
                out.write(rng(1 << 20))
    with (home / "indexes" / "docs.faiss").open("wb") as out:
        for _ in range(100):
            out.write(rng(1 << 20))
    words = [
        w.encode()
        for w in ["account", "contact", "renewal", "invoice", "churn", "upsell", "meeting"]
    ]
    with (home / "docs" / "store.jsonl").open("wb") as out:
        line = b'{"id":%d,"text":"' + b" ".join(words * 8) + b'"}\n'
        for i in range(90_000):
            out.write(line % i)
    # A real audit log: 200k events appended through the audit package, in batches.
    site = paths(home)
    for batch in range(20):
        events = [
            pending("serve.embed", resource=f"index:docs:{batch * 10_000 + i}", actor="serve")
            for i in range(10_000)
        ]
        record_events(events, home=site)
    (home / "config.toml").write_text("[backup]\n")
    for small in range(200):
        (home / "docs" / f"note-{small}.txt").write_bytes(rng(2000))
    return sum(p.stat().st_size for p in home.rglob("*") if p.is_file())


CPU: list[float] = []  # CPU seconds (user + sys, all child processes) of each run()


def run(cmd: list[str] | str, env: dict[str, str], shell: bool = False) -> float:
    """Wall seconds of one command; its CPU seconds are appended to :data:`CPU`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, shell=shell, capture_output=True, text=True)
    took = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"failed: {cmd}\n{done.stdout}\n{done.stderr}")
    return took


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1100)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the short operations")
    args = parser.parse_args()
    for tool in ("restic", "age", "age-keygen", "zstd", "tar"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (./dev.sh setup installs it)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pai-bench-backup-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench(work, args.size_mib, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, size_mib: int, repeat: int) -> None:
    home = work / "state"
    total = build_state(home, size_mib)
    env = {**os.environ, "PAI_HOME": str(home), "RESTIC_PASSWORD": RESTIC_PASSWORD}
    # An installed pai has its bytecode compiled; an editable checkout under
    # PYTHONDONTWRITEBYTECODE would recompile every module on every run.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    packages = [str(ROOT / d) for d in ("pai", "cli", "backup", "audit") if (ROOT / d).is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=False)
    run([*PAI, "--version"], env)
    identity = work / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = next(
        ln.split()[-1] for ln in identity.read_text().splitlines() if "public key" in ln
    )
    run(f"cat $(find {home} -type f) > /dev/null", env, shell=True)  # warm caches for everyone

    pai_repo, restic_repo, tar_dir = work / "pai-repo", work / "restic-repo", work / "tar"
    tar_dir.mkdir()
    run(["restic", "init", "--repo", str(restic_repo)], env)
    t: dict[str, float] = {}
    size: dict[str, int] = {}
    cpu: dict[str, float] = {}

    create = [*PAI, "backup", "create", "--repo", str(pai_repo), "-r", recipient]
    restic_backup = ["restic", "backup", "--repo", str(restic_repo), "-q", str(home)]
    t["pai first"] = run(create, env)
    cpu["pai first"] = CPU[-1]
    size["pai first"] = du(pai_repo)
    t["restic first"] = run(restic_backup, env)
    cpu["restic first"] = CPU[-1]
    size["restic first"] = du(restic_repo)
    pipeline = (
        f"tar -C {home} -cf - . | zstd -q -1 -T0 | age -r {recipient} > {tar_dir}/%s.tar.zst.age"
    )
    t["tar first"] = run(pipeline % "one", env, shell=True)
    cpu["tar first"] = CPU[-1]
    size["tar first"] = du(tar_dir)
    # The second backup of an unchanged node (pai's own create appends audit events, so its
    # audit database did change: that is real life, and it is in pai's new bytes). Short runs
    # on a shared machine are noisy: each tool runs `repeat` times, interleaved; medians count.
    seconds: dict[str, list[float]] = {"pai": [], "restic": [], "tar": []}
    cpus: dict[str, list[float]] = {"pai": [], "restic": [], "tar": []}
    for i in range(repeat):
        before = {"pai": du(pai_repo), "restic": du(restic_repo), "tar": du(tar_dir)}
        seconds["pai"].append(run(create, env))
        cpus["pai"].append(CPU[-1])
        seconds["restic"].append(run(restic_backup, env))
        cpus["restic"].append(CPU[-1])
        seconds["tar"].append(run(pipeline % f"again-{i}", env, shell=True))
        cpus["tar"].append(CPU[-1])
        if i == 0:
            size["pai second"] = du(pai_repo) - before["pai"]
            size["restic second"] = du(restic_repo) - before["restic"]
            size["tar second"] = du(tar_dir) - before["tar"]
    for tool, values in seconds.items():
        t[f"{tool} second"] = statistics.median(values)
        cpu[f"{tool} second"] = statistics.median(cpus[tool])

    restores = {
        "pai": [
            *PAI,
            "backup",
            "restore",
            "latest",
            "--repo",
            str(pai_repo),
            "-i",
            str(identity),
            "--target",
            str(work / "pai-restored"),
        ],
        "restic": [
            "restic",
            "restore",
            "latest",
            "--repo",
            str(restic_repo),
            "-q",
            "--target",
            str(work / "restic-restored"),
        ],
        "tar": f"mkdir {work / 'tar-restored'} && age -d -i {identity} "
        f"{tar_dir}/one.tar.zst.age | zstd -q -d | tar -C {work / 'tar-restored'} -xf -",
    }
    took: dict[str, list[float]] = {"pai": [], "restic": [], "tar": []}
    for _ in range(repeat):
        for tool, cmd in restores.items():
            for leftover in work.glob(f"{tool}-restored*"):
                shutil.rmtree(leftover)
            took[tool].append(run(cmd, env, shell=isinstance(cmd, str)))
            cpus[tool].append(CPU[-1])
    for tool, values in took.items():
        t[f"{tool} restore"] = statistics.median(values)
        cpu[f"{tool} restore"] = statistics.median(cpus[tool][-repeat:])
    print(f"medians of {repeat} interleaved runs for the second backup and the restore")
    report(total, t, size, cpu)


def report(total: int, t: dict[str, float], size: dict[str, int], cpu: dict[str, float]) -> None:
    mib = total / (1 << 20)
    print(f"\nstate: {mib:.0f} MiB, {os.cpu_count()} CPUs; warm page cache\n")
    header = f"{'operation':<16}{'pai s':>8}{'MiB/s':>8}{'restic s':>10}{'vs restic':>11}"
    header += f"{'tar|zstd|age s':>16}{'vs tar':>8}"
    print(header)
    print("-" * len(header))
    for op in ("first", "second", "restore"):
        p, r, z = t[f"pai {op}"], t[f"restic {op}"], t[f"tar {op}"]
        print(
            f"{op + (' backup' if op != 'restore' else ''):<16}{p:>8.2f}{mib / p:>8.0f}"
            f"{r:>10.2f}{r / p:>11.2f}{z:>16.2f}{z / p:>8.2f}"
        )
    print("\nCPU seconds (user + sys; less sensitive to a busy machine than wall time)")
    for op in ("first", "second", "restore"):
        p, r, z = cpu[f"pai {op}"], cpu[f"restic {op}"], cpu[f"tar {op}"]
        print(
            f"  {op:<8} pai {p:>6.2f}   restic {r:>6.2f} (x{r / p:.2f})"
            f"   tar|zstd|age {z:>6.2f} (x{z / p:.2f})"
        )
    print("\nnew bytes written to the repository (MiB)")
    for op in ("first", "second"):
        print(
            f"  {op:<8} pai {size['pai ' + op] / (1 << 20):>8.1f}"
            f"   restic {size['restic ' + op] / (1 << 20):>8.1f}"
            f"   tar|zstd|age {size['tar ' + op] / (1 << 20):>8.1f}"
        )
    print("\nvs = baseline time / pai time (throughput ratio; > 1.0: pai is faster)")


if __name__ == "__main__":
    main()
