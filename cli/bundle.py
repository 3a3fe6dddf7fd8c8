"""``pai bundle``: pack, verify, inspect, extract, split and join signed offline bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pai import keyring
from pai.bundles.extract import extract_bundle
from pai.bundles.manifest import read_manifest, read_signatures_unverified
from pai.bundles.pack import created_time, pack_bundle, scan
from pai.bundles.parts import join_parts, parse_size, resolve_inputs, split_bundle, total_size
from pai.bundles.verify import VerifiedBundle, input_size, verify_bundle
from pai.cli.common import JSON_OPTION, PASSPHRASE_FILE_OPTION, passphrase
from pai.cli.output import byte_progress, console, emit, set_json, table
from pai.errors import UsageError
from pai.settings import paths
from pai.timeutil import parse_expiry
from pai.trust import TrustStore

app = typer.Typer(no_args_is_help=True, help="Signed offline bundles: pack, verify, carry.")

TRUST_OPTION = typer.Option(None, "--trust", help="Trust store folder (default $PAI_HOME/trust).")
DOWNGRADE_OPTION = typer.Option(
    False, "--allow-downgrade", help="Accept a version older than one accepted before (audited)."
)
KEY_OPTION = typer.Option(
    None, "--key", help="Signing key file (repeat for M-of-N); default: the current key."
)


def _store(folder: Path | None) -> TrustStore:
    return TrustStore(folder or paths().trust)


def _signers(keys: list[Path] | None, passphrase_file: Path | None) -> list[keyring.Signer]:
    p = paths()
    secret = passphrase(passphrase_file)
    if not keys:
        return [keyring.load_signer(p, secret)]
    return [keyring.load_signer(p, secret, key=k) for k in keys]


def _component(text: str) -> dict[str, Any]:
    name, sep, rest = text.partition("=")
    kind, sep2, path = rest.partition(":")
    if not (sep and sep2 and name and kind and path):
        raise UsageError(
            f"--component {text!r} is not NAME=KIND:PATH (e.g. minilm=model:models/minilm/)"
        )
    return {"name": name, "kind": kind, "path": path}


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@app.command("pack")
def pack(
    source: Path = typer.Argument(..., help="Folder whose files become the payload."),
    name: str = typer.Option(..., "--name", help="Bundle name (a-z 0-9 . _ -)."),
    version: str = typer.Option(..., "--version", help="Semantic version, e.g. 1.4.0."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle file to write."),
    expires: str | None = typer.Option(
        None, "--expires", help="Expiry: a duration (90d) or a date; default never."
    ),
    keys: list[Path] | None = KEY_OPTION,
    threshold: int = typer.Option(1, "--threshold", help="Signatures required (M of N keys)."),
    components: list[str] | None = typer.Option(
        None, "--component", help="NAME=KIND:PATH, e.g. minilm=model:models/minilm/ (repeat)."
    ),
    passphrase_file: Path | None = PASSPHRASE_FILE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Pack a folder into a signed, deterministic bundle."""
    set_json(json_out)
    signers = _signers(keys, passphrase_file)
    total = sum(item[2] for item in scan(source))
    with byte_progress("packing", total) as advance:
        manifest = pack_bundle(
            source,
            output,
            name=name,
            version=version,
            signers=signers,
            expires=parse_expiry(expires, created_time()) if expires else None,
            components=[_component(c) for c in components or []],
            threshold=threshold,
            progress=advance,
        )
    emit(
        {
            "ok": True,
            "bundle": str(output),
            "name": manifest["name"],
            "version": manifest["version"],
            "files": len(manifest["files"]),
            "total_size": manifest["total_size"],
            "signers": manifest["signature_policy"]["signers"],
            "expires": manifest["expires"],
        },
        lambda d: console.print(
            f"packed [bold]{d['name']} {d['version']}[/] into {d['bundle']}: {d['files']} files, "
            f"{_human_size(d['total_size'])}, signed by {', '.join(d['signers'])}"
        ),
    )


def _render_verified(d: dict[str, Any]) -> None:
    parts = f" from {len(d['parts'])} parts" if d["parts"] else ""
    console.print(
        f"[bold green]verified[/] {d['name']} {d['version']}{parts}: {d['files']} files, "
        f"{_human_size(d['total_size'])}, signed by {', '.join(d['signers'])}, "
        f"expires {d['expires'] or 'never'}"
    )
    if d["downgraded_from"]:
        console.print(f"[yellow]downgrade from {d['downgraded_from']} allowed (audited)[/]")


def _progress_total(bundles: list[Path]) -> int | None:
    return input_size(bundles if len(bundles) > 1 else bundles[0])


@app.command("verify")
def verify(
    bundles: list[Path] = typer.Argument(
        ..., help="Bundle file, or the parts of a split bundle (or its .parts.json index)."
    ),
    trust: Path | None = TRUST_OPTION,
    allow_downgrade: bool = DOWNGRADE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Check signatures, expiry, version floor and every byte, in one streaming pass."""
    set_json(json_out)
    target: Path | list[Path] = bundles if len(bundles) > 1 else bundles[0]
    with byte_progress("verifying", _progress_total(bundles)) as advance:
        verified = verify_bundle(
            target, _store(trust), allow_downgrade=allow_downgrade, progress=advance
        )
    emit(verified.summary(), _render_verified)


@app.command("extract")
def extract(
    bundles: list[Path] = typer.Argument(..., help="Bundle file or its parts."),
    dest: Path = typer.Argument(..., help="Folder to create (must not exist or be empty)."),
    trust: Path | None = TRUST_OPTION,
    allow_downgrade: bool = DOWNGRADE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Verify while extracting; DEST appears only when every check passed."""
    set_json(json_out)
    target: Path | list[Path] = bundles if len(bundles) > 1 else bundles[0]
    with byte_progress("extracting", _progress_total(bundles)) as advance:
        verified: VerifiedBundle = extract_bundle(
            target, dest, _store(trust), allow_downgrade=allow_downgrade, progress=advance
        )
    summary = {**verified.summary(), "extracted_to": str(dest)}

    def human(d: dict[str, Any]) -> None:
        _render_verified(d)
        console.print(f"extracted into {d['extracted_to']}")

    emit(summary, human)


@app.command("inspect")
def inspect(
    bundle: Path = typer.Argument(..., help="Bundle file, its first part, or its .parts.json."),
    sbom: bool = typer.Option(False, "--sbom", help="Print the bundle's CycloneDX SBOM."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Show components, sizes, signers, expiry and version from the first members (unverified)."""
    set_json(json_out)
    if sbom:
        from pai.cli.bundle_build import show_sbom

        show_sbom(bundle)
        return
    _whole, index = resolve_inputs(bundle)
    first = index or bundle
    manifest = read_manifest(first)
    sigs = read_signatures_unverified(first)
    data = {
        "verified": False,
        "name": manifest["name"],
        "version": manifest["version"],
        "created": manifest["created"],
        "expires": manifest["expires"],
        "target": manifest["target"],
        "signature_policy": manifest["signature_policy"],
        "signers": [str(s.get("kid")) for s in sigs.get("signatures", []) if isinstance(s, dict)],
        "components": manifest["components"],
        "files": len(manifest["files"]),
        "total_size": manifest["total_size"],
        "build": manifest["build"],
    }
    if index is not None:
        data["split_size"] = total_size(index)

    def human(d: dict[str, Any]) -> None:
        console.print(
            f"[bold]{d['name']} {d['version']}[/]  created {d['created']}  "
            f"expires {d['expires'] or 'never'}  (not verified: run `pai bundle verify`)"
        )
        policy = d["signature_policy"]
        console.print(
            f"signed by {', '.join(d['signers'])}; policy {policy['threshold']} of "
            f"{len(policy['signers'])}"
        )
        console.print(f"{d['files']} files, {_human_size(d['total_size'])}; target {d['target']}")
        if d["components"]:
            table(
                "components",
                ["name", "kind", "path", "files", "size"],
                [
                    [c["name"], c["kind"], c["path"], c["files"], _human_size(c["size"])]
                    for c in d["components"]
                ],
            )

    emit(data, human)


@app.command("split")
def split(
    bundle: Path = typer.Argument(..., help="Bundle file to cut into parts."),
    size: str = typer.Option(..., "--size", help="Part size: 3.9G (FAT32), 500M, or bytes."),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="Where parts go (default beside)."),
    keys: list[Path] | None = KEY_OPTION,
    passphrase_file: Path | None = PASSPHRASE_FILE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Cut a bundle into parts plus a signed parts index."""
    set_json(json_out)
    part_size = parse_size(size)
    signers = _signers(keys, passphrase_file)
    try:
        total = bundle.stat().st_size
    except OSError:
        total = None
    with byte_progress("splitting", total) as advance:
        body = split_bundle(bundle, part_size, signers=signers, out_dir=out_dir, progress=advance)
    folder = out_dir or bundle.parent
    emit(
        {
            "ok": True,
            "index": str(folder / f"{bundle.name}.parts.json"),
            "parts": [{"name": p["name"], "size": p["size"]} for p in body["parts"]],
            "part_size": part_size,
        },
        lambda d: console.print(
            f"{len(d['parts'])} parts of at most {_human_size(d['part_size'])}; index {d['index']}"
        ),
    )


@app.command("join")
def join(
    parts: list[Path] = typer.Argument(..., help="The parts, or the .parts.json index."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle file to write."),
    trust: Path | None = typer.Option(
        None, "--trust", help="Also check the index's signatures against this trust store."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Join the parts of a split bundle into one file, checking each part's sha256."""
    set_json(json_out)
    target: Path | list[Path] = parts if len(parts) > 1 else parts[0]
    with byte_progress("joining", _progress_total(parts)) as advance:
        body = join_parts(
            target, output, trust=TrustStore(trust) if trust else None, progress=advance
        )
    emit(
        {"ok": True, "bundle": str(output), "parts": len(body["parts"]), "size": body["size"]},
        lambda d: console.print(f"joined {d['parts']} parts into {d['bundle']}"),
    )
