"""``sd_notify``: tell systemd (``Type=notify`` in cortex.service) that cortex is ready.

A no-op unless systemd set ``NOTIFY_SOCKET``. The same few lines as the neuron's
``neuron.lifecycle.notify_systemd``; the packages share no code.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("cortex")


def notify_systemd(message: str) -> None:
    """Send ``message`` (``READY=1``, ``STOPPING=1``) to ``$NOTIFY_SOCKET``, if set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", path, exc)
