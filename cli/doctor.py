"""`pai doctor`: GPUs, onnxruntime providers, FAISS build, bundle in use, what is missing."""

from __future__ import annotations

from typing import Any

from pai.cli.common import JSON_OPTION
from pai.cli.output import console, emit, set_json, table
from pai.inference.doctor import diagnose
from pai.settings import paths


def _human(d: dict[str, Any]) -> None:
    if d["gpus"]:
        table(
            "GPUs",
            ["#", "name", "memory used / total", "utilisation", "driver"],
            [
                [
                    g["index"],
                    g["name"],
                    f"{g['memory_used'] >> 20} / {g['memory_total'] >> 20} MiB",
                    f"{g['utilization']} %",
                    g["driver"],
                ]
                for g in d["gpus"]
            ],
        )
    ort = d["onnxruntime"]
    console.print(
        f"[bold]onnxruntime[/]: {ort.get('version', 'missing')} "
        f"providers {', '.join(ort.get('providers', [])) or '-'}"
    )
    faiss = d["faiss"]
    console.print(
        f"[bold]faiss[/]: {faiss.get('version', 'missing')} "
        f"({' '.join(faiss.get('compile_options', []))}; GPUs {faiss.get('gpus', 0)})"
    )
    console.print(f"[bold]JWT keys trusted[/]: {len(d['jwt_trusted_keys'])}")
    serving = d["serving"]
    if serving:
        console.print(
            f"[bold]serving[/]: pid {serving['pid']} at {serving['url']}: "
            f"{', '.join(serving.get('models', []))}"
        )
        for bundle in serving.get("bundles", []):
            console.print(
                f"  bundle {bundle.get('name')} {bundle.get('version')} ({bundle.get('path')})"
            )
    for line in d["missing"]:
        console.print(f"[yellow]missing:[/] {line}")


def doctor(json_out: bool = JSON_OPTION) -> None:
    """Check what this node can run: GPUs, providers, FAISS, keys, the running daemon."""
    set_json(json_out)
    emit(diagnose(paths()), _human)
