"""Room-making: which models a load or a wake displaces (named by the command, or chosen
here), whether what is left fits, and the GPU memory each engine reserves. Plain reads of
the :class:`Table` and device samples; nothing here awaits or changes a slot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from neuron.discovery import DeviceSample
from neuron.errors import DoesNotFit, ModelBusy, StaleEpoch
from neuron.registry.slot import Slot, State
from neuron.registry.table import Table
from neuron.settings import ModelSpec, VllmHarness


def evicted(table: Table, evict: tuple[str, ...], model_id: str) -> list[Slot]:
    """The models a command's ``evict`` names for ``model_id``'s room, each ready (or asleep)
    and idle: else StaleEpoch, or ModelBusy."""
    victims = []
    for name in dict.fromkeys(evict):
        victim = table.get(name)
        asleep = victim is not None and victim.state is State.SLEEPING
        if name == model_id or victim is None or not (asleep or victim.state is State.READY):
            raise StaleEpoch(f"cannot evict {name!r}: it is not ready on this neuron")
        # A sleeper's requests are those waiting for its wake: it is as busy as a ready one.
        if victim.in_flight:
            raise ModelBusy(
                f"cannot evict {name!r}: {victim.in_flight} request(s) in flight",
                param="evict",
            )
        victims.append(victim)  # a sleeper evicted is stopped, for host RAM
    return victims


def room_to_wake(
    table: Table,
    slot: Slot,
    victims: list[Slot],
    samples: list[DeviceSample],
    make_room: bool,
    limit: int | None,
    kept_awake: Callable[[Slot], bool],
) -> list[Slot]:
    """More victims for ``slot`` to wake (only with ``make_room``), or DoesNotFit.

    ``limit``: ``max_loaded_models``; ``kept_awake``: never one of them."""
    awake = [s for s in table.awake() if s not in victims and s is not slot]
    more: list[Slot] = []
    if limit is not None and len(awake) + 1 > limit:
        need = len(awake) + 1 - limit
        kept = [s for s in awake if kept_awake(s)]
        idle = sorted(
            (s for s in awake if s.state is State.READY and not s.in_flight and s not in kept),
            key=lambda s: s.used or s.ready_at or 0.0,
        )
        if not make_room or len(idle) < need:
            names = ", ".join(sorted(s.model_id for s in awake))
            why = (
                f" ({', '.join(sorted(s.model_id for s in kept))} kept awake: default "
                "models, or woken less than [sleep] min_residency ago)"
                if kept and make_room
                else ""
            )
            raise DoesNotFit(
                f"{slot.model_id} cannot wake: this neuron keeps at most {limit} model(s) "
                f"awake and has {len(awake)} ({names}); put one to sleep first{why}"
            )
        more = idle[:need]
    if slot.engine.devices:
        left = less_reservations(table, samples, victims + more)
        free = {s.index: s.vram_free_mb for s in left}
        back = (slot.reserved_mb - slot.sleep_vram_mb) // len(slot.engine.devices)
        short = [d for d in slot.engine.devices if free.get(d, 0) < back]
        if short:
            raise DoesNotFit(
                f"{slot.model_id} cannot wake: GPU(s) {short} lack the {back} MiB "
                "it gave back when it slept"
            )
    return more


def less_reservations(
    table: Table, samples: list[DeviceSample], victims: list[Slot] | None = None
) -> list[DeviceSample]:
    """Device samples less what engines still starting will claim (not yet visible),
    plus what the ``victims`` (about to be evicted) give back."""
    pending: dict[int, int] = {}
    for slot in table.slots():
        if slot.state is State.LOADING and slot.engine.devices:
            share = slot.reserved_mb // len(slot.engine.devices)
            for d in slot.engine.devices:
                pending[d] = pending.get(d, 0) + share
    for slot in victims or []:
        if slot.engine.devices:
            share = slot.reserved_mb // len(slot.engine.devices)
            for d in slot.engine.devices:
                pending[d] = pending.get(d, 0) - share
    return [
        replace(
            s,
            vram_used_mb=max(0, s.vram_used_mb + pending.get(s.index, 0)),
            vram_free_mb=max(0, s.vram_free_mb - pending.get(s.index, 0)),
        )
        for s in samples
    ]


def reservation(
    spec: ModelSpec,
    devices: list[int] | None,
    samples: list[DeviceSample],
    harness: VllmHarness,
) -> int:
    if not devices:
        return 0
    utilization = spec.gpu_memory_utilization or harness.gpu_memory_utilization
    totals = {s.index: s.vram_total_mb for s in samples}
    claimed = sum(utilization * totals.get(d, 0) for d in devices)
    return int(max(claimed, spec.vram_mb or 0))
