"""How long a model takes to become ready, by kind (``cold`` load or ``wake``).

Two sources, for two uses:

- :func:`reported`, what placement compares (wake a sleeper here, or cold-load there?): the
  neurons' own figures (``last_load_s``, ``last_wake_s`` in ``/models``). Every replica reads
  the same figures from the same answer, so every replica ranks a wake and a cold load the
  same way; a replica's own timings would differ from its peers' (only the replica that did a
  load timed it) and could send two replicas to two neurons for one model.
- :class:`Estimates`, this cortex's own timings (per model and neuron, a moving average of
  what its loads and wakes took, from request to ready): ``/v1/models`` shows them as
  ``estimated_ready_s``, and a 503 for a model still coming sets ``Retry-After`` from them
  (:func:`retry_after`). For a model this cortex never timed (another replica loaded it),
  the neurons' figures stand in.

Both fall back alike: for a neuron with no figure, the mean over the model's other neurons;
else the configured default.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from cortex.fleet.placement import Eta

KINDS = ("cold", "wake")
WEIGHT = 0.3
"""Of a new measurement in the moving average."""
RETRY_FLOOR = 0.25
"""Of the estimate: ``Retry-After`` for a model whose load or wake overran its estimate, so
that it is asked about again every quarter of the estimate, not every second."""
RETRY_CAP = 60.0
"""Seconds: the most that floor comes to (a 20-minute estimate is not asked about hourly)."""


def retry_after(left: float, estimate: float) -> int:
    """Whole seconds for ``Retry-After``, at least 1: while the load or wake is on schedule
    (``left`` > 0), the time ``left`` of the ``estimate`` (never more: a client asking just
    before it is due is not sent away for longer); once it has overrun, :data:`RETRY_FLOOR`
    of the estimate, at most :data:`RETRY_CAP`."""
    if left > 0:
        return max(1, math.ceil(left))
    return max(1, math.ceil(min(RETRY_FLOOR * estimate, RETRY_CAP)))


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

    def eta(self, model: str, node: str | None, kind: str, fallback: Eta | None = None) -> float:
        """Expected seconds from start to ready for ``model`` on ``node`` (any, if ``None``):
        this cortex's own timing there, else the mean of its own on the other neurons. With
        none of its own (it never loaded or woke the model: another replica did), the
        ``fallback`` for ``node`` where given (the neurons' figures, :func:`reported`, which
        end in the same defaults), else the configured default."""
        if node is not None and (model, node, kind) in self._seen:
            return self._seen[(model, node, kind)]
        others = [v for (m, _, k), v in self._seen.items() if m == model and k == kind]
        if others:
            return sum(others) / len(others)
        if fallback is not None and node is not None:
            return fallback(node, kind)
        return self._defaults[kind]

    def started(self, model: str, node: str, kind: str, fallback: Eta | None = None) -> None:
        """``model`` is being loaded or woken on ``node`` now; its estimate as :meth:`eta`."""
        self._coming[model] = (kind, self._clock(), self.eta(model, node, kind, fallback))

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


FIELDS = {"cold": "last_load_s", "wake": "last_wake_s"}
"""The ``ModelInfo`` field a neuron reports each kind's last duration in."""


def reported(
    model: str, fleet: Mapping[str, Mapping[str, Mapping[str, Any]]], defaults: Mapping[str, float]
) -> Eta:
    """Placement's ``eta`` for ``model``, from ``fleet`` (neuron name → its ``/models`` by id).

    ``model``'s own figure on that neuron; else the mean of its figures on the other
    neurons (summed in name order: the same float on every replica); else ``defaults``.
    """

    def eta(node: str, kind: str) -> float:
        field = FIELDS[kind]
        here = _seconds(fleet.get(node, {}).get(model, {}).get(field))
        if here is not None:
            return here
        others = [
            seconds
            for name in sorted(fleet)
            if (seconds := _seconds(fleet[name].get(model, {}).get(field))) is not None
        ]
        return sum(others) / len(others) if others else defaults[kind]

    return eta


def _seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None
