"""`pai token`: issuing keys and JWT bearer tokens for the daemon (docs/serve.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from pai.audit import record_event
from pai.cli.common import JSON_OPTION
from pai.cli.output import console, emit, set_json
from pai.inference import auth
from pai.inference.config import load_serve_config
from pai.settings import paths
from pai.timeutil import parse_duration

app = typer.Typer(no_args_is_help=True, help="JWT keys and tokens for `pai serve`.")


@app.command("keygen")
def keygen(
    alg: str = typer.Option("EdDSA", "--alg", help="EdDSA, ES256, RS256 or HS256."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Make a token issuing key, trust it on this node, and use it for `pai token issue`."""
    set_json(json_out)
    kid, used = auth.generate_issuer_key(paths(), alg)
    record_event("token.keygen", resource=f"jwt-key:{kid}", details={"kid": kid, "alg": used})
    emit(
        {"ok": True, "kid": kid, "alg": used},
        lambda d: console.print(f"issuing key [bold]{d['kid']}[/] ({d['alg']}) made and trusted"),
    )


@app.command("trust")
def trust(
    pem: Path = typer.Argument(..., help="PEM public key of another token issuer."),
    kid: str | None = typer.Option(None, "--kid", help="Key id its tokens carry."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Accept tokens signed by another issuer's public key."""
    set_json(json_out)
    used_kid, alg = auth.trust_public_key(paths(), pem, kid)
    record_event("token.trust", resource=f"jwt-key:{used_kid}", details={"kid": used_kid})
    emit(
        {"ok": True, "kid": used_kid, "alg": alg},
        lambda d: console.print(f"trusting {d['alg']} key [bold]{d['kid']}[/]"),
    )


@app.command("issue")
def issue(
    sub: str = typer.Option(..., "--sub", help="Subject: the calling application or person."),
    tenant: str = typer.Option(..., "--tenant", help="The tenant whose documents it may see."),
    scopes: str = typer.Option(
        "embed,search", "--scopes", help="Comma-separated: embed, search, admin."
    ),
    ttl: str = typer.Option("30d", "--ttl", help="Lifetime, e.g. 12h, 30d."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Sign a bearer token with the current issuing key (printed on stdout)."""
    set_json(json_out)
    p = paths()
    config = load_serve_config(p)
    token, claims = auth.issue_token(
        p,
        subject=sub,
        tenant=tenant,
        scopes=[s.strip() for s in scopes.split(",") if s.strip()],
        ttl=parse_duration(ttl, "--ttl"),
        audience=config.jwt_audience,
        issuer=config.jwt_issuer,
    )
    record_event(
        "token.issue",
        resource=f"subject:{sub}",
        details={
            "kid": claims["kid"],
            "tenant": tenant,
            "scopes": claims["scopes"],
            "exp": claims["exp"],
        },
    )
    emit({"token": token, "claims": claims}, lambda d: print(d["token"]))
