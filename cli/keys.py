"""``pai keys``: the build side's root and signing keys, and the air-gapped trust store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pai import keyring
from pai.audit import record_event
from pai.cli.common import JSON_OPTION, PASSPHRASE_FILE_OPTION, passphrase
from pai.cli.output import console, emit, set_json, table
from pai.settings import paths
from pai.timeutil import parse_duration
from pai.trust import TrustStore

app = typer.Typer(no_args_is_help=True, help="Root and signing keys; the trust store.")
trust_app = typer.Typer(no_args_is_help=True, help="Trusted root keys on the air-gapped side.")
app.add_typer(trust_app, name="trust")

TRUST_DIR_OPTION = typer.Option(
    None, "--trust", help="Trust store folder (default $PAI_HOME/trust)."
)


def _store(folder: Path | None) -> TrustStore:
    return TrustStore(folder or paths().trust)


@app.command("init")
def init(
    encrypt: bool = typer.Option(
        False, "--encrypt", help="Protect private keys with a passphrase."
    ),
    passphrase_file: Path | None = PASSPHRASE_FILE_OPTION,
    valid: str = typer.Option(
        "2y", "--valid", help="Signing certificate lifetime (e.g. 365d, 2y)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing keys (old ones are lost)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Create a root key and a signing key certified by it."""
    set_json(json_out)
    p = paths()
    secret = (
        passphrase(passphrase_file, ask=encrypt, confirm=True)
        if encrypt or passphrase_file
        else None
    )
    root, signing = keyring.init_keys(
        p, passphrase=secret, lifetime=parse_duration(valid, "--valid"), force=force
    )
    record_event(
        "keys.init",
        resource=f"root:{root.kid}",
        details={"root": root.kid, "signing": signing.kid, "encrypted": bool(secret)},
    )
    emit(
        {
            "ok": True,
            "root": root.kid,
            "signing": signing.kid,
            "encrypted": bool(secret),
            "root_public_key": str(p.keys / "root.pub"),
        },
        lambda d: console.print(
            f"root key [bold]{d['root']}[/], signing key [bold]{d['signing']}[/]\n"
            f"carry {d['root_public_key']} to the air-gapped site and run "
            "`pai keys trust add` there"
        ),
    )


@app.command("rotate")
def rotate(
    passphrase_file: Path | None = PASSPHRASE_FILE_OPTION,
    valid: str = typer.Option("2y", "--valid", help="New certificate lifetime."),
    reason: str = typer.Option("rotated", "--reason", help="Why the old key is revoked."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Make a new signing key under the same root and revoke the current one."""
    set_json(json_out)
    old, new = keyring.rotate(
        paths(),
        passphrase=passphrase(passphrase_file),
        lifetime=parse_duration(valid, "--valid"),
        reason=reason,
    )
    record_event(
        "keys.rotate", resource=f"signing:{new.kid}", details={"revoked": old, "new": new.kid}
    )
    emit(
        {"ok": True, "revoked": old, "signing": new.kid},
        lambda d: console.print(
            f"signing key [bold]{d['signing']}[/] in use; {d['revoked']} revoked"
        ),
    )


@app.command("show")
def show(json_out: bool = JSON_OPTION) -> None:
    """Show the build side's root key, current signing key and revocations."""
    set_json(json_out)
    p = paths()
    signer = keyring.load_signer_public(p)
    emit(signer)


@trust_app.command("add")
def trust_add(
    pub_file: Path = typer.Argument(..., help="A root public key file (root.pub)."),
    trust: Path | None = TRUST_DIR_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Trust a root public key."""
    set_json(json_out)
    root = _store(trust).add(pub_file)
    record_event("keys.trust.add", resource=f"root:{root.kid}", details={"root": root.kid})
    emit(
        {"ok": True, "trusted": root.kid}, lambda d: console.print(f"trusting root {d['trusted']}")
    )


@trust_app.command("list")
def trust_list(trust: Path | None = TRUST_DIR_OPTION, json_out: bool = JSON_OPTION) -> None:
    """List trusted root keys and how many of their signing keys are revoked."""
    set_json(json_out)
    store = _store(trust)
    revocations = store.revocations()
    rows: list[dict[str, Any]] = [
        {
            "kid": root.kid,
            "revocation_serial": revocations[root.kid].serial if root.kid in revocations else 0,
            "revoked_keys": sorted(revocations[root.kid].revoked)
            if root.kid in revocations
            else [],
        }
        for root in store.entries()
    ]
    emit(
        {"roots": rows},
        lambda d: table(
            "trusted roots",
            ["key id", "revocation serial", "revoked signing keys"],
            [[r["kid"], r["revocation_serial"], len(r["revoked_keys"])] for r in d["roots"]],
        ),
    )


@trust_app.command("remove")
def trust_remove(
    kid: str = typer.Argument(..., help="Key id (or a unique prefix) of the root to drop."),
    trust: Path | None = TRUST_DIR_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Stop trusting a root key."""
    set_json(json_out)
    _store(trust).remove(kid)
    record_event("keys.trust.remove", resource=f"root:{kid}", details={"root": kid})
    emit(
        {"ok": True, "removed": kid}, lambda d: console.print(f"no longer trusting {d['removed']}")
    )
