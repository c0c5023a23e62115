"""The neuron's authority stamps: which boot (:attr:`Fence.instance`) and which state
(:attr:`Fence.epoch`) a command was decided from, and the fence that refuses one decided from
a state that has moved on.

Every change of a model's state bumps the epoch (:meth:`Fence.changed`); a command may carry
the epoch (and the boot) its sender planned from, and :meth:`Fence.check` raises
:class:`StaleEpoch` when it is not this one.
"""

from __future__ import annotations

import asyncio
import uuid

from neuron.errors import StaleEpoch

OTHER_BOOT = -1
"""The epoch of a command decided on another boot of this neuron: no state of this boot has
it (epochs start at 0), so the fence refuses it."""


class Fence:
    def __init__(self) -> None:
        self.instance = uuid.uuid4().hex
        """Names this boot of the neuron: epochs of another boot are never compared."""
        self.epoch = 0
        """Bumped by every change of a model's state (see :meth:`changed`)."""
        self._moved = asyncio.Event()

    def changed(self) -> None:
        """The state moved on: a new epoch, and every :meth:`watch` waiting wakes up."""
        self.epoch += 1
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def watch(self, epoch: int, wait: float) -> None:
        """Return once the epoch differs from ``epoch``, or after ``wait`` seconds."""
        if epoch != self.epoch:
            return
        moved = self._moved
        try:
            async with asyncio.timeout(wait):
                await moved.wait()
        except TimeoutError:
            pass

    def stamp(self, instance: str | None, epoch: int | None) -> int | None:
        """The epoch a command names, as this boot reads it: :data:`OTHER_BOOT` when it names
        another boot (even with no epoch: it was decided from that boot's state), else
        ``epoch`` (``instance`` absent: not checked, as older senders send none)."""
        if instance is not None and instance != self.instance:
            return OTHER_BOOT
        return epoch

    def check(self, epoch: int | None) -> None:
        """Raise :class:`StaleEpoch` if ``epoch`` is given and the state has moved on from it.

        Every state-changing command calls this after its idempotent answers and before it
        changes anything, with no await in between.
        """
        if epoch == OTHER_BOOT:
            raise StaleEpoch(
                f"this neuron restarted (instance {self.instance}) since the command was "
                "decided; plan again from the state in this answer"
            )
        if epoch is not None and epoch != self.epoch:
            raise StaleEpoch(
                f"this neuron's state has moved on (epoch {self.epoch}, the command was "
                f"decided at {epoch}); plan again from the state in this answer"
            )
