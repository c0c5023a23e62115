"""``python -I guard.py PARENT -- CMD...``: an engine must not outlive the neuron.

The neuron starts every engine through this guard, as the leader of a new process group.
The guard asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), runs
the engine command in its own group, and exits with the engine's status.

- Normal unload: the neuron sends SIGTERM to the whole group. The guard ignores it (its
  parent is alive), the engine and its children shut down, the guard exits with the
  engine's status, and the neuron SIGKILLs whatever is left after its bounded wait.
- The neuron dies (even by SIGKILL): the guard notices (signal or a changed parent pid),
  sends SIGTERM to the group, waits ``GRACE`` seconds, then SIGKILLs the group, itself
  included. No engine is left holding VRAM.

Standard library only: it runs before anything else is imported.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
GRACE = 10.0
POLL = 0.2


def _ask_for_parent_death_signal() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent-pid poll below still works
        pass


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -I guard.py PARENT_PID -- CMD...\n")
        return 2
    parent, cmd = int(argv[0]), argv[2:]
    _ask_for_parent_death_signal()
    # SIGTERM only wakes us; whether it means "unload" or "orphaned" is decided below.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent:
        return 1
    child = subprocess.Popen(cmd)  # noqa: S603 - the neuron built this argv
    deadline: float | None = None
    while True:
        try:
            returncode = child.wait(timeout=POLL)
            break
        except subprocess.TimeoutExpired:
            pass
        if deadline is None and os.getppid() != parent:
            deadline = time.monotonic() + GRACE
            os.killpg(0, signal.SIGTERM)
        if deadline is not None and time.monotonic() > deadline:
            os.killpg(0, signal.SIGKILL)
    if deadline is not None:
        # Orphaned: the engine's own children may linger; nobody else will reap them.
        time.sleep(1.0)
        os.killpg(0, signal.SIGKILL)
    return _exit_code(returncode)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
