"""cortex's client connections fit its descriptor limit (issue 20, item 11).

Run in a child process under a lowered hard ``RLIMIT_NOFILE`` (the test process keeps its
own): below what ``max_connections`` needs, one warning, and a cap that leaves room for
``/metrics`` and ``/health``; a soft limit under a roomier hard one is raised instead.
"""

from __future__ import annotations

import resource
import subprocess
import sys

PROBE = """
import logging, resource, sys
logging.basicConfig(level="INFO", format="%(levelname)s %(message)s", stream=sys.stdout)
from cortex.descriptors import connection_cap
print("cap", connection_cap(int(sys.argv[1])))
print("soft", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def _probe(max_connections: int, soft: int, hard: int) -> list[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(max_connections)],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=limit,  # only setrlimit between fork and exec
        check=True,
    )
    return done.stdout.splitlines()


def test_under_a_hard_limit_of_1024_one_warning_and_room_for_the_metrics_port() -> None:
    lines = _probe(8192, 1024, 1024)
    warnings = [line for line in lines if line.startswith("WARNING ")]
    assert len(warnings) == 1, lines
    assert "RLIMIT_NOFILE is 1024, below the 16448 descriptors" in warnings[0]
    assert "cap 480" in lines  # (1024 - 64 spare) / 2 per held stream


def test_a_low_soft_limit_is_raised_to_what_is_needed() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        assert hard >= 2 * 1000 + 64, "this test needs a hard limit of 2,064 descriptors"
    lines = _probe(1000, 256, hard)
    assert lines == ["cap 1000", "soft 2064"], lines


def test_enough_descriptors_no_warning() -> None:
    lines = _probe(100, 1024, 1024)
    assert lines == ["cap 100", "soft 1024"], lines
