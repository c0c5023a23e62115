"""Where a model goes, and what makes room for it: plain values in, plain values out.

:func:`plan` picks a neuron for a model that is not ready anywhere, in this order:

0. the residency ladder: a neuron where the model is ``waking`` (the load joins the wake), or
   where it is ``sleeping`` and room can be made, unless a cold load elsewhere is expected
   to be ready sooner (``eta``: as the neurons report it, defaults until they do);
1. a neuron where the model is already ``loading`` (the load joins it);
2. a neuron the model is pinned on, if it fits there now or after evictions;
3. a neuron where it fits now (free VRAM as reported, and under ``max_loaded_models``);
4. a neuron where it fits after evicting idle models;

ties going to the neuron with the fewest models, then the most free VRAM in whole GiB, then
the highest rendezvous hash of (model, neuron). Every input is what every replica reads
alike from the neurons' answers (the caller builds them so: ``eta`` from the neurons'
reported load and wake times, ``last_used`` by the neuron's clock, ``in_flight`` as the
neuron counted it), so that replicas seeing the same fleet choose the same neuron for the
same cold model, whether that is a wake or a cold load. Neurons with too few devices,
devices that are too small, or without the model's harness are never chosen.

:func:`victims` says which models to unload on a neuron to make room: ``ready`` models that
are not pinned there and serve no request, lowest ``priority`` first, then least recently
used (by the neuron's clock, which every replica reads alike), until the new
model fits. A model with requests in flight is never evicted, nor one woken less than the
minimum residency ago (``Resident.settling``). The neuron decides whether an evicted model
sleeps or stops (its host RAM budget); sleeping models hold no slot of ``max_loaded_models``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

HOLDING = frozenset({"loading", "ready", "unloading", "waking"})
"""States in which a model occupies an awake engine (``failed`` and ``sleeping`` ones do not)."""
DEFAULT_ETA = {"wake": 5.0, "cold": 60.0}
"""Seconds until ready, by kind, where nothing has been measured (``[loading]`` overrides)."""

TIE_MB = 1024
"""Free VRAM breaks ties in whole GiB: the exact figure moves by megabytes between two reads
of one neuron, and replicas must not break a tie on a difference one of them did not see."""

Eta = Callable[[str, str], float]
"""``eta(node, kind)``: the expected seconds until the model is ready there (``wake``/``cold``)."""


@dataclass(frozen=True)
class Device:
    index: int
    total_mb: int
    free_mb: int


@dataclass(frozen=True)
class Resident:
    """A model on a neuron, as the planner sees it."""

    id: str
    status: str
    vram_mb: int = 0
    devices: tuple[int, ...] = ()
    in_flight: int = 0
    last_used: float = 0.0
    priority: int = 0
    pinned: bool = False
    settling: bool = False
    """Woken less than the minimum residency ago: not demoted yet."""


@dataclass(frozen=True)
class Candidate:
    """A neuron that is up and not draining."""

    name: str
    devices: tuple[Device, ...] = ()
    max_models: int | None = None
    residents: tuple[Resident, ...] = ()
    harnesses: tuple[str, ...] | None = None
    """``None``: not known yet (discovery not read); assumed to have every harness."""


@dataclass(frozen=True)
class Want:
    """What a model needs, from its catalogue entry."""

    id: str
    harness: str = "vllm"
    vram_mb: int | None = None
    tensor_parallel: int = 1
    min_devices: int = 0
    min_device_vram_mb: int = 0
    pinned_on: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Plan:
    node: str
    evict: tuple[str, ...] = ()
    joins: bool = False
    """The model is already loading there: no eviction, the load joins it."""
    wakes: bool = False
    """The model sleeps (or is waking) there: the load wakes it."""


class NeverFits(Exception):
    """No neuron of the fleet could ever hold the model (404)."""


class NoRoom(Exception):
    """Some neuron could hold the model, but nothing can be evicted now (503)."""


def _default_eta(node: str, kind: str) -> float:
    return DEFAULT_ETA[kind]


def plan(want: Want, candidates: Sequence[Candidate], eta: Eta = _default_eta) -> Plan:
    """The neuron for ``want`` and the models to evict there first.

    Raises :class:`NeverFits` when no candidate could hold it even empty, and
    :class:`NoRoom` when some could but their models are busy or pinned.
    """
    for cand in candidates:
        if any(r.id == want.id and r.status == "waking" for r in cand.residents):
            return Plan(cand.name, joins=True, wakes=True)
    wakes = []
    for cand in candidates:
        if any(r.id == want.id and r.status == "sleeping" for r in cand.residents):
            evict = victims(want, cand)
            if evict is not None:
                wakes.append((cand, evict))
    if not wakes:
        return _cold(want, candidates)

    def wake_cost(option: tuple[Candidate, tuple[Resident, ...]]) -> tuple[object, ...]:
        cand, evict = option
        return (eta(cand.name, "wake"), len(evict), -rendezvous(want.id, cand.name))

    cand, evict = min(wakes, key=wake_cost)
    woken = Plan(cand.name, tuple(r.id for r in evict), wakes=True)
    try:
        cold = _cold(want, [c for c in candidates if c.name != cand.name])
    except (NoRoom, NeverFits):
        return woken
    return cold if eta(cold.node, "cold") < eta(cand.name, "wake") else woken


def _cold(want: Want, candidates: Sequence[Candidate]) -> Plan:
    for cand in candidates:
        if any(r.id == want.id and r.status == "loading" for r in cand.residents):
            return Plan(cand.name, joins=True)
    able: list[Candidate] = []
    reasons: list[str] = []
    for cand in candidates:
        why = never(want, cand)
        if why is None:
            able.append(cand)
        else:
            reasons.append(f"{cand.name}: {why}")
    if not able:
        detail = "; ".join(reasons) if reasons else "no neuron is up"
        raise NeverFits(f"no neuron can hold {want.id} ({detail})")

    def tie(c: Candidate) -> tuple[int, int, int]:
        holding = sum(1 for r in c.residents if r.status in HOLDING)
        free_gib = sum(d.free_mb for d in c.devices) // TIE_MB
        return (holding, -free_gib, -rendezvous(want.id, c.name))

    pinned = [c for c in able if c.name in want.pinned_on]
    for group in (pinned, able):
        fitting = [c for c in group if fits(want, c)]
        if fitting:
            return Plan(min(fitting, key=tie).name)
        options = []
        for cand in group:
            evict = victims(want, cand)
            if evict is not None:
                options.append((cand, evict))
        if options:

            def cost(option: tuple[Candidate, tuple[Resident, ...]]) -> tuple[object, ...]:
                cand, evict = option
                newest = max(r.last_used for r in evict) if evict else 0.0
                return (len(evict), max(r.priority for r in evict), newest, *tie(cand))

            cand, evict = min(options, key=cost)
            return Plan(cand.name, tuple(r.id for r in evict))
    raise NoRoom(
        f"no room for {want.id}: every neuron that can hold it is full, and its models "
        "are serving requests, pinned, or still loading"
    )


def rendezvous(model: str, node: str) -> int:
    """The highest-random-weight of ``node`` for ``model``: the same on every replica."""
    digest = hashlib.blake2b(f"{model}\0{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def never(want: Want, cand: Candidate) -> str | None:
    """Why ``cand`` could never hold ``want`` even with nothing loaded (``None``: it could)."""
    if cand.harnesses is not None and want.harness not in cand.harnesses:
        return f"no {want.harness} harness"
    if cand.max_models == 0:
        return "max_loaded_models is 0"
    usable = [d for d in cand.devices if d.total_mb >= want.min_device_vram_mb]
    needed = max(want.min_devices, want.tensor_parallel if cand.devices else 0)
    if want.min_device_vram_mb and not usable:
        return f"no GPU with {want.min_device_vram_mb} MiB"
    if len(usable) < needed:
        size = f" of {want.min_device_vram_mb} MiB" if want.min_device_vram_mb else ""
        return f"needs {needed} GPU(s){size}, has {len(usable)}"
    if want.vram_mb and cand.devices:
        share = want.vram_mb / max(1, want.tensor_parallel)
        big = sorted((d.total_mb for d in usable), reverse=True)[: max(1, want.tensor_parallel)]
        if any(total < share for total in big):
            return f"needs {want.vram_mb} MiB over {want.tensor_parallel} GPU(s)"
    return None


def fits(want: Want, cand: Candidate, gone: Iterable[str] = ()) -> bool:
    """Would ``want`` fit on ``cand`` now, once the models in ``gone`` are unloaded?"""
    gone_ids = set(gone)
    staying = [r for r in cand.residents if r.status in HOLDING and r.id not in gone_ids]
    if cand.max_models is not None and len(staying) + 1 > cand.max_models:
        return False
    if not cand.devices or not want.vram_mb:
        # No GPUs (the count is the capacity), or no footprint to check: the neuron's own
        # check (vLLM's real claim) decides.
        return True
    freed: dict[int, float] = {}
    for r in cand.residents:
        if r.id in gone_ids and r.devices:
            for d in r.devices:
                freed[d] = freed.get(d, 0.0) + r.vram_mb / len(r.devices)
    usable = [d for d in cand.devices if d.total_mb >= want.min_device_vram_mb]
    count = max(1, want.tensor_parallel)
    free = sorted((d.free_mb + freed.get(d.index, 0.0) for d in usable), reverse=True)
    return len(free) >= count and all(f >= want.vram_mb / count for f in free[:count])


def victims(want: Want, cand: Candidate) -> tuple[Resident, ...] | None:
    """The fewest evictable models to unload on ``cand`` so ``want`` fits (``None``: cannot)."""
    if fits(want, cand):
        return ()
    order = sorted(
        (r for r in cand.residents if evictable(r)),
        key=lambda r: (r.priority, r.last_used, r.id),
    )
    chosen: list[Resident] = []
    for r in order:
        chosen.append(r)
        if fits(want, cand, (c.id for c in chosen)):
            return tuple(chosen)
    return None


def evictable(r: Resident) -> bool:
    return r.status == "ready" and not r.pinned and r.in_flight == 0 and not r.settling
