"""Fixtures for the provisioning integration tests: real SSH hosts made on this machine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration import hosts


@pytest.fixture(scope="module")
def lab2() -> Iterator[hosts.Lab]:
    """Two fresh hosts on their own bridge, torn down after the module (also on failure).

    Not root or no debootstrap is a failure, not a skip: CI runs as root and must run these.
    """
    with hosts.lab(2) as the_lab:
        yield the_lab
