"""Where pai keeps its state and how it reads its configuration.

* ``PAI_HOME`` (environment) wins; otherwise root uses ``/var/lib/pai`` and other users
  ``$XDG_DATA_HOME/pai`` (default ``~/.local/share/pai``).
* The config file is ``PAI_CONFIG`` if set, else ``$PAI_HOME/config.toml``. It is optional;
  every key has a default. Sections belong to the feature that reads them (``[bundle]``,
  ``[audit]``, ``[backup]``, ``[serve]`` ...). See docs/configuration.md.

Layout under ``PAI_HOME`` (created on first use, mode 0700)::

    keys/          private keys (0600) and certificates
    trust/         trusted root public keys (the air-gapped side's trust store)
    state.duckdb   small operational state (accepted bundle versions, ...)
    audit/         the audit log and its checkpoint file
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pai.errors import ConfigError


def default_home() -> Path:
    """The state folder when ``PAI_HOME`` is not set."""
    if os.geteuid() == 0:
        return Path("/var/lib/pai")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "pai"


@dataclass(frozen=True)
class Paths:
    """Every well-known location under one state folder."""

    home: Path

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    @property
    def trust(self) -> Path:
        return self.home / "trust"

    @property
    def state_db(self) -> Path:
        return self.home / "state.duckdb"

    @property
    def audit(self) -> Path:
        return self.home / "audit"

    @property
    def config_file(self) -> Path:
        override = os.environ.get("PAI_CONFIG")
        return Path(override) if override else self.home / "config.toml"

    def ensure(self) -> Paths:
        """Create the state folder (0700) if it is missing, and return self."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self


def paths(home: Path | None = None) -> Paths:
    """The paths for ``home``, or for ``PAI_HOME`` / the default when it is None."""
    if home is None:
        env = os.environ.get("PAI_HOME")
        home = Path(env) if env else default_home()
    return Paths(Path(home).expanduser().absolute())


def load_config(p: Paths | None = None) -> dict[str, Any]:
    """Read the TOML config, or return an empty mapping when there is none."""
    p = p or paths()
    file = p.config_file
    if not file.exists():
        return {}
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {file}: {exc}") from None


def config_section(name: str, p: Paths | None = None) -> dict[str, Any]:
    """One ``[name]`` table of the config file (empty when absent)."""
    section = load_config(p).get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"config section [{name}] must be a table")
    return section
