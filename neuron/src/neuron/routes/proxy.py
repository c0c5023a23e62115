"""Inference: relay the request to the engine serving ``body.model`` and stream the answer back.

The body is read once (bounded) and forwarded unchanged; only ``model`` and ``stream`` are
looked at. The engine's answer is relayed byte for byte as it arrives. When the client goes
away the request to the engine is dropped, which vLLM sees as a disconnect and aborts the
generation: mid-stream the relay is cancelled and the upstream response closed; before the
answer's head (all of a whole answer's generation) a watcher on the client's connection
cancels the wait for it.

aiohttp, not httpx, carries this hot path: the httpx relay cost several times its CPU per
request and per streamed chunk (bench/README.md, ``neuron_proxy.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from neuron.errors import (
    BadRequest,
    CannotWake,
    EngineTimeout,
    EngineUnavailable,
    NeuronError,
    envelope,
)
from neuron.registry import State
from neuron.routes.body import parse_object, read_body

if TYPE_CHECKING:
    from neuron.app import Neuron
    from neuron.registry import Slot

log = logging.getLogger("neuron.proxy")

PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/tokenize",
    "/detokenize",
)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# The neuron's own token is for the neuron; never hand it to the engine.
NOT_FORWARDED = HOP_BY_HOP | {"authorization"}
# Hypercorn writes its own; passing the engine's on would send each header twice.
NOT_RETURNED = HOP_BY_HOP | {"date", "server"}
# (x-cortex-request: the echo of cortex's request number, added by neuron.echo.Echo to
# every answer, this one included.)


async def proxy(request: Request) -> Response:
    neuron: Neuron = request.app.state.neuron
    body = await read_body(request, neuron.settings.max_body_bytes)
    payload = parse_object(body)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    if not isinstance(payload.get("stream", False), bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    slot = neuron.require(model)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
    release = neuron.track(slot)  # counted first: nobody may put it to sleep again meanwhile
    if slot.state is not State.READY:  # asleep: wake it (one wake, whoever asks), then serve
        try:
            slot, _ = await neuron.registry.wake(model, make_room=True)
        except NeuronError as exc:
            if exc.status not in (404, 409):
                release(exc.status)
                raise
            # No room, or unloaded / fenced meanwhile: the client did nothing wrong.
            release(CannotWake.status)
            raise CannotWake(f"model {model!r} cannot wake now: {exc.message}") from None
        except BaseException:
            release(499)
            raise
    watch = Watch(request.receive)
    try:
        answer = await neuron.session().post(
            slot.engine.url + request.url.path, data=body, headers=headers
        )
    except asyncio.CancelledError:
        release(499)
        if watch.cancelled_us():  # the client left while the engine was still at work
            return Gone()
        raise
    except TimeoutError:
        release(504)
        raise EngineTimeout(
            f"the engine serving {model!r} sent nothing for "
            f"{neuron.settings.engine_read_timeout:g}s"
        ) from None
    except aiohttp.ClientError as exc:
        release(502)
        log.warning("engine for %s unreachable: %r", model, exc)
        raise EngineUnavailable(f"the engine serving {model!r} is not reachable") from None
    except BaseException:
        release(499)
        raise
    finally:
        watch.stop()
    out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in NOT_RETURNED}
    if "content-length" in answer.headers:  # raw bytes are relayed, so the length holds
        out_headers["content-length"] = answer.headers["content-length"]

    async def close() -> None:  # also when the client left before the first chunk
        answer.close()
        release(499)

    return Relayed(
        _relay(answer, slot, release),
        status_code=answer.status,
        headers=out_headers,
        on_close=close,
    )


class Watch:
    """Cancels the task that made it if the client disconnects before ``stop()``.

    A whole answer's head comes only once its generation is over, so until then nothing
    else listens to the client's connection. Only the disconnect is taken from ``receive``:
    the body is read already, and a pending ``receive()`` that is cancelled keeps its message
    (Hypercorn's is ``asyncio.Queue.get``), so the response's own listener sees it later.
    """

    __slots__ = ("_gone", "_task", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._task = asyncio.current_task()
        self._gone = False
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._gone = True
        if self._task is not None:
            self._task.cancel()

    def cancelled_us(self) -> bool:
        """True if the ``CancelledError`` being handled is this watch's: it is then consumed."""
        if self._gone and self._task is not None:
            self._task.uncancel()
            return True
        return False

    def stop(self) -> None:
        self._watcher.cancel()


class Gone(Response):
    """The answer for a client that has left: nothing is sent."""

    def __init__(self) -> None:
        super().__init__(status_code=499)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return


class Relayed(StreamingResponse):
    """A streamed answer that runs ``on_close`` however it ends.

    Starlette cancels the send as soon as the client disconnects; if that happens before
    the body iterator started, the iterator's own ``finally`` never runs. This one does.
    """

    def __init__(
        self, content: AsyncIterator[bytes], *, on_close: Callable[[], Awaitable[None]], **kw: Any
    ) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


async def _relay(
    answer: aiohttp.ClientResponse, slot: Slot, release: Callable[[int], None]
) -> AsyncIterator[bytes]:
    status = answer.status
    try:
        async for chunk in answer.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Headers are gone already: say it in-band, then end the stream.
        status = 502
        log.warning("engine for %s broke off mid-answer: %r", slot.model_id, exc)
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            error = envelope(
                f"the engine serving {slot.model_id!r} broke off the answer",
                "engine_error",
                "engine_unavailable",
            )
            yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
    except BaseException:
        status = 499  # the client went away; closing the answer aborts the generation
        raise
    finally:
        # close(), not release(): an unfinished answer must drop the connection so the
        # engine sees the disconnect and aborts the generation.
        answer.close()
        release(status)
