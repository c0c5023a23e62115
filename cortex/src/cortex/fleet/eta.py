"""How long a model takes to become ready, by kind (``cold`` load or ``wake``), as measured.

Per model and neuron, a moving average of what loads and wakes took; for a neuron with no
measurement yet, the average over the model's other neurons; else the configured default.
Placement compares these (wake a sleeper here, or cold-load there?), ``/v1/models`` shows
them as ``estimated_ready_s``, and a 503 for a model still coming sets ``Retry-After`` from them.
"""

from __future__ import annotations

import time

KINDS = ("cold", "wake")
WEIGHT = 0.3
"""Of a new measurement in the moving average."""


class Estimates:
    def __init__(self, cold_s: float, wake_s: float) -> None:
        self._defaults = {"cold": cold_s, "wake": wake_s}
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
        self._coming[model] = (kind, time.monotonic(), self.eta(model, node, kind))

    def ended(self, model: str) -> None:
        self._coming.pop(model, None)

    def coming(self, model: str) -> tuple[str, float] | None:
        """``(kind, seconds left)`` for a model this cortex is loading or waking now."""
        if model not in self._coming:
            return None
        kind, began, estimate = self._coming[model]
        return kind, max(0.0, estimate - (time.monotonic() - began))
