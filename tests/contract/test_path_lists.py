"""cortex relays exactly the inference paths the neuron serves. Both packages are needed, so
this lives outside cortex/tests (which also run on cortex alone: ``make test-lowest``)."""

from __future__ import annotations

from cortex.upstream.relay import PATHS as CORTEX_PATHS
from neuron.routes.proxy import PATHS as NEURON_PATHS


def test_cortex_relays_exactly_the_paths_the_neuron_serves() -> None:
    assert sorted(CORTEX_PATHS) == sorted(NEURON_PATHS)
    assert len(set(CORTEX_PATHS)) == len(CORTEX_PATHS)
