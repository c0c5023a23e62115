"""Fixtures for the neuron's fast tests; the helpers live in ``neuron_testing``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from neuron_testing import Running, running, settings_for


@pytest.fixture
async def neuron() -> AsyncIterator[Running]:
    async with running(settings_for()) as r:
        yield r
