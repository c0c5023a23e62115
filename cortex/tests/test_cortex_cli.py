"""The cortex package installs and its command runs (the gateway itself comes next)."""

from __future__ import annotations

import pytest

from cortex import __version__
from cortex.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert __version__ in capsys.readouterr().out
