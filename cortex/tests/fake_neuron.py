"""A neuron stand-in for cortex's fast tests: the neuron HTTP contract, with knobs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cortex.upstream.relay import PATHS  # the neuron serves every path cortex relays


@dataclass
class FakeNeuron:
    name: str
    models: dict[str, str] = field(default_factory=lambda: {"m1": "ready"})
    chunks: int = 4
    chunk_delay: float = 0.0
    pad: int = 0
    """Bytes of filler in each chunk's content (to fill socket buffers)."""
    sent: int = 0
    """Stream chunks handed to the server so far."""
    break_after: int | None = None
    """Drop the connection after this many chunks (a neuron that dies mid-stream)."""
    answer_status: int = 200
    answer_delay: float = 0.0
    polls_fail: bool = False
    health_status: str = "ready"
    devices: list[dict[str, Any]] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    """Bodies and headers of inference requests, in order."""
    streaming: int = 0
    cancelled: int = 0
    max_loaded_models: int | None = None
    poll_delay: float = 0.0
    """``/models`` answers this late, with the list as it was when asked."""
    load_delay: float = 0.0
    load_status: int = 200
    """Anything but 200: loads fail with this status (409, 502, ...)."""
    loads: list[dict[str, Any]] = field(default_factory=list)
    """Bodies of ``/models/load`` calls that started an engine."""
    unloads: list[str] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    """Reported per model in ``/models`` (requests from clients other than this cortex)."""
    crlf: bool = False
    """Frame stream events with CRLF line ends (``\\r\\n\\r\\n`` between events)."""
    prompt_tokens: int = 3
    """What answers report as their usage's prompt tokens (a broken neuron's may be < 0)."""
    broken: dict[str, bytes] = field(default_factory=dict)
    """Path (``/models``, ``/health``, ``/discovery``) → the raw JSON it answers instead."""
    answer_headers: list[tuple[str, str]] = field(default_factory=list)
    """Added to every inference answer, as they are (repeated names stay repeated)."""
    report_load: bool = False
    """Report each model's engine load in ``/models``: ``running`` = the inference requests
    being answered now, ``waiting`` 0, ``kv_cache_usage`` a tenth per running request."""
    running: dict[str, int] = field(default_factory=dict)
    """Inference requests for each model being answered now (all clients)."""
    wake_fails: bool = False
    """A load of a ``sleeping`` model fails to wake it and loads it afresh (a cold start)."""
    state_s: dict[str, float] = field(default_factory=dict)
    """Reported per model in ``/models``: seconds in its current state."""
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    """Reported per model in ``/models`` as they are: ``last_load_s``, ``last_wake_s``."""
    wakes: list[str] = field(default_factory=list)
    """Models a load woke (or, with ``wake_fails``, loaded afresh after a failed wake)."""

    def app(self) -> Starlette:
        return Starlette(
            middleware=[Middleware(_Breaking, fake=self)],
            routes=[
                Route("/health", self.health),
                Route("/models", self.list_models),
                Route("/discovery", self.discovery),
                Route("/models/load", self.load, methods=["POST"]),
                Route("/models/unload", self.unload, methods=["POST"]),
                *(Route(p, self.infer, methods=["POST"]) for p in PATHS),
            ],
        )

    async def health(self, request: Request) -> Response:
        if self.polls_fail:
            return JSONResponse({"error": "down"}, 500)
        return JSONResponse(
            {
                "status": self.health_status,
                "uptime_secs": 1,
                "in_flight": 0,
                "devices": self.devices,
                "loaded_models": len(self.holding()),
                "max_loaded_models": self.max_loaded_models,
            }
        )

    def holding(self) -> list[str]:
        return [m for m, s in self.models.items() if s != "failed"]

    async def load(self, request: Request) -> Response:
        body = await request.json()
        model = body["model_id"]
        if self.models.get(model) == "ready":
            return JSONResponse({"status": "loaded", "model": self.info(model)})
        if self.models.get(model) == "sleeping":  # a wake, as the neuron answers one
            self.wakes.append(model)
            self.models[model] = "waking"
            await asyncio.sleep(self.load_delay)
            self.models[model] = "ready"
            woke = not self.wake_fails
            answer = {"model": self.info(model), "started": not woke, "woken": woke}
            return JSONResponse({"status": "loaded", **answer, "evicted": [], "slept": []})
        if self.load_status != 200:
            error = {"message": f"fake load of {model} fails", "type": "x", "code": "x"}
            return JSONResponse({"error": error}, self.load_status)
        limit = self.max_loaded_models
        if self.models.get(model) != "loading":
            if limit is not None and len(self.holding()) >= limit:
                message = f"{model} does not fit: this neuron holds at most {limit} model(s)"
                error = {"message": message, "type": "insufficient_resources"}
                return JSONResponse({"error": {**error, "code": "does_not_fit"}}, 409)
            self.loads.append(body)
            self.models[model] = "loading"
        await asyncio.sleep(self.load_delay)
        self.models[model] = "ready"
        return JSONResponse({"status": "loaded", "model": self.info(model)})

    async def unload(self, request: Request) -> Response:
        model = (await request.json())["model_id"]
        if model not in self.models:
            error = {"message": f"model {model!r} is not on this neuron", "type": "x"}
            return JSONResponse({"error": {**error, "code": "model_not_found"}}, 404)
        del self.models[model]
        self.unloads.append(model)
        return JSONResponse({"status": "unloaded"})

    def info(self, model: str) -> dict[str, Any]:
        info = {
            "id": model,
            "harness": "vllm",
            "status": self.models.get(model, "gone"),
            "in_flight": self.in_flight.get(model, 0),
            "devices": [],
            "vram_used_mb": 0,
        }
        if model in self.state_s:
            info["state_s"] = self.state_s[model]
        info |= self.timings.get(model, {})
        if self.report_load:
            running = self.running.get(model, 0)
            info |= {"running": running, "waiting": 0, "kv_cache_usage": min(1, running / 10)}
        return info

    async def list_models(self, request: Request) -> Response:
        if self.polls_fail:
            return JSONResponse({"error": "down"}, 500)
        listed = [self.info(m) for m in self.models]
        await asyncio.sleep(self.poll_delay)
        return JSONResponse(listed)

    async def discovery(self, request: Request) -> Response:
        devices = [
            {"index": d["index"], "name": "Fake GPU", "vram_total_mb": d["total"]}
            for d in self.devices
        ]
        return JSONResponse(
            {
                "hostname": self.name,
                "devices": devices,
                "harnesses": ["vllm"],
                "max_loaded_models": self.max_loaded_models,
            }
        )

    async def infer(self, request: Request) -> Response | _Closing:
        body = await request.json()
        if self.models.get(body.get("model")) != "ready":
            error = {"message": f"model {body.get('model')!r} is not loaded", "type": "x"}
            return JSONResponse({"error": {**error, "code": "model_not_found"}}, 404)
        self.seen.append(
            {
                "path": request.url.path,
                "body": body,
                "raw": await request.body(),
                "headers": dict(request.headers),
                "raw_headers": request.headers.raw,
            }
        )
        if self.answer_status != 200:
            refusal = {"error": {"message": "fake neuron says no", "type": "x", "code": "x"}}
            return JSONResponse(refusal, self.answer_status)
        if not body.get("stream"):
            model = body["model"]
            self.running[model] = self.running.get(model, 0) + 1
            try:  # "fake_sleep": this request's own answer delay
                await asyncio.sleep(float(body.get("fake_sleep", self.answer_delay)))
            finally:
                self.running[model] -= 1
            usage = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.chunks,
                "total_tokens": 3 + self.chunks,
            }
            answer = JSONResponse({"object": "chat.completion", "node": self.name, "usage": usage})
            answer.raw_headers.extend((n.encode(), v.encode()) for n, v in self.answer_headers)
            return answer
        anthropic = request.url.path.startswith("/v1/messages")
        usage_wanted = (body.get("stream_options") or {}).get("include_usage")
        events = self.events(anthropic, bool(usage_wanted))
        stream = StreamingResponse(
            _crlf(events) if self.crlf else events, media_type="text/event-stream"
        )
        stream.raw_headers.extend((n.encode(), v.encode()) for n, v in self.answer_headers)
        return _Closing(stream, events)

    async def events(self, anthropic: bool, usage: bool) -> AsyncGenerator[bytes, None]:
        self.streaming += 1
        try:
            if anthropic:
                start = {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}
                yield f"event: message_start\ndata: {json.dumps(start)}\n\n".encode()
            for i in range(self.chunks):
                if self.break_after is not None and i == self.break_after:
                    raise ConnectionAbortedError("fake neuron dies mid-stream")
                await asyncio.sleep(self.chunk_delay)
                if anthropic:
                    delta = {"type": "content_block_delta", "delta": {"text": f"t{i}"}}
                    yield f"event: content_block_delta\ndata: {json.dumps(delta)}\n\n".encode()
                else:
                    text = f"t{i}" + "x" * self.pad
                    chunk = {"node": self.name, "choices": [{"delta": {"content": text}}]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                self.sent += 1
            if anthropic:
                end = {"type": "message_delta", "usage": {"output_tokens": self.chunks}}
                yield f"event: message_delta\ndata: {json.dumps(end)}\n\n".encode()
                yield b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
                return
            if usage:
                total = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.chunks}
                yield f"data: {json.dumps({'choices': [], 'usage': total})}\n\n".encode()
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.streaming -= 1


class _Closing:
    """A streamed answer that closes its events however it ends, so ``streaming`` counts
    down when cortex drops the stream. (Starlette 0.37 cancels a stream whose client left
    without closing its generator, which then waits for the garbage collector.)"""

    def __init__(self, response: StreamingResponse, events: AsyncGenerator[bytes, None]) -> None:
        self.response, self.events = response, events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            await self.events.aclose()


async def _crlf(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for event in events:
        yield event.replace(b"\n", b"\r\n")


class _Breaking:
    """Answers a path in ``fake.broken`` with its bytes, as JSON, whatever they hold."""

    def __init__(self, app: ASGIApp, fake: FakeNeuron) -> None:
        self.app, self.fake = app, fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.fake.broken.get(scope["path"]) if scope["type"] == "http" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        await Response(body, media_type="application/json")(scope, receive, send)
