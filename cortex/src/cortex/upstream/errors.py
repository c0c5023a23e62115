"""The wire client's exception tree: what can go wrong getting a neuron's answer.

Each class carries the ``reason`` label the relay counts it under. Only
:class:`ConnectFailed` (and :class:`ConnectTimeout`) prove the request never reached the
neuron; every other error may follow a delivered request, which is never sent again.
"""

from __future__ import annotations


class WireError(Exception):
    """The neuron's answer could not be had."""

    reason = "upstream_broke"
    """The ``reason`` label the relay counts it under."""


class ConnectFailed(WireError):
    """No connection: nothing reached the neuron, so another one may be asked."""

    reason = "connect_failed"


class ConnectTimeout(ConnectFailed):
    """The neuron did not accept the connection within ``connect_timeout``."""


class ReadTimeout(WireError, TimeoutError):
    """Connected, but nothing arrived for ``idle_timeout`` seconds."""

    reason = "read_timeout"


class Broken(WireError):
    """The answer broke off, or was not HTTP."""


class Dropped(Broken):
    """The connection closed after the request went out and before any byte of the answer.

    The neuron may have read the request and be running it, so it is never sent again.
    """

    reason = "upstream_closed"


class OverLimit(Broken):
    """The answer broke one of :class:`Limits`: too big, too many headers, too slow a head."""

    reason = "upstream_over_limit"


class Crossed(Broken):
    """The answer echoes an ``x-cortex-request`` never sent on its connection."""

    reason = "upstream_stray"
