"""Fixtures for the end-to-end tests (real neuron processes, real vLLM engines).

Without vLLM in this venv the e2e tests are skipped, except in CI (``CI`` set), where a
missing engine is a failure: CI must never pass by skipping the only tests that run vLLM.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from e2e_support import (
    ENGINE_STARTS,
    MAKE_TINY_MODEL,
    MODEL_LAYERS,
    NEURON_ERROR,
    RUNNING,
    STARTED,
    TIMINGS,
    SharedNeuron,
    broken_spec,
    free_port,
    tail,
    tiny_spec,
    write_config,
)


@pytest.fixture(scope="session", autouse=True)
def vllm_available() -> None:
    try:
        if importlib.util.find_spec("vllm") is not None:
            return
    except (ImportError, ValueError):  # a broken install counts as missing
        pass
    message = (
        f"vLLM is not importable by {sys.executable}; the e2e tests need a real engine "
        "(install it with `make engine`)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{message}. CI is set, so this is a failure, not a skip.", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_model(vllm_available: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's tiny random Llama with ``MODEL_LAYERS`` layers, built by the script that
    ``make run`` uses too (once per session, a few seconds); vLLM serves it on CPU.

    Why 48 layers: the 2-layer model decodes ~700 tokens/s on a 2-core machine, and vLLM's
    API server then runs so hot beside its engine core that it answers nothing else (not
    even a client's disconnect or a ``/metrics`` scrape) until the generation is over. At
    ~80 tokens/s streams flow, disconnects abort at once, and a 200-token answer lasts ~2.5 s.
    """
    model = tmp_path_factory.mktemp("models") / f"tiny-{MODEL_LAYERS}"
    _run([sys.executable, str(MAKE_TINY_MODEL), str(model), "--layers", str(MODEL_LAYERS)])
    return model


SHARED_HEALTH_INTERVAL = 1.0
"""The shared neurons read their engines' load every second: the prefix test waits for a
flood to show in their ``/models`` (5 s, the default, would make it wait longer)."""


def _shared(
    tiny_model: Path, factory: pytest.TempPathFactory, name: str, *, broken: bool
) -> Generator[SharedNeuron, None, None]:
    """A :class:`SharedNeuron` serving ``tiny`` (after ``broken`` as a default, if asked),
    closed when the session ends."""
    tmp = factory.mktemp(name)
    spec = tiny_spec(tiny_model)
    config = write_config(
        tmp / f"{name}-neuron.toml",
        port=free_port(),
        default_models=[broken_spec(), spec] if broken else [spec],
        health_interval=SHARED_HEALTH_INTERVAL,
    )
    shared = SharedNeuron(config=config, logs=tmp, spec=spec)
    try:
        yield shared
    finally:
        shared.close()


@pytest.fixture(scope="session")
def shared_neuron(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Generator[SharedNeuron, None, None]:
    """One neuron with ``tiny`` as its default model, for every test that needs a ready
    engine and not a fresh one (see :class:`SharedNeuron`): one engine start for all of
    them instead of one each. Tests that are about an engine's or a neuron's start or end
    (on-demand loads and evictions, the residency ladder) start their own."""
    yield from _shared(tiny_model, tmp_path_factory, "shared", broken=False)


@pytest.fixture(scope="session")
def defaults_neuron(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Generator[SharedNeuron, None, None]:
    """A second neuron serving ``tiny``, whose default models are ``broken`` (its engine exits
    while starting) and then ``tiny``. In file order: the activation test starts it and
    watches it activate past the failure (``fresh()``), the prefix test uses it as its second
    engine of ``tiny`` beside ``shared_neuron``, and the SIGTERM test stops it last."""
    yield from _shared(tiny_model, tmp_path_factory, "defaults", broken=True)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(autouse=True)
def no_neuron_errors() -> Iterator[None]:
    """Fail a test during which a neuron logged an ERROR: its clients may all have got their
    answers while the neuron hit a bug."""
    seen = {neuron.log_path: len(neuron.log()) for neuron in STARTED}
    yield
    errors = [
        line
        for neuron in STARTED
        for line in NEURON_ERROR.findall(neuron.log()[seen.get(neuron.log_path, 0) :])
    ]
    if errors:
        pytest.fail("a neuron logged an ERROR:\n" + "\n".join(errors[:5]), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the log of every neuron still running to a failing e2e test's report."""
    report = yield
    if report.failed:
        for neuron in RUNNING:
            report.sections.append(
                (f"neuron {neuron.pid} log ({neuron.log_path})", tail(neuron.log(), 200))
            )
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("e2e timings")
        for what, seconds in TIMINGS:
            terminalreporter.write_line(f"{seconds:7.1f}s  {what}")
    if ENGINE_STARTS:
        counts = ", ".join(f"{model} {n}" for model, n in sorted(Counter(ENGINE_STARTS).items()))
        terminalreporter.write_line(f"e2e engine starts: {len(ENGINE_STARTS)} ({counts})")
