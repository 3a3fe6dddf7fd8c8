"""Developer sessions. `./dev.sh` is the quick path; nox gives isolated, repeatable ones."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (integration tests included where the machine allows them)."""
    session.install("-e", ".[dev,build,control]")
    session.run("pytest", *session.posargs)


@nox.session
def provision(session: nox.Session) -> None:
    """Provisioning integration tests on real SSH test hosts (needs root and debootstrap)."""
    session.install("-e", ".[dev,build,control]")
    session.run(
        "pytest", "-m", "integration", "tests/integration/test_provision.py", *session.posargs
    )


@nox.session(name="ansible-lint")
def ansible_lint(session: nox.Session) -> None:
    """ansible-lint (production profile) over the packaged playbooks and roles, offline."""
    session.install("ansible-lint", "ansible-core>=2.17,<2.20")
    session.chdir("playbooks")
    session.run(
        "ansible-lint", "install.yml", "rollback.yml", "roles",
        env={"ANSIBLE_ROLES_PATH": "roles"},
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy -p pai against an installed (non-editable) build."""
    session.install(".[dev]")
    session.chdir(session.create_tmp())
    session.run("mypy", "--config-file", f"{session.invoked_from}/pyproject.toml", "-p", "pai")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks in bench/: each prints a table of ratios against a same-run baseline."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "bench", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job end to end (same as ./dev.sh demo)."""
    session.install("-e", ".[dev]")
    session.run("python", "scripts/demo.py", *session.posargs)
