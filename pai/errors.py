"""The one error family of pai.

Every failure an operator can cause or meet (bad input, a tampered bundle, a wrong key, a full
disk) is raised as a subclass of :class:`PaiError`. The CLI catches the family in exactly one
place (``pai.cli.main``), prints :meth:`PaiError.diagnostics` on one line and exits with
:attr:`PaiError.exit_code`. Anything else that escapes is a bug and is shown as one.

Subclasses name *what failed*; their message says what happened and, where there is one, what
to do about it. Verification code raises one subclass per failed check so that tests (and
scripts reading ``--json``) can tell the checks apart.
"""

from __future__ import annotations


class PaiError(Exception):
    """Base of every error pai reports to a person instead of crashing."""

    exit_code: int = 1
    #: Stable machine-readable name, printed by ``--json`` output and used by tests.
    code: str = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        """The single line a person should read."""
        text = self.message.replace("\n", " ").strip()
        if self.hint:
            text = f"{text} ({self.hint})"
        return text


class UsageError(PaiError):
    """The command line or a config file asks for something that cannot be done."""

    exit_code = 2
    code = "usage"


class ConfigError(UsageError):
    """A configuration file is missing, unreadable or invalid."""

    code = "config"


class NotFoundError(PaiError):
    """A named thing (file, key, snapshot, event) does not exist."""

    code = "not-found"


class KeyError_(PaiError):
    """A key is missing, malformed, encrypted with another passphrase, or not trusted."""

    code = "key"


class PassphraseError(KeyError_):
    """A passphrase was needed and not given, or it does not open the key."""

    code = "passphrase"


class TrustError(PaiError):
    """A signature, certificate or revocation list does not check out against the trust store."""

    code = "trust"


class StateError(PaiError):
    """pai's own state (DuckDB databases, lock files) is unusable or busy."""

    code = "state"


class StorageError(PaiError):
    """Writing a file failed (disk full, permission denied); nothing half-written was left."""

    code = "storage"
