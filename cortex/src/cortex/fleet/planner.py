"""Planning a cold load or a wake: what :func:`cortex.fleet.placement.plan` is fed about each
neuron (:meth:`Planner.candidate`), from what every replica reads alike in the neurons'
answers, plus what this cortex's own loads in progress add (:attr:`Planner.pending`,
:attr:`Planner.making_room`) and only ever as a veto; and what a wake or cold load costs
(:meth:`Planner.eta`). No I/O: the plan is made from the snapshot as it is."""

from __future__ import annotations

from cortex.errors import NoCapacity, Unplaceable
from cortex.fleet.eta import reported
from cortex.fleet.placement import (
    Candidate,
    Device,
    Eta,
    NeverFits,
    NoRoom,
    Plan,
    Resident,
    Want,
    plan,
)
from cortex.fleet.state import Fleet, Node
from cortex.settings import CatalogueModel, CortexSettings


class Planner:
    def __init__(self, fleet: Fleet, settings: CortexSettings) -> None:
        self.fleet = fleet
        self._cfg = settings.loading
        self._retry_after = settings.gateway.retry_after
        self.pending: dict[str, set[str]] = {}
        """Node name → models this cortex is loading there (not yet in the neuron's list)."""
        self.making_room: dict[str, set[str]] = {}
        """Node name → models this cortex's loads in progress are evicting there."""

    def plan(self, want: Want, only: str | None, refused: dict[str, str]) -> Plan:
        """Where ``want`` goes (on ``only`` when given; never on a neuron in ``refused``), from
        the fleet as it is now. Raises NoCapacity (503: no room now, or no neuron took it)
        or Unplaceable (404: it fits on no neuron, even empty)."""
        nodes = [
            n
            for n in self.fleet.nodes
            if n.up
            and n.status != "draining"
            and n.name not in refused
            and (only is None or n.name == only)
        ]
        if only is not None and not nodes:
            node = self.fleet.node(only)
            why = refused.get(only) or f"neuron {only} is {node.status}"
            raise NoCapacity(
                f"cannot load {want.id} on {only}: {why}", retry_after=self._retry_after
            )
        try:
            return plan(want, [self.candidate(n) for n in nodes], self.eta(want.id))
        except NoRoom as exc:
            raise NoCapacity(str(exc), retry_after=self._retry_after) from None
        except NeverFits as exc:
            if refused:
                detail = "; ".join(f"{name}: {why}" for name, why in refused.items())
                raise NoCapacity(
                    f"no neuron took {want.id} ({detail})", retry_after=self._retry_after
                ) from None
            unseen = [n.name for n in self.fleet.nodes if not n.up or n.status == "draining"]
            if unseen and only is None:
                raise NoCapacity(
                    f"{exc}; neurons not available now: {', '.join(unseen)}",
                    retry_after=self._retry_after,
                ) from None
            raise Unplaceable(str(exc), param="model") from None

    def eta(self, model: str) -> Eta:
        """Placement's cost of a wake or a cold load of ``model``: from what the neurons report
        (the same on every replica), never from this cortex's own timings."""
        defaults = {"cold": self._cfg.cold_estimate, "wake": self._cfg.wake_estimate}
        return reported(model, {n.name: n.models for n in self.fleet.up()}, defaults)

    def candidate(self, node: Node) -> Candidate:
        """What :func:`plan` needs to know about ``node``, as of now.

        Read from the neuron's answer, so that replicas that read the same answer make the
        same plan: last use by the neuron's clock (:meth:`Node.used_at`), requests in flight
        as the neuron counted them, time since a wake by the neuron's count. This cortex's
        own knowledge only adds what the neuron cannot have seen yet, and only ever as a
        veto (its own requests started since, the loads and evictions it has sent): the
        neuron refuses the same (``model_busy``, ``stale_epoch``) once they reach it.
        """
        health = node.health or {}
        discovery = node.discovery or {}
        totals = {
            d.get("index"): int(d.get("vram_total_mb") or 0)
            for d in discovery.get("devices", [])
            if isinstance(d, dict)
        }
        devices = []
        for d in health.get("devices", []):
            free, used = int(d.get("vram_free_mb") or 0), int(d.get("vram_used_mb") or 0)
            devices.append(
                Device(int(d.get("index", 0)), totals.get(d.get("index")) or free + used, free)
            )
        if not devices and totals:  # health not sampled yet: assume the devices are empty
            devices = [Device(int(i or 0), t, t) for i, t in totals.items()]
        limit = health.get("max_loaded_models", discovery.get("max_loaded_models"))
        # Going: the victims of this cortex's own loads in progress (their room is taken).
        # A model it is putting to sleep or unloading for idleness or by hand is planned as
        # the neuron reports it, like every other replica does: a plan that races that
        # change is fenced at the neuron. (An older neuron fences nothing: all of them.)
        going = node.evicting if node.epoch is None else self.making_room.get(node.name, ())
        residents = []
        for model_id, info in node.models.items():
            entry = self.fleet.entry(model_id)
            status = str(info.get("status"))
            age = node.state_age(model_id)
            settling = (
                status == "ready"
                and info.get("last_wake_s") is not None
                and age is not None
                and age < self._cfg.min_residency
            )
            # The neuron's count as of its answer (every replica read the same), and this
            # cortex's requests started since: a veto the neuron would apply anyway.
            in_flight = max(int(info.get("in_flight") or 0), node.busy(model_id))
            residents.append(
                Resident(
                    id=model_id,
                    status="unloading" if model_id in going else status,
                    vram_mb=int(info.get("vram_used_mb") or 0),
                    devices=tuple(int(d) for d in info.get("devices") or ()),
                    in_flight=in_flight,
                    last_used=node.used_at(model_id),
                    priority=entry.priority if entry else 0,
                    pinned=entry is not None and node.name in entry.pinned_on,
                    settling=settling,
                )
            )
        for model_id in self.pending.get(node.name, set()) - node.models.keys():
            entry = self.fleet.entry(model_id)
            vram = (entry.vram_mb or 0) if entry else 0
            residents.append(Resident(id=model_id, status="loading", vram_mb=vram))
        harnesses = discovery.get("harnesses")
        return Candidate(
            name=node.name,
            devices=tuple(devices),
            max_models=int(limit) if isinstance(limit, int) else None,
            residents=tuple(residents),
            harnesses=tuple(harnesses) if isinstance(harnesses, list) else None,
        )


def want_of(entry: CatalogueModel) -> Want:
    """What placement needs to know of a catalogued model."""
    return Want(
        id=entry.id,
        harness=entry.harness,
        vram_mb=entry.vram_mb,
        tensor_parallel=entry.tensor_parallel,
        min_devices=entry.min_devices,
        min_device_vram_mb=entry.min_device_vram_mb,
        pinned_on=frozenset(entry.pinned_on),
    )
