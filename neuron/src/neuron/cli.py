"""``neuron --config PATH [--host H] [--port N]``: serve this host's GPUs to cortex."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from hypercorn.config import Config

from neuron import __version__
from neuron.app import build, create_app
from neuron.settings import ConfigError, NeuronSettings, load_settings

log = logging.getLogger("neuron")

# systemd's TimeoutStopSec is 120 s: drain, listener close and unload must fit inside it.
LISTENER_GRACE = 5.0
UNLOAD_BUDGET = 100.0
PR_SET_DUMPABLE = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="neuron", description=__doc__)
    parser.add_argument("--config", type=Path, help="path to neuron.toml (default: none)")
    parser.add_argument("--host", help="listen address (overrides the config)")
    parser.add_argument("--port", type=int, help="listen port (overrides the config)")
    parser.add_argument("--version", action="version", version=f"neuron {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    _not_dumpable()
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if overrides:
            settings = NeuronSettings.model_validate({**settings.model_dump(), **overrides})
    except ConfigError as exc:
        sys.stderr.write(f"neuron: invalid configuration: {exc}\n")
        return 2
    except ValueError as exc:  # --port out of range and the like
        sys.stderr.write(f"neuron: invalid option: {exc}\n")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request
    if settings.auth_token is None and not _is_loopback(settings.host):
        log.warning(
            "auth_token is not set and the neuron listens on %s: anyone who can reach this "
            "port can load models and run inference",
            settings.host,
        )
    _run(_serve(settings))
    return 0


async def _serve(settings: NeuronSettings) -> None:
    neuron = build(settings)
    app = create_app(settings, neuron=neuron)
    lifecycle = neuron.lifecycle
    # Start-up objects live as long as the process: keep them out of full collections, whose
    # pauses otherwise land on proxied requests (cortex's p99 halved with this: bench/README.md).
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig, lifecycle.begin_drain)
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = LISTENER_GRACE
    config.shutdown_timeout = UNLOAD_BUDGET
    config.keep_alive_timeout = 75.0
    # Hypercorn's default backlog of 100 overflows under a burst of new connections, and the
    # overflow waits ~1 s for a SYN retransmit.
    config.backlog = 4096
    log.info("neuron %s listening on %s:%d", __version__, settings.host, settings.port)
    await neuron.listener.serve(app, config, shutdown_trigger=lifecycle.drained.wait)
    log.info("neuron stopped")


def _not_dumpable() -> None:
    """Keep other processes of this user out of the neuron's memory and environment.

    A non-dumpable process's ``/proc/PID/environ``, ``mem`` and ``fd`` belong to root, and
    it cannot be ptrace-attached without ``CAP_SYS_PTRACE``; so the token (in
    ``NEURON_AUTH_TOKEN`` or read from the config) cannot be read from it by a same-user
    process, an engine among them. It also means no core dumps. Engines are not affected:
    the flag is reset when a process executes a new program. No-op off Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            log.warning("prctl(PR_SET_DUMPABLE, 0) failed: %s", os.strerror(err))
    except (OSError, AttributeError):
        log.warning("prctl is not available: the neuron stays dumpable")


def _on_signal(sig: signal.Signals, begin_drain: Any) -> None:
    log.info("%s received: draining", sig.name)
    begin_drain()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # optional speed-up

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
