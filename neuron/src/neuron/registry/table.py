"""The table of models on this neuron (one :class:`Slot` per model id), the views of it that
placement and the residency ladder count, and publishing a change of it (a new epoch, and the
per-state gauge)."""

from __future__ import annotations

from neuron.metrics import NeuronMetrics
from neuron.registry.fence import Fence
from neuron.registry.slot import Slot, State


class Table:
    def __init__(self, fence: Fence, metrics: NeuronMetrics) -> None:
        self.fence = fence
        self._metrics = metrics
        self._slots: dict[str, Slot] = {}

    def get(self, model_id: str) -> Slot | None:
        return self._slots.get(model_id)

    def holds(self, slot: Slot) -> bool:
        """Whether ``slot`` is still the one registered for its model (not unloaded, nor
        replaced, meanwhile)."""
        return self._slots.get(slot.model_id) is slot

    def add(self, slot: Slot) -> None:
        self._slots[slot.model_id] = slot

    def forget(self, slot: Slot) -> None:
        """Drop ``slot`` if it is still the registered one."""
        if self._slots.get(slot.model_id) is slot:
            del self._slots[slot.model_id]

    def ids(self) -> list[str]:
        return list(self._slots)

    def slots(self) -> list[Slot]:
        return list(self._slots.values())

    def __len__(self) -> int:
        return len(self._slots)

    def engines(self) -> list[Slot]:
        """Slots that hold (or are about to hold, or still release) an engine: not failed."""
        return [s for s in self._slots.values() if s.state is not State.FAILED]

    def awake(self) -> list[Slot]:
        """Engines counted by ``max_loaded_models``: all but failed and sleeping ones."""
        return [s for s in self.engines() if s.state is not State.SLEEPING]

    def sleepers(self) -> list[Slot]:
        return [s for s in self._slots.values() if s.state is State.SLEEPING]

    def host_ram_used_mb(self) -> int:
        """Host RAM charged for sleepers: every engine that has begun a sleep since it started
        (a sleep under way included)."""
        return sum(s.host_ram_mb for s in self.engines())

    def publish(self) -> None:
        """A model's state changed: a new epoch (waking every watcher), and the gauge."""
        self.fence.changed()
        counts: dict[str, int] = {}
        for slot in self._slots.values():
            counts[slot.state] = counts.get(slot.state, 0) + 1
        self._metrics.set_states(counts)
