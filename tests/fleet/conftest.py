"""The fleet suite: several cortex replicas in front of several neurons (stand-in engines)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from neuron_testing import errors_logged


@pytest.fixture(autouse=True)
def no_errors_logged(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """The neurons run in the test's process: an ERROR one of them logged fails the test (the
    replicas' own logs are checked by ``replica_support.fleet``)."""
    yield
    errors_logged(request, caplog)
