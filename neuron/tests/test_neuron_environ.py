"""Other processes of the neuron's user cannot read the neuron's environment (where
``NEURON_AUTH_TOKEN`` may be): the neuron makes itself non-dumpable at start, and the kernel
then hands its ``/proc/PID/environ`` (and ``mem``, ``fd``, ...) to root, uid and gid."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest
from neuron_testing import NeuronProcess, fake_engine_config

NOGROUP = 65534


@pytest.mark.skipif(sys.platform != "linux", reason="/proc and prctl are Linux's")
async def test_the_neuron_process_is_not_dumpable(tmp_path: Path) -> None:
    neuron = NeuronProcess(tmp_path, fake_engine_config())
    # Run as root (as here), the neuron gets another group, so that a /proc entry owned by
    # root's group means it is not dumpable; otherwise the owner's uid says the same.
    root = os.getuid() == 0
    proc = neuron.start(group=NOGROUP if root else None)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            await neuron.wait_ready(client)
        owner = os.stat(f"/proc/{proc.pid}/environ")
        if root:
            assert owner.st_gid == 0, f"/proc/{proc.pid}/environ has gid {owner.st_gid}"
        else:
            assert owner.st_uid == 0, f"/proc/{proc.pid}/environ has uid {owner.st_uid}"
    finally:
        neuron.stop()
