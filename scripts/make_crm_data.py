"""Write the synthetic CRM data set (deterministic; see pai.crm.synthetic).

Usage: .venv/bin/python scripts/make_crm_data.py OUT_DIR [--count 10000] [--seed 42]
       [--format jsonl|csv|parquet]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pai.crm.synthetic import write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--format", default="jsonl", choices=("jsonl", "csv", "parquet"))
    args = parser.parse_args()
    path = write(args.out, total=args.count, seed=args.seed, fmt=args.format)
    print(path)


if __name__ == "__main__":
    main()
