"""The Hypercorn internals the listener drives are checked, loudly, not trusted."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from neuron import hypercorn_seam


def test_the_installed_hypercorn_has_the_internals_the_listener_drives() -> None:
    hypercorn_seam.check()  # raises HypercornChanged otherwise


def test_a_changed_internal_stops_the_neuron_at_start_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def changed(app: Any, loop: Any, config: Any, context: Any, reader: Any, writer: Any) -> None:
        """A TCPServer that lost its ``state`` parameter."""

    expected = dict(hypercorn_seam.EXPECTED)
    expected["hypercorn.asyncio.tcp_server.TCPServer"] = (
        changed,
        expected["hypercorn.asyncio.tcp_server.TCPServer"][1],
    )
    monkeypatch.setattr(hypercorn_seam, "EXPECTED", expected)
    with pytest.raises(hypercorn_seam.HypercornChanged, match=r"TCPServer\(.*expected .*state"):
        hypercorn_seam.check()


def test_the_check_runs_when_the_seam_is_imported() -> None:
    """In a fresh interpreter, as at the neuron's start: a changed ``wrap_app`` stops it."""
    script = (
        "import hypercorn.utils\n"
        "hypercorn.utils.wrap_app = lambda app, mode: None\n"
        "import neuron.hypercorn_seam\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "HypercornChanged: Hypercorn" in done.stderr
    assert "hypercorn.utils.wrap_app('app', 'mode')" in done.stderr


def test_the_listener_reaches_hypercorn_only_through_the_seam() -> None:
    from pathlib import Path

    import neuron

    for path in Path(neuron.__file__).parent.rglob("*.py"):
        if path.name == "hypercorn_seam.py":
            continue
        lines = path.read_text().splitlines()
        below_serve = [
            line
            for line in lines
            if line.startswith(("from hypercorn", "import hypercorn"))
            and not line.startswith(("from hypercorn.config ", "from hypercorn.asyncio import"))
        ]
        assert below_serve == [], f"{path}: {below_serve}"
