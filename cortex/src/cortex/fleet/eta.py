"""How long a model takes to become ready, by kind (``cold`` load or ``wake``), as measured.

Per model and neuron, a moving average of what loads and wakes took; for a neuron with no
measurement yet, the average over the model's other neurons; else the configured default.
Placement compares these (wake a sleeper here, or cold-load there?), ``/v1/models`` shows
them as ``estimated_ready_s``, and a 503 for a model still coming sets ``Retry-After`` from them
(:func:`retry_after`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

KINDS = ("cold", "wake")
WEIGHT = 0.3
"""Of a new measurement in the moving average."""
RETRY_FLOOR = 0.25
"""Of the estimate: the shortest ``Retry-After`` for a model still coming. A load that
overruns its estimate is asked about again every quarter of the estimate, not every second."""


def retry_after(left: float, estimate: float) -> int:
    """Whole seconds for ``Retry-After``: the ``left`` of the ``estimate``, but never less
    than :data:`RETRY_FLOOR` of it, nor less than 1."""
    return max(1, math.ceil(max(left, RETRY_FLOOR * estimate)))


class Estimates:
    def __init__(
        self, cold_s: float, wake_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._defaults = {"cold": cold_s, "wake": wake_s}
        self._clock = clock
        self._seen: dict[tuple[str, str, str], float] = {}
        self._coming: dict[str, tuple[str, float, float]] = {}
        """Model → (kind, when it started (monotonic), its estimate then)."""

    def observe(self, model: str, node: str, kind: str, seconds: float) -> None:
        key = (model, node, kind)
        before = self._seen.get(key)
        self._seen[key] = seconds if before is None else before + WEIGHT * (seconds - before)

    def eta(self, model: str, node: str | None, kind: str) -> float:
        """Expected seconds from start to ready for ``model`` on ``node`` (any, if ``None``)."""
        if node is not None and (model, node, kind) in self._seen:
            return self._seen[(model, node, kind)]
        others = [v for (m, _, k), v in self._seen.items() if m == model and k == kind]
        if others:
            return sum(others) / len(others)
        return self._defaults[kind]

    def started(self, model: str, node: str, kind: str) -> None:
        self._coming[model] = (kind, self._clock(), self.eta(model, node, kind))

    def ended(self, model: str) -> None:
        self._coming.pop(model, None)

    def retry_after(self, model: str) -> int | None:
        """:func:`retry_after` for a model this cortex is loading or waking now, else ``None``."""
        if model not in self._coming:
            return None
        _, began, estimate = self._coming[model]
        return retry_after(estimate - (self._clock() - began), estimate)

    def coming(self, model: str) -> tuple[str, float] | None:
        """``(kind, seconds left)`` for a model this cortex is loading or waking now."""
        if model not in self._coming:
            return None
        kind, began, estimate = self._coming[model]
        return kind, max(0.0, estimate - (self._clock() - began))
