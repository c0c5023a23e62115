"""Two cortex replicas in front of two neurons balance a skewed load by the engines' numbers.

The scenario of ``bench/balance.py`` (which measures it on real replicas and fake neurons,
against the wall clock), played here in whole ticks through the routing function itself, so
the outcome is exact and the same on every machine.

A load balancer gives replica A nine clients out of ten and replica B one. B's client runs
one long generation; A's nine send short requests (``SHORT`` ticks) with pauses between them
(``PAUSE`` ticks), staggered over one cycle. Each replica polls both neurons every tick and
sees only its own requests in flight. Under the in-flight rule (what neurons that report no
engine load get) A splits its requests evenly, and B's long request makes its neuron the
busier one for the whole run. With the engines' ``running`` in ``/models``, A sees B's request
there and sends its own to the other neuron.

Load is what the engines run, sampled every tick and averaged; "within 20% of even" means the
busier neuron's average is at most 1.2 times the mean of the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cortex.fleet.routing import rank
from cortex.fleet.state import Load, Node

SHORT, PAUSE, CLIENTS, TICKS = 4, 12, 9, 400
"""A tick stands for 25 ms: the bench's 0.1 s requests and 0.3 s pauses, over 10 s."""
MODEL = "m1"


@dataclass
class Replica:
    """One cortex's view of the two neurons, kept the way its poller and relay keep it."""

    report_load: bool
    nodes: list[Node] = field(
        default_factory=lambda: [Node(name=n, base="", token=None) for n in ("n0", "n1")]
    )
    turn: int = 0

    def route(self) -> int:
        """Where the next request goes (the relay: rank, then count it in flight)."""
        self.turn += 1
        node = rank(self.nodes, MODEL, self.turn)[0]
        node.in_flight += 1
        node.model_in_flight[MODEL] = node.busy(MODEL) + 1
        return self.nodes.index(node)

    def finish(self, where: int) -> None:
        node = self.nodes[where]
        node.in_flight -= 1
        node.model_in_flight[MODEL] = node.busy(MODEL) - 1

    def poll(self, running: list[int]) -> None:
        """What the poller keeps from each neuron's ``/models``: the engine's load, and the
        part of it that is not this replica's."""
        for node, count in zip(self.nodes, running, strict=True):
            if not self.report_load:
                continue
            node.loads = {MODEL: Load(running=count, waiting=0, kv_cache_usage=0.0)}
            node.queued_others = {MODEL: max(0, count - node.busy(MODEL))}


def average_load(report_load: bool) -> tuple[float, float]:
    """Each engine's running requests, averaged over the run."""
    a, b = Replica(report_load), Replica(report_load)
    running = [0, 0]
    b_long = b.route()  # B's long generation, running all through
    running[b_long] += 1
    # Client i of A starts its next request at tick starts[i], staggered over one cycle so
    # requests come steadily and not in bursts; ends[i] is where its request runs, and the
    # tick it ends.
    starts = [i * (SHORT + PAUSE) // CLIENTS for i in range(CLIENTS)]
    ends: dict[int, tuple[int, int]] = {}
    totals = [0, 0]
    for tick in range(TICKS):
        for client, (where, end) in list(ends.items()):
            if end == tick:
                a.finish(where)
                running[where] -= 1
                del ends[client]
                starts[client] = tick + PAUSE
        a.poll(running)
        b.poll(running)
        for client in range(CLIENTS):
            if starts[client] == tick:
                where = a.route()
                running[where] += 1
                ends[client] = (where, tick + SHORT)
        if tick >= SHORT + PAUSE:  # all nine have started
            totals[0] += running[0]
            totals[1] += running[1]
    samples = TICKS - (SHORT + PAUSE)
    return totals[0] / samples, totals[1] / samples


def imbalance(loads: tuple[float, float]) -> float:
    """The busier neuron's load over the even share (1.0 is perfectly even)."""
    return max(loads) / (sum(loads) / 2)


def test_two_replicas_balance_a_skewed_load_by_the_engines_numbers() -> None:
    loads = average_load(report_load=True)
    assert imbalance(loads) <= 1.2, loads


def test_the_in_flight_rule_alone_does_not() -> None:
    loads = average_load(report_load=False)
    assert imbalance(loads) > 1.2, loads


def test_the_busier_engine_under_the_in_flight_rule_is_the_long_requests() -> None:
    """A splits evenly, so the neuron running B's generation carries one request more."""
    loads = average_load(report_load=False)
    assert abs(abs(loads[0] - loads[1]) - 1.0) < 0.05, loads
