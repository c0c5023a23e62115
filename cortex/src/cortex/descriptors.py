"""Open-file descriptors: how many client connections the process can really hold.

Each client connection that holds a stream costs two descriptors (the client's socket and
the neuron's), and the listeners, the poller's connections, logs and the event loop need a
few more (``SPARE``). At start cortex raises its soft ``RLIMIT_NOFILE`` as far as the hard
limit allows. If that is still short of what ``gateway.max_connections`` needs, it says so
in one warning and accepts only as many client connections as the limit has room for: past
them a client gets 503 (as past ``max_connections``), and ``/metrics``, ``/health`` and the
neurons stay reachable, where an accept failing with EMFILE would reach none of them.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("cortex")

PER_CONNECTION = 2
"""Descriptors a client connection may cost: its socket and the neuron connection it holds."""
SPARE = 64
"""Descriptors kept for everything else: listeners, the poller, logs, the event loop,
connections turned away while they are told so."""


def needed(max_connections: int) -> int:
    return PER_CONNECTION * max_connections + SPARE


def connection_cap(max_connections: int) -> int:
    """The client connections to accept: ``max_connections``, or fewer if descriptors are
    short even after raising the soft limit (then logged once, as a warning)."""
    want = needed(max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError) as exc:
                log.debug("could not raise RLIMIT_NOFILE to %d: %s", target, exc)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return max_connections
    cap = max(1, (soft - SPARE) // PER_CONNECTION)
    log.warning(
        "RLIMIT_NOFILE is %d, below the %d descriptors gateway.max_connections = %d needs "
        "(%d per held stream, %d spare): client connections are capped at %d so that "
        "/metrics and /health stay reachable; raise the limit (LimitNOFILE=, ulimit -n) "
        "or lower max_connections",
        soft,
        want,
        max_connections,
        PER_CONNECTION,
        SPARE,
        cap,
    )
    return cap
