"""``python -m bench``: run every benchmark in this folder, one after the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

failed = 0
for script in sorted(Path(__file__).resolve().parent.glob("*.py")):
    if script.name.startswith("_"):
        continue
    print(f"\n== {script.name}", flush=True)
    failed |= subprocess.run([sys.executable, str(script)]).returncode != 0
sys.exit(failed)
