"""`pai serve` over real HTTP: a subprocess on a free port, the official openai client, httpx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pai.inference import auth
from pai.inference.engine import EmbeddingEngine
from pai.settings import paths
from tests.helpers.serve import Server, retag_model, wait_for, write_bundle

pytestmark = pytest.mark.integration

SENTENCES = [
    "the customer asked for a renewal quote",
    "follow up with procurement about the signed purchase order",
    "pilot project succeeded",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pai.bundles.models import ModelSpec, build_model
    from tests.helpers.tiny_model import make_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    source = make_tiny_model(root / "src")
    build_model(ModelSpec(name="tiny", source=source, dtype="fp32", version="1.0.0"), root / "m")
    return root / "m"


DOCS = [
    {
        "id": "a1",
        "tenant": "acme",
        "text": "renewal quote for acme analytics seats",
        "stage": "won",
    },
    {"id": "a2", "tenant": "acme", "text": "invoice dispute call back acme", "stage": "open"},
    {"id": "a3", "tenant": "acme", "text": "pilot project rollout in europe", "stage": "won"},
    {"id": "g1", "tenant": "globex", "text": "renewal quote for globex seats", "stage": "won"},
    {"id": "g2", "tenant": "globex", "text": "globex invoice dispute", "stage": "lost"},
]


@pytest.fixture(scope="module")
def notes_index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pai.bundles.indexes import IndexSpec, build_index

    root = tmp_path_factory.mktemp("index")
    docs = root / "notes.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    spec = IndexSpec(name="notes", model="tiny", documents=(docs,))
    build_index(spec, EmbeddingEngine.load(tiny_model), root / "notes")
    return root / "notes"


@pytest.fixture(scope="module")
def bundles(
    tiny_model: Path, notes_index: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    v2 = retag_model(tiny_model, root / "tiny-v2", "2.0.0")
    return {
        "v1": write_bundle(
            root / "b1", "crm", "1.0.0", {"model:tiny": tiny_model, "index:notes": notes_index}
        ),
        "v2": write_bundle(root / "b2", "crm", "2.0.0", {"model:tiny": v2}),
    }


def make_home(folder: Path) -> Path:
    auth.generate_issuer_key(paths(folder))
    return folder


def token(
    home: Path, sub: str = "app", tenant: str = "acme", scopes: str = "embed,search", ttl: int = 600
) -> str:
    value, _ = auth.issue_token(
        paths(home),
        subject=sub,
        tenant=tenant,
        scopes=scopes.split(","),
        ttl=timedelta(seconds=ttl),
        audience="pai-serve",
        issuer="pai",
    )
    return value


ALIASES = """
[serve.aliases.prod]
"tiny@1.0.0" = 50
"tiny@2.0.0" = 50
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bundles: dict[str, Path]) -> Iterator[Server]:
    home = make_home(tmp_path_factory.mktemp("serve-home"))
    with Server(
        home, "--bundle", str(bundles["v1"]), "--bundle", str(bundles["v2"]), config=ALIASES
    ) as srv:
        yield srv


# ------------------------------------------------------------------ embeddings


def test_openai_client_float_and_base64_single_and_list(server: Server, tiny_model: Path) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=token(server.home), max_retries=0)
    expected = EmbeddingEngine.load(tiny_model).embed(SENTENCES)

    single = client.embeddings.create(model="tiny@1.0.0", input=SENTENCES[0])
    assert single.model == "tiny@1.0.0"
    assert np.allclose(single.data[0].embedding, expected[0], atol=1e-5)
    assert single.usage.prompt_tokens > 0

    as_float = client.embeddings.create(
        model="tiny@1.0.0", input=SENTENCES, encoding_format="float"
    )
    as_b64 = client.embeddings.create(model="tiny@1.0.0", input=SENTENCES, encoding_format="base64")
    assert [d.index for d in as_float.data] == [0, 1, 2]
    assert np.allclose([d.embedding for d in as_float.data], expected, atol=1e-5)
    raw = as_b64.data[1].embedding
    decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4") if isinstance(raw, str) else raw
    assert np.allclose(decoded, expected[1], atol=1e-5)
    assert as_float.usage.total_tokens == as_b64.usage.total_tokens


def test_token_arrays_unknown_fields_and_dimensions(server: Server) -> None:
    with server.client(token(server.home)) as http:
        ok = http.post(
            "/v1/embeddings",
            json={
                "model": "tiny",
                "input": [[5, 6, 7], [8, 9]],
                "user": "u-1",
                "whatever": {"x": 1},
            },
        )
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert len(body["data"]) == 2 and body["usage"]["prompt_tokens"] == 5
        same = http.post("/v1/embeddings", json={"model": "tiny", "input": "x", "dimensions": 32})
        assert same.status_code == 200
        bad = http.post("/v1/embeddings", json={"model": "tiny", "input": "x", "dimensions": 16})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "unsupported_dimensions"
        assert bad.json()["error"]["param"] == "dimensions"


def test_long_input_is_a_4xx_unless_truncation_is_asked(server: Server) -> None:
    long_text = " ".join(["renewal quote invoice"] * 60)
    with server.client(token(server.home)) as http:
        refused = http.post("/v1/embeddings", json={"model": "tiny", "input": long_text})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "context_length_exceeded"
        cut = http.post(
            "/v1/embeddings", json={"model": "tiny", "input": long_text, "truncate": True}
        )
        assert cut.status_code == 200
        again = http.post("/v1/embeddings", json={"model": "tiny", "input": long_text})
        assert again.status_code == 400  # a cached vector does not bypass the check


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'{"input": "x"}', 400, "missing_model"),
        (b'{"model": "nope", "input": "x"}', 404, "model_not_found"),
        (b'{"model": "tiny", "input": 5}', 400, "invalid_input"),
        (b'{"model": "tiny", "input": ""}', 400, "empty_input"),
        (
            b'{"model": "tiny", "input": "x", "encoding_format": "int8"}',
            400,
            "invalid_encoding_format",
        ),
    ],
)
def test_bad_requests_get_openai_errors(
    server: Server, body: bytes, status: int, code: str
) -> None:
    with server.client(token(server.home)) as http:
        response = http.post("/v1/embeddings", content=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and "type" in error and "param" in error


def test_models_lists_versions_and_aliases(server: Server) -> None:
    with server.client(token(server.home, scopes="search")) as http:
        ids = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert {"tiny@1.0.0", "tiny@2.0.0", "tiny", "prod"} <= ids


def test_canary_alias_is_sticky_per_subject_and_uses_both_versions(server: Server) -> None:
    seen: dict[str, set[str]] = {}
    for i in range(16):
        with server.client(token(server.home, sub=f"user-{i}")) as http:
            for _ in range(3):
                r = http.post("/v1/embeddings", json={"model": "prod", "input": "hello"})
                assert r.status_code == 200
                seen.setdefault(f"user-{i}", set()).add(r.json()["model"])
    assert all(len(models) == 1 for models in seen.values())
    assert set().union(*seen.values()) == {"tiny@1.0.0", "tiny@2.0.0"}


# ------------------------------------------------------------------ search


def _search(
    server: Server, tenant: str, body: dict[str, Any], index: str = "notes", scopes: str = "search"
) -> httpx.Response:
    with server.client(token(server.home, sub=f"s-{tenant}", tenant=tenant, scopes=scopes)) as http:
        return http.post(f"/v1/indexes/{index}/search", json=body)


def test_search_sees_only_the_tokens_tenant(server: Server) -> None:
    acme = _search(server, "acme", {"query": "renewal quote seats", "k": 10, "tenant": "globex"})
    assert acme.status_code == 200, acme.text
    ids = [hit["id"] for hit in acme.json()["data"]]
    assert sorted(ids) == ["a1", "a2", "a3"]
    assert "tenant" not in acme.json()["data"][0]
    globex = _search(server, "globex", {"query": "renewal quote seats", "k": 10})
    assert sorted(hit["id"] for hit in globex.json()["data"]) == ["g1", "g2"]
    nobody = _search(server, "initech", {"query": "renewal quote seats", "k": 10})
    assert nobody.json()["data"] == []
    smuggled = _search(server, "acme", {"query": "x", "filters": {"tenant": "globex"}})
    assert smuggled.status_code == 400
    assert smuggled.json()["error"]["code"] == "tenant_in_body"


def test_search_with_filters_vectors_and_errors(server: Server, tiny_model: Path) -> None:
    won = _search(server, "acme", {"query": "renewal", "k": 5, "filters": {"stage": "won"}})
    assert sorted(hit["id"] for hit in won.json()["data"]) == ["a1", "a3"]
    assert all(hit["metadata"]["stage"] == "won" for hit in won.json()["data"])
    vector = EmbeddingEngine.load(tiny_model).embed(["invoice dispute call back acme"])[0]
    by_vector = _search(server, "acme", {"vector": vector.tolist(), "k": 1})
    assert by_vector.json()["data"][0]["id"] == "a2"
    assert by_vector.json()["data"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    wrong_dim = _search(server, "acme", {"vector": [0.1, 0.2], "k": 1})
    assert wrong_dim.status_code == 400
    assert _search(server, "acme", {"query": "x"}, index="nope").status_code == 404
    assert _search(server, "acme", {"query": "x", "k": 0}).status_code == 400
    assert _search(server, "acme", {"query": "x"}, scopes="embed").status_code == 403


# ------------------------------------------------------------------ auth


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "app",
        "tenant": "acme",
        "scopes": ["embed"],
        "iss": "pai",
        "aud": "pai-serve",
        "exp": now + 600,
        "nbf": now - 5,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _issuer(home: Path) -> tuple[str, Any]:
    kid = (home / "jwt" / "issuer" / "current").read_text().strip()
    pem = (home / "jwt" / "issuer" / f"{kid}.pem").read_bytes()
    return kid, serialization.load_pem_private_key(pem, None)


def _bad_tokens(home: Path) -> dict[str, str]:
    kid, key = _issuer(home)
    sign = lambda claims, k=key, h=None: jwt.encode(  # noqa: E731
        claims, k, algorithm="EdDSA", headers=h or {"kid": kid}
    )
    none_token = (
        _b64url(json.dumps({"alg": "none", "kid": kid}).encode())
        + "."
        + _b64url(json.dumps(_claims()).encode())
        + "."
    )
    public_pem = (home / "jwt" / "trusted" / f"{kid}.pem").read_bytes()
    head = _b64url(json.dumps({"alg": "HS256", "kid": kid}).encode())
    body = _b64url(json.dumps(_claims()).encode())
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    confused = f"{head}.{body}.{_b64url(mac)}"
    return {
        "missing_token": "",
        "malformed_token": "not-a-jwt",
        "alg_none": none_token,
        "alg_mismatch": confused,
        "token_expired": sign(_claims(exp=int(time.time()) - 3600)),
        "token_not_yet_valid": sign(_claims(nbf=int(time.time()) + 3600)),
        "wrong_audience": sign(_claims(aud="someone-else")),
        "wrong_issuer": sign(_claims(iss="mallory")),
        "unknown_key": sign(_claims(), h={"kid": "0000000000000000"}),
        "bad_signature": sign(_claims(), k=ed25519.Ed25519PrivateKey.generate()),
        "missing_claim": sign(_claims(tenant=None)),
    }


def test_every_auth_failure_is_a_401_with_its_code(server: Server) -> None:
    for code, bad in _bad_tokens(server.home).items():
        with server.client(bad or None) as http:
            r = http.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
        assert r.status_code == 401, (code, r.text)
        assert r.json()["error"]["code"] == code
        assert r.json()["error"]["type"] == "authentication_error"


def test_missing_scope_is_a_403(server: Server) -> None:
    with server.client(token(server.home, scopes="search")) as http:
        r = http.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "insufficient_scope"
        admin = http.post("/admin/reload")
        assert admin.status_code == 403


# ------------------------------------------------------------------ logs, metrics, audit


def test_metrics_logs_and_audit_never_hold_input_text(server: Server) -> None:
    secret = "customer ssn 123-45-6789 asked about invoice"
    with server.client(token(server.home, sub="auditee")) as http:
        assert (
            http.post("/v1/embeddings", json={"model": "tiny", "input": secret}).status_code == 200
        )
        assert (
            http.post("/v1/embeddings", json={"model": "tiny", "input": secret}).status_code == 200
        )
        metrics = http.get("/metrics").text
    assert 'pai_requests_total{model="tiny@2.0.0",route="/v1/embeddings",status="200"}' in metrics
    assert "pai_request_seconds_bucket" in metrics and "pai_batch_size_bucket" in metrics
    assert "pai_cache_hits_total" in metrics and "pai_queue_depth" in metrics
    assert "pai_tokens_per_second" in metrics
    lines = [line for line in server.log_lines() if line.get("subject") == "auditee"]
    assert len(lines) == 2 and lines[0]["status"] == 200 and lines[0]["model"] == "tiny@2.0.0"
    assert secret not in server.log_path.read_text()

    digest = hashlib.sha256(secret.encode()).hexdigest()
    events = _audit_events(server.home, lambda e: e[0] == "auditee")
    assert len(events) == 2
    details = json.loads(events[0][4])
    assert details["input_sha256"] == [digest] and details["tenant"] == "acme"
    assert details["model_version"] == "tiny@2.0.0"
    for stored in (server.home / "audit").rglob("*"):
        if stored.is_file():
            assert secret.encode() not in stored.read_bytes()


def _audit_events(home: Path, match: Any, timeout: float = 20) -> list[tuple[Any, ...]]:
    from pai.audit.store import hot_events, open_log

    found: list[tuple[Any, ...]] = []

    def ready() -> bool:
        nonlocal found
        with open_log(paths(home), write=False) as con:
            events = hot_events(con)
        rows = [(e.actor, e.action, e.resource, e.outcome, e.details) for e in events]
        found = [r for r in rows if match(r)]
        return bool(found)

    wait_for(ready, timeout)
    time.sleep(0.3)
    ready()
    return found


def test_auth_failures_are_audited_as_denied(server: Server) -> None:
    with server.client("not-a-jwt") as http:
        http.post("/v1/embeddings", json={"model": "tiny", "input": "x"})
    events = _audit_events(server.home, lambda e: e[3] == "denied")
    assert any(json.loads(e[4]).get("error") == "malformed_token" for e in events)


def test_second_daemon_on_the_same_home_is_refused_and_doctor_sees_the_first(
    server: Server, bundles: dict[str, Path]
) -> None:
    env = {"PAI_HOME": str(server.home), "PATH": "/usr/bin:/bin"}
    second = subprocess.run(
        [sys.executable, "-m", "pai.cli", "serve", "--bundle", str(bundles["v1"]), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "pai serve is already running" in second.stderr
    assert "Traceback" not in second.stderr
    doctor = subprocess.run(
        [sys.executable, "-m", "pai.cli", "doctor", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert doctor.returncode == 0, doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["serving"]["pid"] == server.proc.pid
    assert "tiny@1.0.0" in report["serving"]["models"]
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["faiss"]["installed"] is True


# ------------------------------------------------------------------ backpressure, drain, reload


def test_full_queue_answers_429_with_retry_after_and_rate_limits(
    tmp_path: Path, bundles: dict[str, Path]
) -> None:
    home = make_home(tmp_path / "home")
    # A lone request waits 1.5 s for company while holding the whole queue (4 texts).
    config = (
        "[serve]\nmax_queue = 4\nmax_batch_size = 64\nmax_wait_ms = 1500\n"
        "rate_limit_rps = 0.2\nrate_limit_burst = 3\n"
    )
    texts = ["renewal quote", "invoice", "procurement", "pilot"]
    with Server(home, "--bundle", str(bundles["v1"]), config=config) as srv:
        tokens = [token(home, sub=f"c{i}") for i in range(40)]

        def call(tok: str) -> httpx.Response:
            with srv.client(tok) as http:
                return http.post("/v1/embeddings", json={"model": "tiny", "input": texts})

        with ThreadPoolExecutor(40) as pool:
            responses = list(pool.map(call, tokens))
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 429}, statuses
        busy = [r for r in responses if r.status_code == 429]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in busy)
        assert busy[0].json()["error"]["code"] == "queue_full"

        with srv.client(token(home, sub="greedy")) as http:
            codes = [http.get("/v1/models") for _ in range(4)]
        assert [r.status_code for r in codes[:3]] == [200, 200, 200]
        assert codes[3].status_code == 429
        assert codes[3].json()["error"]["code"] == "rate_limited"
        assert "Retry-After" in codes[3].headers


def test_sigterm_drains_in_flight_requests(tmp_path: Path, bundles: dict[str, Path]) -> None:
    home = make_home(tmp_path / "home")
    srv = Server(
        home,
        "--bundle",
        str(bundles["v1"]),
        config="[serve]\nmax_wait_ms = 1500\nmax_batch_size = 64\n",
    )
    tok = token(home)

    def call(i: int) -> int:
        with srv.client(tok) as http:
            return http.post(
                "/v1/embeddings", json={"model": "tiny", "input": f"note {i}"}
            ).status_code

    def queued() -> bool:
        text = httpx.get(f"{srv.url}/metrics").text
        return 'pai_queue_depth{model="tiny@1.0.0"} 6.0' in text

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(call, i) for i in range(6)]
        wait_for(queued)
        srv.proc.send_signal(signal.SIGTERM)
        statuses = [f.result() for f in futures]
    code, out = srv.terminate()
    assert statuses == [200] * 6
    assert code == 0
    assert '"event": "stopped"' in out
    assert not (home / "serve.pid").exists()
    stops = _audit_events(home, lambda e: e[1] == "serve.stop")
    assert len(stops) == 1
    served = _audit_events(home, lambda e: e[1] == "serve.embeddings")
    assert len(served) == 6


def test_hot_reload_under_load_fails_no_request(tmp_path: Path, bundles: dict[str, Path]) -> None:
    home = make_home(tmp_path / "home")
    with Server(home, "--bundle", str(bundles["v1"])) as srv:
        tok = token(home)
        admin = token(home, sub="ops", scopes="admin")
        stop = threading.Event()
        results: list[tuple[int, str]] = []

        def load() -> None:
            with srv.client(tok) as http:
                while not stop.is_set():
                    r = http.post("/v1/embeddings", json={"model": "tiny", "input": SENTENCES})
                    results.append((r.status_code, r.json().get("model", "")))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(results) > 20)
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: httpx.get(f"{srv.url}/readyz").json().get("generation") == 2)
        with srv.client(admin) as http:
            swapped = http.post("/admin/reload", json={"bundles": [str(bundles["v2"])]})
        assert swapped.status_code == 200, swapped.text
        assert swapped.json()["models"] == ["tiny@2.0.0"]
        count = len(results)
        wait_for(lambda: len(results) > count + 20)
        stop.set()
        for t in threads:
            t.join()
    assert {status for status, _ in results} == {200}
    assert results[-1][1] == "tiny@2.0.0"
    assert {model for _, model in results} == {"tiny@1.0.0", "tiny@2.0.0"}


# ------------------------------------------------------------------ the token CLI


def test_token_cli_issue_and_errors(cli, pai_home: Path) -> None:
    missing = cli("token", "issue", "--sub", "a", "--tenant", "t")
    assert missing.exit_code == 1
    assert "no token issuing key yet" in missing.stderr
    made = cli("token", "keygen", "--alg", "ES256", "--json")
    assert made.exit_code == 0, made.output
    issued = cli(
        "token",
        "issue",
        "--sub",
        "crm",
        "--tenant",
        "acme",
        "--scopes",
        "embed,search",
        "--ttl",
        "1h",
        "--json",
    )
    assert issued.exit_code == 0, issued.output
    doc = issued.json()
    header = jwt.get_unverified_header(doc["token"])
    assert header["alg"] == "ES256" and header["kid"] == made.json()["kid"]
    assert doc["claims"]["tenant"] == "acme" and doc["claims"]["scopes"] == ["embed", "search"]
    bad = cli("token", "issue", "--sub", "a", "--tenant", "t", "--scopes", "root")
    assert bad.exit_code == 2
    assert "scopes must be among" in bad.stderr
    wrong_alg = cli("token", "keygen", "--alg", "none")
    assert wrong_alg.exit_code == 2


def test_serves_a_signed_bundle_file_after_verifying_it(
    cli, keys: Path, pai_home: Path, tmp_path: Path, tiny_model: Path, notes_index: Path
) -> None:
    import shutil

    payload = tmp_path / "payload"
    shutil.copytree(tiny_model, payload / "models" / "tiny")
    shutil.copytree(notes_index, payload / "indexes" / "notes")
    out = tmp_path / "crm-ai-1.0.0.pai"
    packed = cli(
        "bundle",
        "pack",
        str(payload),
        "--name",
        "crm-ai",
        "--version",
        "1.0.0",
        "-o",
        str(out),
        "--component",
        "tiny=model:models/tiny/",
        "--component",
        "notes=index:indexes/notes/",
    )
    assert packed.exit_code == 0, packed.output
    make_home(pai_home)
    with Server(pai_home, "--bundle", str(out)) as srv:
        ready = httpx.get(f"{srv.url}/readyz").json()
        assert ready["models"] == ["tiny@1.0.0"] and ready["indexes"] == ["notes"]
        assert ready["bundles"][0]["name"] == "crm-ai"
        hits = _search(srv, "globex", {"query": "invoice", "k": 3}).json()["data"]
        assert {h["id"] for h in hits} == {"g1", "g2"}

    tampered = tmp_path / "tampered.pai"
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    refused = subprocess.run(
        [sys.executable, "-m", "pai.cli", "serve", "--bundle", str(tampered), "--port", "0"],
        env={"PAI_HOME": str(pai_home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "error:" in refused.stderr and "Traceback" not in refused.stderr


def test_serve_refuses_bad_input_with_one_line(cli, pai_home: Path, tmp_path: Path) -> None:
    missing = cli("serve", "--bundle", str(tmp_path / "nope"))
    assert missing.exit_code == 1
    assert "does not exist" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    not_bundle = cli("serve", "--bundle", str(empty))
    assert not_bundle.exit_code == 2
    assert "holds no manifest.json" in not_bundle.stderr
    nothing = cli("serve")
    assert nothing.exit_code == 2 and "nothing to serve" in nothing.stderr
    config = tmp_path / "serve.toml"
    config.write_text("[serve]\nmax_batch = 3\n")
    typo = cli("serve", "--config", str(config), "--bundle", str(empty))
    assert typo.exit_code == 2
    assert "unknown key 'max_batch'" in typo.stderr
    config.write_text('[serve]\ndevice = "tpu"\n')
    device = cli("serve", "--config", str(config), "--bundle", str(empty))
    assert device.exit_code == 2 and "device must be auto, cpu or cuda" in device.stderr
    config.write_text("[serve]\naudit_flush_ms = 0\n")
    flush = cli("serve", "--config", str(config), "--bundle", str(empty))
    assert flush.exit_code == 2 and "audit_flush_ms must be greater than 0" in flush.stderr
    config.write_text(f'[serve]\naccess_log = "{tmp_path / "no" / "such" / "access.log"}"\n')
    log = cli("serve", "--config", str(config), "--bundle", str(empty))
    assert log.exit_code == 2 and "cannot open the access log" in log.stderr
    assert "Traceback" not in missing.output + typo.output + device.output + log.output
    # Every refusal above bound the default port first: none may keep it.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", 8900))


def test_device_cuda_without_a_gpu_is_refused_and_doctor_says_why(
    cli, pai_home: Path, bundles: dict[str, Path]
) -> None:
    refused = cli("serve", "--device", "cuda", "--bundle", str(bundles["v2"]))
    assert refused.exit_code == 1
    assert "CUDAExecutionProvider" in refused.stderr
    report = cli("doctor", "--json")
    assert report.exit_code == 0
    missing = " ".join(report.json()["missing"])
    assert "no GPU visible" in missing and "no trusted JWT keys" in missing
    assert report.json()["serving"] is None


def test_index_built_with_another_model_version_is_refused_at_start(
    cli, pai_home: Path, tmp_path: Path, bundles: dict[str, Path], notes_index: Path
) -> None:
    mixed = write_bundle(
        tmp_path / "mixed", "crm", "3.0.0",
        {"model:tiny": bundles["v2"] / "models" / "tiny", "index:notes": notes_index},
    )  # fmt: skip
    refused = cli("serve", "--bundle", str(mixed))
    assert refused.exit_code == 1
    assert "was built with tiny version 1.0.0" in refused.stderr


class _SlowEngine:
    """Records how many batches run at once; each text's vector is its own number."""

    name, version, dimension, max_length = "slow", "1", 2, 64

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.most = 0

    def embed_counted(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self.lock:
            self.running -= 1
        return np.array([[float(t), 0.0] for t in texts], dtype=np.float32), [3] * len(texts)

    def embed_tokens(self, token_ids: Any, *, truncate: bool = True) -> np.ndarray:
        raise AssertionError("not used")


@pytest.mark.parametrize("workers", [1, 2])
def test_batcher_workers_run_batches_at_once_and_answer_everyone(workers: int) -> None:
    import asyncio

    from pai.inference.batcher import Batcher

    engine = _SlowEngine()
    sizes: list[int] = []

    async def main() -> list[float]:
        batcher = Batcher(
            engine,
            max_batch=8,
            max_tokens=8192,
            max_wait=0.002,
            max_queue=1000,
            workers=workers,
            observe=lambda n, _t, _s: sizes.append(n),
        )
        batcher.start()

        async def client(k: int) -> list[float]:
            got = []
            for i in range(5):
                result = await batcher.embed([str(k * 100 + i)], truncate=False)
                got.append(float(result.vectors[0][0]))
            return got

        answers = await asyncio.gather(*(client(k) for k in range(24)))
        await batcher.close()
        return [x for a in answers for x in a]

    values = asyncio.run(main())
    assert sorted(values) == sorted(float(k * 100 + i) for k in range(24) for i in range(5))
    assert sum(sizes) == 120 and max(sizes) <= 8
    assert engine.most == workers
