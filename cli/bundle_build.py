"""``pai bundle build`` and ``pai bundle apply-delta``, registered on the ``pai bundle`` group.

They live apart from :mod:`pai.cli.bundle` (pack, verify, inspect, ...) because they drive
the build pipeline (models, indexes, wheels, SBOM, deltas); the group is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pai.audit import record_event
from pai.bundles.build import build_bundle
from pai.bundles.delta import apply_delta
from pai.bundles.sbom import read_sbom
from pai.bundles.spec import load_spec
from pai.cli.bundle import KEY_OPTION, TRUST_OPTION, _human_size, _signers, _store, app
from pai.cli.common import JSON_OPTION, PASSPHRASE_FILE_OPTION
from pai.cli.output import byte_progress, console, emit, err_console, json_mode, set_json, table
from pai.errors import UsageError


def _step(message: str) -> None:
    if not json_mode():
        err_console.print(f"[dim]•[/] {message}")


@app.command("build")
def build(
    spec_file: Path = typer.Argument(
        ..., help="Bundle spec (TOML); see docs/formats/bundle-spec.md."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle file to write."),
    base: Path | None = typer.Option(
        None, "--base", help="Older bundle of the same name: write a delta against it."
    ),
    expires: str | None = typer.Option(
        None, "--expires", help="Override the spec's expiry: a duration (90d) or a date."
    ),
    keys: list[Path] | None = KEY_OPTION,
    passphrase_file: Path | None = PASSPHRASE_FILE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Build a signed bundle from a spec: ONNX models, FAISS indexes, wheels, SBOM."""
    set_json(json_out)
    spec = load_spec(spec_file)
    if output.exists() and not output.is_file():
        raise UsageError(f"{output} exists and is not a file")
    if base is not None and not base.is_file():
        raise UsageError(f"--base {base} is not a bundle file")
    signers = _signers(keys, passphrase_file)
    with byte_progress("packing", None) as advance:
        result = build_bundle(
            spec,
            output,
            signers=signers,
            expires=expires,
            base=base,
            step=_step,
            pack_progress=advance,
        )
    manifest = result["manifest"]
    delta = result["delta"]
    record_event(
        "bundle.build",
        resource=f"bundle:{manifest['name']}@{manifest['version']}",
        details={
            "name": manifest["name"],
            "version": manifest["version"],
            "spec_sha256": manifest["build"]["spec_sha256"],
            "delta_base": delta["base"]["manifest_sha256"] if delta else None,
        },
    )
    data: dict[str, Any] = {
        "ok": True,
        "bundle": str(output),
        "name": manifest["name"],
        "version": manifest["version"],
        "files": len(manifest["files"]),
        "total_size": manifest["total_size"],
        "size": output.stat().st_size,
        "components": [
            {"name": c["name"], "kind": c["kind"], "files": c["files"], "size": c["size"]}
            for c in manifest["components"]
        ],
        "models": {
            c["name"]: {
                "dtype": c["meta"].get("dtype"),
                "accuracy_gate": c["meta"].get("accuracy_gate"),
            }
            for c in manifest["components"]
            if c["kind"] == "model"
        },
        "delta": delta,
    }

    def human(d: dict[str, Any]) -> None:
        if d["delta"]:
            x = d["delta"]
            console.print(
                f"wrote delta [bold]{d['name']} {x['base']['version']} → {d['version']}[/] "
                f"to {d['bundle']}: {x['changed']} changed files "
                f"({_human_size(x['changed_bytes'])}), {x['reused']} reused from the base; "
                f"{_human_size(d['size'])} instead of {_human_size(d['total_size'])}"
            )
        else:
            console.print(
                f"built [bold]{d['name']} {d['version']}[/] into {d['bundle']}: {d['files']} "
                f"files, {_human_size(d['size'])}"
            )
        for name, model in d["models"].items():
            gate = model["accuracy_gate"]
            if gate:
                console.print(
                    f"  model {name} ({model['dtype']}): mean cosine {gate['mean_cosine']}, "
                    f"min {gate['min_cosine']} vs fp32"
                )

    emit(data, human)


@app.command("apply-delta")
def apply_delta_cmd(
    base: Path = typer.Argument(..., help="The bundle the delta was built against."),
    delta: Path = typer.Argument(..., help="The delta bundle (`pai bundle build --base`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Full bundle file to write."),
    trust: Path | None = TRUST_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Rebuild the full bundle from a base bundle and a delta, then verify it."""
    set_json(json_out)
    result = apply_delta(base, delta, output, _store(trust))
    emit(
        result,
        lambda d: console.print(
            f"[bold green]verified[/] {d['name']} {d['version']} rebuilt into {d['bundle']}: "
            f"{d['from_delta']} files from the delta, {d['from_base']} from the base"
        ),
    )


def show_sbom(bundle: Path) -> None:
    """``pai bundle inspect --sbom``: the CycloneDX document, or a table of its components."""
    doc = read_sbom(bundle)

    def human(d: dict[str, Any]) -> None:
        meta = d.get("metadata", {}).get("component", {})
        console.print(
            f"[bold]SBOM[/] of {meta.get('name')} {meta.get('version')} "
            f"(CycloneDX {d.get('specVersion')}, {len(d.get('components', []))} components; "
            "use --json for the document)"
        )
        table(
            "components",
            ["type", "name", "version", "license", "sha256"],
            [
                [
                    c.get("type"),
                    c.get("name"),
                    c.get("version"),
                    ", ".join(x["license"].get("name", "") for x in c.get("licenses", [])) or "-",
                    (c.get("hashes") or [{"content": ""}])[0]["content"][:16],
                ]
                for c in d.get("components", [])
            ],
        )

    emit(doc, human)
