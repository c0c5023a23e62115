"""The hot path: route one inference request to a neuron and relay the answer.

Only ``model`` and ``stream`` are read from the body (plus ``stream_options`` for OpenAI
streams, see below, and the prompt's text under prefix routing, from the same parse); the
body goes upstream unchanged otherwise. Answers stream back as
they arrive, in whole SSE events, never re-serialised.

- Before the first byte reaches the client, a request that provably never reached the
  neuron (no connection; see :mod:`cortex.upstream.wire`), or that the neuron refused with
  503 (it is shutting down), is retried once on the next neuron serving the model. Nothing
  else is: a neuron that took the request may be running it.
- After the first byte, a failure becomes one in-band error event in the stream's own
  format, then the stream ends.
- A client that goes away cancels the relay; the upstream connection is closed, which the
  neuron passes on to vLLM as an abort.
- Token counts come from the upstream ``usage``. OpenAI streams that did not ask for it get
  ``stream_options.include_usage`` added, and that usage chunk is dropped again on the way
  back, so the client sees exactly what it asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from cortex.auth import caller_of
from cortex.errors import (
    BadRequest,
    CortexError,
    ModelNotAllowed,
    ModelNotFound,
    ModelNotReady,
    UpstreamError,
    UpstreamTimeout,
    sse_error,
    upstream_message,
)
from cortex.fleet.routing import TRIES, rank
from cortex.routes.body import BodyReader, asgi_reader, parse_object, read_bounded
from cortex.upstream.events import Events
from cortex.upstream.headers import Headers, forwarded, returned
from cortex.upstream.responses import Relayed, Whole
from cortex.upstream.sse import Usage, answer_usage
from cortex.upstream.wire import Answer, ConnectFailed, ConnectTimeout, OverLimit, WireError

if TYPE_CHECKING:
    from cortex.app import Gateway
    from cortex.fleet.state import Node

__all__ = ["PATHS", "Call", "Events", "Relayed", "Whole", "handle", "relay"]

log = logging.getLogger("cortex.relay")

PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/tokenize",  # vLLM's own; routed by body.model like the rest
    "/detokenize",
)
"""The inference paths relayed to the neuron serving ``body.model``: the neuron's own list
(``neuron.routes.proxy.PATHS``; a test keeps the two equal)."""
USAGE_INJECTABLE = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass
class Call:
    """One request on its way through: what routing and the metrics need to know."""

    path: str
    model: str
    label: str
    key: str
    """The caller's key name (metrics label ``key``)."""
    started: float = field(default_factory=time.monotonic)
    node: str = "none"
    status: int = 0
    usage: Usage = field(default_factory=Usage)
    waiting: bool = False
    """Sent to ``node`` and no answer byte yet (a stream: no event yet): counted in the node's
    ``model_waiting`` until its first event or its end."""


async def relay(request: Request) -> Response:
    """The Starlette route: inference over ASGI (cortex's own server uses :func:`handle`)."""
    return await handle(request.app.state.gateway, request.scope, asgi_reader(request))


async def handle(gw: Gateway, scope: Scope, read: BodyReader) -> Response:
    """Route the request in ``scope`` and relay its answer; its body comes from ``read``."""
    path: str = scope["path"]
    body = await read_bounded(scope["headers"], read, gw.settings.gateway.max_body_bytes)
    payload = parse_object(body)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    known = gw.fleet.knows(model)
    caller = caller_of(scope)
    call = Call(path=path, model=model, label=model if known else "_unknown", key=caller.name)
    try:
        caller.check_model(model)
    except ModelNotAllowed:
        gw.metrics.requests.labels(call.label, "none", path, "403", call.key).inc()
        raise
    nodes, prefix = gw.router.route(
        gw.fleet.ready_nodes(model), model, call.label, path, payload, gw.next_turn()
    )
    cold = not nodes and gw.loader.can_load(model)
    if not nodes and not cold:
        status = "404" if not known else "503"
        gw.metrics.requests.labels(call.label, "none", path, status, call.key).inc()
        if not known:
            raise ModelNotFound(f"model {model!r} does not exist on this gateway", param="model")
        raise ModelNotReady(
            f"model {model!r} is not ready on any neuron; retry shortly",
            retry_after=gw.loader.retry_after(model),
        )
    drop_usage = False
    if stream and path in USAGE_INJECTABLE:
        options = payload.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise BadRequest("'stream_options' must be an object", param="stream_options")
        if not (options or {}).get("include_usage"):
            body = _asking_usage(body, payload)
            drop_usage = True
    headers = forwarded(scope["headers"])  # names are lower case in ASGI
    if cold:
        if stream:
            return _cold_stream(gw, call, body, headers, drop_usage)
        try:
            nodes = await _loaded(gw, call)
        except CortexError as exc:
            gw.metrics.requests.labels(call.label, "none", path, str(exc.status), call.key).inc()
            raise

    answer, node = await _open(gw, call, nodes[:TRIES], body, headers)
    if prefix is not None and answer.status < 400:
        gw.router.served(model, prefix, node)
    if not answer.is_event_stream:
        return await _whole(gw, call, node, answer)
    # A stream's length changes (a dropped usage chunk) and it goes out chunked.
    out_headers = returned(answer.raw_headers)
    finish = _finisher(gw, call, node, answer)
    return Relayed(
        Events(gw, call, node, answer, drop_usage, finish),
        status_code=answer.status,
        raw_headers=out_headers,
        on_close=lambda: finish(499, None),
    )


async def _loaded(gw: Gateway, call: Call) -> list[Node]:
    """Wait for ``call.model`` to load; the neurons to send the call to, best first."""
    await gw.loader.wait(call.model)
    nodes = rank(gw.fleet.ready_nodes(call.model), call.model, gw.next_turn())
    if not nodes:  # unloaded again already (evicted by another cold load)
        raise ModelNotReady(
            f"model {call.model!r} was unloaded again before it could be used; retry shortly",
            retry_after=gw.loader.retry_after(call.model),
        )
    return nodes


def _cold_stream(
    gw: Gateway, call: Call, body: bytes, headers: Headers, drop_usage: bool
) -> Response:
    """A stream for a model that is loading: opened at once, SSE comments until it is ready.

    The status is 200 before the answer is known, so anything that goes wrong from here
    (the load fails, the neuron refuses the request) arrives as one in-band error event.
    """
    finishers: list[Callable[[int, str | None], None]] = []
    waiting = asyncio.ensure_future(_loaded(gw, call))

    async def events() -> AsyncIterator[bytes]:
        try:
            comment = f": loading {call.model}\n\n".encode()
            while not (
                await asyncio.wait({waiting}, timeout=gw.settings.loading.keepalive_interval)
            )[0]:
                yield comment
            nodes = await waiting
            answer, node = await _open(gw, call, nodes[:TRIES], body, headers)
        except CortexError as exc:
            if call.node == "none":
                status = str(exc.status)
                gw.metrics.requests.labels(call.label, "none", call.path, status, call.key).inc()
            yield sse_error(exc, call.path)
            return
        finally:
            waiting.cancel()
        finish = _finisher(gw, call, node, answer)
        finishers.append(finish)
        if not answer.is_event_stream:
            try:
                data = await answer.read()
            except WireError as exc:
                finish(502, exc.reason)
                error = UpstreamError(f"neuron {node.name} broke off the answer: {exc}")
                yield sse_error(error, call.path)
                return
            finish(answer.status, None)
            if answer.status >= 400:
                error = UpstreamError(
                    f"neuron {node.name} answered {answer.status}: {upstream_message(data)}"
                )
                yield sse_error(error, call.path)
            else:
                yield data
            return
        events = Events(gw, call, node, answer, drop_usage, finish)
        async with contextlib.aclosing(events.__aiter__()) as out:
            async for piece in out:
                yield piece

    def closed() -> None:
        waiting.cancel()  # stop counting this client as waiting; the load itself goes on
        for finish in finishers:
            finish(499, None)

    return Relayed(
        events(),
        status_code=200,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        on_close=closed,
    )


def _finisher(
    gw: Gateway, call: Call, node: Node, answer: Answer
) -> Callable[[int, str | None], None]:
    """End the call once: close the upstream answer and count it (later calls do nothing)."""
    done = False

    def finish(status: int, reason: str | None) -> None:
        nonlocal done
        if done:
            return
        done = True
        # An unfinished answer drops its connection, so the neuron (and vLLM behind it) sees
        # the disconnect and aborts the generation; a finished one is already pooled.
        answer.close()
        gw.leave(call, node, status, reason)

    return finish


async def _open(
    gw: Gateway, call: Call, nodes: list[Node], body: bytes, headers: Headers
) -> tuple[Answer, Node]:
    """Send the request to the first neuron that takes it (at most two tries)."""
    error: CortexError | None = None
    for attempt, node in enumerate(nodes):
        last = attempt == len(nodes) - 1
        gw.enter(call, node)
        try:
            answer = await gw.upstream.post(node.base, call.path, body, headers + node.auth)
        except ConnectTimeout:
            gw.leave(call, node, 504, "connect_timeout", retried=not last)
            error = UpstreamTimeout(f"neuron {node.name} did not accept a connection in time")
            continue
        except TimeoutError:
            # Connected, but no answer within idle_timeout: the neuron may be working on it,
            # so it is not sent a second time elsewhere.
            gw.leave(call, node, 504, "read_timeout")
            raise UpstreamTimeout(
                f"neuron {node.name} sent nothing for {gw.settings.gateway.idle_timeout:g}s"
            ) from None
        except ConnectFailed as exc:
            gw.leave(call, node, 502, "connect_failed", retried=not last)
            log.warning("neuron %s unreachable for %s: %s", node.name, call.model, exc)
            error = UpstreamError(f"neuron {node.name} could not be reached: {exc}")
            continue
        except WireError as exc:  # connected, but the answer was not HTTP we can use
            # Not sent again: the neuron may have the request (Dropped says so).
            gw.leave(call, node, 502, exc.reason)
            log.warning("neuron %s, %s: %s (%s)", node.name, call.model, exc, exc.reason)
            raise UpstreamError(f"neuron {node.name} sent a broken answer: {exc}") from None
        except BaseException:
            gw.leave(call, node, 499, None)
            raise
        if answer.status == 503 and not last:
            # Stale view (it is draining, or just unloaded the model): try the next one.
            answer.release()
            gw.leave(call, node, 503, "neuron_unavailable", retried=True)
            continue
        return answer, node
    assert error is not None  # noqa: S101 - the loop only falls through after an error
    raise error


async def _whole(gw: Gateway, call: Call, node: Node, answer: Answer) -> Response:
    try:
        data = await answer.read()
    except TimeoutError:
        gw.leave(call, node, 504, "read_timeout")
        raise UpstreamTimeout(f"neuron {node.name} went silent while answering") from None
    except WireError as exc:
        gw.leave(call, node, 502, exc.reason)
        if isinstance(exc, OverLimit):
            log.warning("neuron %s, %s: %s", node.name, call.model, exc)
        raise UpstreamError(f"neuron {node.name} broke off the answer: {exc}") from None
    except BaseException:
        answer.close()
        gw.leave(call, node, 499, None)
        raise
    finally:
        answer.release()
    call.usage.add(answer_usage(data))
    gw.leave(call, node, answer.status, None)
    return Whole(data, answer.status, answer.raw_headers)


ASK_USAGE = b'"stream_options":{"include_usage":true},'


def _asking_usage(body: bytes, payload: dict[str, Any]) -> bytes:
    """``body`` with ``stream_options.include_usage`` set, and otherwise as the client sent it.

    Without ``stream_options`` (the usual case) the option goes in after the opening brace
    and the rest is not touched. Re-serialising would cost CPU in proportion to the prompt
    (bench/README.md, "Figures behind the code") and double the size of non-ASCII text,
    which ``json.dumps`` escapes. A body that has ``stream_options`` already is
    re-serialised: a second key of that name would be ambiguous.
    """
    if "stream_options" not in payload:
        brace = body.index(b"{") + 1  # the body parsed as an object: this is its own brace
        return body[:brace] + ASK_USAGE + body[brace:]
    payload["stream_options"] = {**(payload["stream_options"] or {}), "include_usage": True}
    return json.dumps(payload).encode()
