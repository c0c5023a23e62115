"""A streamed answer on its way to the client, event by event: usage read and dropped,
limits on each event, and one in-band error event when the neuron's side fails."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

from cortex.errors import UpstreamError, UpstreamTimeout, sse_error
from cortex.upstream.sse import (
    USAGE,
    EventSplitter,
    EventTooLarge,
    event_payload,
    is_usage_only,
    split_events,
)
from cortex.upstream.wire import Answer, OverLimit, WireError

if TYPE_CHECKING:
    from cortex.app import Gateway
    from cortex.fleet.state import Node
    from cortex.upstream.relay import Call

log = logging.getLogger("cortex.relay")


class Events:
    """A streamed answer on its way to the client, event by event.

    Pulled (``async for``: over ASGI, and inside a cold stream) or pushed (:meth:`pipe`: on
    cortex's own server, each piece goes out from the neuron connection's own callback, and
    no task wakes up per piece). Both do the same to each piece (:meth:`_out`) and end the
    same way: the answer closed and the call counted, once.
    """

    def __init__(
        self,
        gw: Gateway,
        call: Call,
        node: Node,
        answer: Answer,
        drop_usage: bool,
        finish: Callable[[int, str | None], None],
    ) -> None:
        self.call = call
        self.node = node
        self.answer = answer
        self.drop_usage = drop_usage
        self.finish = finish
        self.idle_timeout = gw.settings.gateway.idle_timeout
        limits = gw.settings.gateway
        self.splitter = EventSplitter(
            limits.upstream_max_event_bytes, limits.upstream_event_timeout
        )
        self.status = answer.status
        self.reason: str | None = None
        self.last: float | None = None
        self.ttft = gw.metrics.ttft.labels(call.label)
        self.gap = gw.metrics.inter_chunk.labels(call.label)

    def _out(self, chunk: bytes) -> bytes:
        """What of ``chunk`` goes to the client: its whole events, less a dropped usage chunk."""
        now = time.monotonic()
        if self.last is None:
            self.ttft.observe(now - self.call.started)
            call = self.call
            if call.waiting:  # its first token: the engine has it past its prefill
                call.waiting = False
                self.node.model_waiting[call.model] -= 1
        else:
            self.gap.observe(now - self.last)
        self.last = now
        data = self.splitter.whole(chunk)
        if USAGE not in data:  # nearly every chunk: passed on as it came
            return data
        out = []
        for event in split_events(data):
            if USAGE in event:
                payload = event_payload(event)
                if isinstance(payload, dict):
                    self.call.usage.add(payload.get("usage"))
                    self.call.usage.add((payload.get("message") or {}).get("usage"))
                    if self.drop_usage and is_usage_only(payload):
                        continue
            out.append(event)
        return b"".join(out)

    def _failure(self, exc: BaseException) -> bytes | None:
        """The in-band error event that ends the stream after ``exc``; None if it is not ours."""
        if isinstance(exc, TimeoutError):
            self.status, self.reason = 504, "read_timeout"
            timeout = UpstreamTimeout(
                f"neuron {self.node.name} sent nothing for {self.idle_timeout:g}s"
            )
            return sse_error(timeout, self.call.path)
        if isinstance(exc, (WireError, EventTooLarge)):
            self.status = 502
            self.reason = exc.reason if isinstance(exc, WireError) else OverLimit.reason
            log.warning(
                "neuron %s broke off a stream of %s: %s", self.node.name, self.call.model, exc
            )
            error = UpstreamError(f"neuron {self.node.name} broke off the answer: {exc}")
            return sse_error(error, self.call.path)
        return None

    async def __aiter__(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self.answer.iter_any():
                if out := self._out(chunk):
                    yield out
            if rest := self.splitter.rest():
                yield rest
        except (TimeoutError, WireError, EventTooLarge) as exc:
            event = self._failure(exc)
            assert event is not None  # noqa: S101 - both kinds are ours
            yield event
        except BaseException:
            self.status = 499  # the client went away
            raise
        finally:
            self.finish(self.status, self.reason)

    async def pipe(self, send: Callable[[bytes], None]) -> None:
        """Push the answer to ``send`` as it comes; return once it has ended and been sent.

        ``send`` is called from the connection's callbacks, so it must not block; the caller
        applies back-pressure through :meth:`writable`.
        """
        done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def data(chunk: bytes) -> None:
            if out := self._out(chunk):
                send(out)

        def ended(error: BaseException | None) -> None:
            if not done.done():
                done.set_result(error)

        try:
            self.answer.push(data, ended)
            error = await done
            if error is not None:
                event = self._failure(error)
                if event is None:
                    raise error
                send(event)
            elif rest := self.splitter.rest():
                send(rest)
        except BaseException:
            self.status = 499  # the client went away (or a fault of cortex's own)
            raise
        finally:
            self.finish(self.status, self.reason)

    def writable(self, yes: bool) -> None:
        """Whether the client takes more: when it does not, reading from the neuron pauses."""
        if yes:
            self.answer.resume()
        else:
            self.answer.pause()
