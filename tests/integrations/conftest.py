"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration_helpers import shared_firewall


@pytest.fixture(scope="module")
def local() -> Iterator[Any]:
    """The session's shared real firewall (local backend), for comparing other backends."""
    yield from shared_firewall()
