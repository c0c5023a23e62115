"""The chaos suite's fixtures: open-file limits, and the logs of a failing test's processes."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from chaos_support import FLOOD_REPORT, LOGS, raise_nofile, tail


@pytest.fixture(scope="session", autouse=True)
def many_open_files() -> None:
    """The suite holds thousands of sockets at once; the usual soft limit is 1,024."""
    raise_nofile()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the log of every process still running to a failing test's report."""
    report = yield
    if report.failed:
        for what, path in LOGS:
            report.sections.append(
                (f"{what} log ({path})", tail(path.read_text(errors="replace"), 80))
            )
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FLOOD_REPORT:
        terminalreporter.section("chaos: pipelining floods")
        for line in FLOOD_REPORT:
            terminalreporter.write_line(line)
