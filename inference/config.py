"""The daemon's settings: the ``[serve]`` table of config.toml, overridden by CLI flags.

Every key has a default so that ``pai serve --bundle DIR`` works with no config file at all.
docs/serve.md lists the keys; :func:`load_serve_config` rejects unknown keys and wrong types
with one clear line, because a typo in a daemon's config should fail at start, not at 3 a.m.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pai.errors import ConfigError
from pai.settings import Paths, config_section


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``pai serve`` needs to know besides the state folder."""

    host: str = "127.0.0.1"
    port: int = 8900
    bundles: tuple[str, ...] = ()
    #: ``auto`` uses CUDA (onnxruntime and FAISS) when present, ``cpu`` never does.
    device: str = "auto"
    max_batch_size: int = 64
    #: Batches of one model run at once, each on its own thread (0 = auto: 2 on a CPU with
    #: two or more cores, 1 on CUDA).
    inference_workers: int = 0
    #: onnxruntime intra-op threads of the model's session, shared by its workers (0 = auto:
    #: cores - workers + 1, so the workers' own threads plus the pool make the cores).
    inference_threads: int = 0
    max_batch_tokens: int = 8192
    max_wait_ms: float = 2.0
    #: Texts waiting per model before new requests get 429.
    max_queue: int = 2048
    #: Expected queueing time (backlog x measured time per text) above which requests get 429.
    max_queue_delay_ms: float = 1000.0
    request_timeout_s: float = 30.0
    drain_timeout_s: float = 30.0
    cache_entries: int = 20000
    max_inputs: int = 2048
    rate_limit_rps: float = 0.0
    rate_limit_burst: float = 0.0
    jwt_audience: str = "pai-serve"
    jwt_issuer: str = "pai"
    jwt_leeway_s: int = 30
    allow_hs256: bool = False
    auth: bool = True
    access_log: str = "-"
    audit: bool = True
    #: The longest a request's audit event waits in memory before it is appended: each append
    #: opens the audit database (tens of ms of CPU), so shorter costs the hot path cores.
    audit_flush_ms: float = 1000.0
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)

    def with_overrides(self, **values: Any) -> ServeConfig:
        """A copy with the CLI flags that were given (None means not given)."""
        given = {k: v for k, v in values.items() if v is not None}
        return replace(self, **given)


_INTS = {
    "port",
    "max_batch_size",
    "max_batch_tokens",
    "max_queue",
    "cache_entries",
    "max_inputs",
    "inference_workers",
    "inference_threads",
}
_FLOATS = {
    "max_wait_ms",
    "max_queue_delay_ms",
    "request_timeout_s",
    "drain_timeout_s",
    "rate_limit_rps",
    "rate_limit_burst",
    "audit_flush_ms",
}
#: Numbers where 0 has no meaning (the audit writer needs some time to gather a batch).
_POSITIVE = {"audit_flush_ms"}


def _check(key: str, value: Any) -> Any:
    if key in _INTS:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"[serve] {key} must be a non-negative integer")
        return value
    if key in _FLOATS:
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"[serve] {key} must be a non-negative number")
        if key in _POSITIVE and value == 0:
            raise ConfigError(f"[serve] {key} must be greater than 0")
        return float(value)
    if key in {"allow_hs256", "auth", "audit"}:
        if not isinstance(value, bool):
            raise ConfigError(f"[serve] {key} must be true or false")
        return value
    if key == "jwt_leeway_s":
        if not isinstance(value, int) or value < 0:
            raise ConfigError("[serve] jwt_leeway_s must be a non-negative integer")
        return value
    if key == "bundles":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError("[serve] bundles must be a list of paths")
        return tuple(value)
    if key == "aliases":
        return _check_aliases(value)
    if key == "device" and value not in ("auto", "cpu", "cuda"):
        raise ConfigError("[serve] device must be auto, cpu or cuda")
    if not isinstance(value, str):
        raise ConfigError(f"[serve] {key} must be a string")
    return value


def _check_aliases(value: Any) -> dict[str, dict[str, int]]:
    if not isinstance(value, dict):
        raise ConfigError("[serve.aliases] must be a table of alias = {model = weight}")
    out: dict[str, dict[str, int]] = {}
    for alias, targets in value.items():
        if not isinstance(targets, dict) or not targets:
            raise ConfigError(f"[serve.aliases] {alias} must map model ids to weights")
        weights: dict[str, int] = {}
        for model, weight in targets.items():
            if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
                raise ConfigError(f"[serve.aliases] {alias}.{model} must be a weight >= 0")
            weights[str(model)] = weight
        if sum(weights.values()) == 0:
            raise ConfigError(f"[serve.aliases] {alias} has no positive weight")
        out[str(alias)] = weights
    return out


def load_serve_config(p: Paths, config_file: Path | None = None) -> ServeConfig:
    """Read ``[serve]`` from ``config_file`` (or the state folder's config) and validate it."""
    if config_file is not None:
        import tomllib

        try:
            with config_file.open("rb") as handle:
                section = tomllib.load(handle).get("serve", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {config_file}: {exc}") from None
    else:
        section = config_section("serve", p)
    if not isinstance(section, dict):
        raise ConfigError("config section [serve] must be a table")
    known = {f.name for f in fields(ServeConfig)}
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in known:
            raise ConfigError(f"[serve] has an unknown key {key!r}", hint="see docs/serve.md")
        values[key] = _check(key, value)
    return ServeConfig(**values)
