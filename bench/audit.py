"""Audit log benchmark: append, durable latency and verify, each against a same-run baseline.

    .venv/bin/python bench/audit.py [--events 100000] [--batch 10000] [--singles 200]

Baselines: plain DuckDB inserts of the same rows (same lock, same connection handling, same
columnar insert) without hashing or head lookup; and hashlib alone over the same canonical
bytes, chained, for verification.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pai.audit import pending, record_event, record_events  # noqa: E402
from pai.audit.chain import body_bytes  # noqa: E402
from pai.audit.store import FIELDS, SCHEMA, insert, open_log  # noqa: E402
from pai.audit.verify import snapshot, verify_log  # noqa: E402
from pai.db import connect  # noqa: E402
from pai.settings import paths  # noqa: E402


def events(n: int, offset: int = 0) -> list[Any]:
    actors = ("svc:inference", "alice", "cron:backup")
    return [
        pending(
            "infer.embed" if i % 4 else "api.auth",
            resource="model:minilm",
            actor=actors[i % 3],
            outcome="ok" if i % 20 else "denied",
            details={"request": f"{offset + i:032x}", "tokens": i % 512},
        )
        for i in range(n)
    ]


def plain_append(db: Path, batch: list[Any], start: int) -> None:
    """What an unchained log would do: encode the same rows and insert them."""
    with connect(db, schema=SCHEMA) as con:
        cols: dict[str, list[Any]] = {name: [] for name in FIELDS}
        for i, e in enumerate(batch):
            cols["seq"].append(start + i)
            cols["time"].append("2026-11-26T12:00:00Z")
            cols["actor"].append(e.actor)
            cols["action"].append(e.action)
            cols["resource"].append(e.resource)
            cols["outcome"].append(e.outcome)
            cols["details"].append(e.details)
            cols["prev_hash"].append("")
            cols["hash"].append("")
        insert(con, cols)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pai-bench-audit-"))
    os.environ["PAI_HOME"] = str(work / "home")
    p = paths()
    batches = [
        events(args.batch, k) for k in range(0, args.events, args.batch)
    ]  # encoding (pending) is the caller's cost in both runs and is done up front

    plain_db = work / "plain.duckdb"
    t, c = time.perf_counter(), time.process_time()
    for k, batch in enumerate(batches):
        plain_append(plain_db, batch, k * args.batch + 1)
    plain_s, plain_cpu = time.perf_counter() - t, time.process_time() - c

    t, c = time.perf_counter(), time.process_time()
    for batch in batches:
        record_events(batch, home=p)
    chain_s, chain_cpu = time.perf_counter() - t, time.process_time() - c

    one = events(1)[0]
    plain_lat, chain_lat = [], []
    for i in range(args.singles):
        t = time.perf_counter()
        plain_append(plain_db, [one], args.events + i + 1)
        plain_lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        record_event(one.action, resource=one.resource, actor=one.actor, details={"i": i}, home=p)
        chain_lat.append(time.perf_counter() - t)

    snap = snapshot(p)
    bodies = [
        body_bytes(e.seq, e.time, e.actor, e.action, e.resource, e.outcome, e.details)
        for e in snap.hot
    ]
    t, c = time.perf_counter(), time.process_time()
    prev = bytes(32)
    sha = hashlib.sha256
    for body in bodies:
        prev = sha(prev + body).digest()
    hash_s, hash_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    result = verify_log(p)
    verify_s, verify_cpu = time.perf_counter() - t, time.process_time() - c
    n = result.events
    t = time.perf_counter()
    with open_log(p, write=False):
        pass
    open_s = time.perf_counter() - t

    def q(values: list[float], frac: float) -> float:
        return sorted(values)[min(len(values) - 1, int(len(values) * frac))] * 1000

    rows = [
        (
            "batched append (events/s)",
            args.events / chain_s,
            args.events / plain_s,
            plain_s and chain_s / plain_s,
            ">= 50,000/s; cost <= 2x",
        ),
        (
            "durable single append p50 (ms)",
            q(chain_lat, 0.5),
            q(plain_lat, 0.5),
            q(chain_lat, 0.5) / q(plain_lat, 0.5),
            "-",
        ),
        (
            "durable single append p99 (ms)",
            q(chain_lat, 0.99),
            q(plain_lat, 0.99),
            q(chain_lat, 0.99) / q(plain_lat, 0.99),
            "-",
        ),
        ("verify (events/s)", n / verify_s, n / hash_s, verify_s / hash_s, ">= 200,000/s"),
        (
            "batched append (events/CPU-s)",
            args.events / chain_cpu,
            args.events / plain_cpu,
            chain_cpu / plain_cpu,
            "same, in CPU time",
        ),
        (
            "verify (events/CPU-s)",
            n / verify_cpu,
            n / hash_cpu,
            verify_cpu / hash_cpu,
            "same, in CPU time",
        ),
    ]
    print(
        f"audit benchmark: {args.events} events in batches of {args.batch}, "
        f"{args.singles} single appends, verify of {n} events (incl. {result.checkpoints} "
        f"checkpoints, Merkle roots); one read-only open costs {open_s * 1000:.1f} ms"
    )
    print(f"{'measurement':34} {'pai':>14} {'baseline':>14} {'ratio':>7}  target")
    for name, value, base, ratio, target in rows:
        print(f"{name:34} {value:14,.1f} {base:14,.1f} {ratio:7.2f}  {target}")
    print(
        "baselines: plain DuckDB insert of the same rows (no hash, no head read); "
        "verify vs hashlib over the same canonical bytes"
    )
    print(
        f"single-append spread: {statistics.pstdev(chain_lat) * 1000:.1f} ms stdev; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (CPU-time rows are "
        "less sensitive to other processes)"
    )


if __name__ == "__main__":
    main()
