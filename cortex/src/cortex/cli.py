"""``cortex serve --config PATH`` runs the gateway; ``cortex status`` shows the fleet.

``status``, ``load`` and ``unload`` call admin paths (``/fleet``, ``/admin/*``): on a gateway
with keys they need a key with ``role = "admin"`` (``--admin-key`` or ``$CORTEX_ADMIN_KEY``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from cortex import __version__
from cortex.app import build, create_app, create_metrics_app
from cortex.descriptors import connection_cap
from cortex.notify import notify_systemd
from cortex.server import Limits, bind, serve, warn_if_accept_queue_capped
from cortex.settings import ConfigError, CortexSettings, load_catalogue, load_settings
from cortex.status import admin, fetch_fleet, render

log = logging.getLogger("cortex")

DEFAULT_CONFIG = Path("/etc/cortex/cortex.toml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cortex", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cortex {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument(
        "--config", type=Path, default=None, help=f"cortex.toml (default: {DEFAULT_CONFIG})"
    )
    status = commands.add_parser("status", help="print the fleet as a table")
    load = commands.add_parser("load", help="load a catalogued model (evicting if needed)")
    unload = commands.add_parser("unload", help="unload a model")
    for cmd in (load, unload):
        cmd.add_argument("model", help="the model id, as clients send it")
        cmd.add_argument("--node", default=None, help="this neuron only (default: cortex picks)")
    unload.set_defaults(timeout=120.0)
    load.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds to wait for the load (1800)"
    )
    for cmd in (status, load, unload):
        cmd.add_argument(
            "--endpoint",
            default=os.environ.get("CORTEX_ENDPOINT", "http://127.0.0.1:31313"),
            help="the gateway's API URL (default: $CORTEX_ENDPOINT or http://127.0.0.1:31313)",
        )
        cmd.add_argument(
            "--admin-key",
            "--api-key",  # its name before keys had roles; still accepted
            dest="admin_key",
            default=os.environ.get("CORTEX_ADMIN_KEY") or os.environ.get("CORTEX_API_KEY"),
            help="an admin API key, when the gateway has keys "
            "(default: $CORTEX_ADMIN_KEY, else $CORTEX_API_KEY)",
        )
    return parser.parse_args(argv)


def _manual(args: argparse.Namespace) -> int:
    body = {"model": args.model, **({"node": args.node} if args.node else {})}
    try:
        answer = admin(args.endpoint, args.admin_key, args.command, body, args.timeout)
    except RuntimeError as exc:
        sys.stderr.write(f"cortex {args.command}: {exc}\n")
        return 1
    if args.command == "load":
        sys.stdout.write(f"{answer['model']} ready on {answer['node']} ({answer['seconds']}s)\n")
    else:
        where = ", ".join(answer["nodes"]) or "nowhere (it was already gone)"
        sys.stdout.write(f"{answer['model']} unloaded from {where}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command in ("load", "unload"):
        return _manual(args)
    if args.command == "status":
        try:
            fleet = fetch_fleet(args.endpoint, args.admin_key)
        except RuntimeError as exc:
            sys.stderr.write(f"cortex status: {exc}\n")
            return 1
        sys.stdout.write(render(fleet))
        return 0
    path = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    try:
        settings = load_settings(path)
        catalogue = load_catalogue(settings.models_config, settings)
    except ConfigError as exc:
        sys.stderr.write(f"cortex: invalid configuration: {exc}\n")
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        # The instance names this replica in every line (several write to one journal).
        format=f"%(asctime)s {settings.instance} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log.info(
        "cortex %s (instance %s): %d neuron(s), %d catalogued model(s)",
        __version__,
        settings.instance,
        len(settings.neurons),
        len(catalogue.models),
    )
    auth = settings.auth
    if (auth.api_keys or auth.keys) and not any(k.role == "admin" for k in auth.keys):
        log.warning(
            'no API key has role = "admin": /admin/* and /fleet (cortex status, load, '
            "unload) are refused to every key"
        )
    sockets: list[socket.socket] = []
    try:
        for listen in (settings.gateway.listen, settings.gateway.metrics_listen):
            sockets.append(bind(listen))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        sys.stderr.write(f"cortex: cannot listen on {listen}: {exc.strerror or exc}\n")
        return 1
    warn_if_accept_queue_capped()
    notify_systemd("READY=1")  # both listeners are bound (cortex.service: Type=notify)
    _run(_serve(settings, catalogue, *sockets))
    return 0


async def _serve(
    settings: CortexSettings, catalogue: Any, api_sock: socket.socket, metrics_sock: socket.socket
) -> None:
    gateway = build(settings, catalogue)
    _tune_gc()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        log.info(
            "%s received: finishing in-flight requests (up to %gs)",
            sig.name,
            settings.gateway.drain_timeout,
        )
        gateway.draining[0] = True
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    api_done = asyncio.Event()

    async def serve_api() -> None:
        api = create_app(gateway)
        try:
            await serve(
                api,
                api_sock,
                stop=stop,
                graceful=settings.gateway.drain_timeout,
                lifespan=True,
                limits=limits(settings),
                on_count=gateway.metrics.client_connections.set,
                direct=api.direct,
            )
        finally:
            api_done.set()

    # Metrics stay up until the API has drained, so the drain itself can be watched.
    await asyncio.gather(
        serve_api(),
        serve(
            create_metrics_app(gateway), metrics_sock, stop=api_done, graceful=1.0, lifespan=False
        ),
    )
    log.info("cortex stopped")


def limits(settings: CortexSettings) -> Limits:
    """The API port's limits from ``[gateway]`` (the metrics port keeps the defaults)."""
    g = settings.gateway
    return Limits(
        max_header_bytes=g.max_header_bytes,
        max_header_field_bytes=g.max_header_field_bytes,
        max_connections=connection_cap(g.max_connections),
        header_timeout=g.header_timeout,
        keep_alive_timeout=g.keep_alive_timeout,
        send_timeout=g.send_timeout,
        body_timeout=g.body_timeout,
        max_body_memory=g.max_body_memory,
        retry_after=g.retry_after,
    )


def _tune_gc() -> None:
    """Keep full garbage collections off the hot path's tail latency.

    Everything built at start-up (modules, settings, the app) lives as long as the process.
    ``gc.freeze()`` moves it out of the collector's sight, so a full collection no longer
    walks some hundred thousand objects that can never be garbage: the p99 latency and the
    burst's time to first token both fell by about half (bench/README.md, "Figures behind
    the code"). A higher gen-0 threshold on top made bursts slower, so the thresholds stay
    Python's.
    """
    gc.collect()
    gc.freeze()


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # optional speed-up

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)


if __name__ == "__main__":
    sys.exit(main())
