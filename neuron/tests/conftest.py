"""Fixtures for the neuron's fast tests; the helpers live in ``neuron_testing``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from neuron_testing import Running, errors_logged, running, settings_for


@pytest.fixture(autouse=True)
def no_errors_logged(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Fail a test in which the neuron (or the event loop) logged an ERROR: the client may
    have got its answer while the neuron hit a bug. A test that provokes one on purpose says
    so: ``@pytest.mark.logs_error("text")``."""
    yield
    errors_logged(request, caplog)


@pytest.fixture
async def neuron() -> AsyncIterator[Running]:
    async with running(settings_for()) as r:
        yield r
