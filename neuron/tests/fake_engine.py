"""Fake stand-in for vLLM's OpenAI server, launched with vLLM's CLI flags (fast unit tests).

Env: FAKE_ENGINE_STARTUP_DELAY, FAKE_ENGINE_FAIL, FAKE_ENGINE_CHUNK_DELAY, FAKE_ENGINE_EXIT_AFTER,
FAKE_ENGINE_SPAM_LINES (that many long lines on stderr before serving), FAKE_ENGINE_MAX_RUNNING
(requests beyond it are reported waiting), FAKE_ENGINE_METRICS_DELAY (``/metrics`` answers
that late), FAKE_ENGINE_METRICS_BROKEN (``/metrics`` is not Prometheus text), FAKE_ENGINE_KV_GAUGE (the KV-cache gauge's name: older vLLM says
``vllm:gpu_cache_usage_perc``), FAKE_ENGINE_RUNNING_VALUE (what the running gauge says instead,
e.g. ``NaN``, ``+Inf``, ``-3``), FAKE_ENGINE_METRICS_PADDING (that many more ``vllm:`` samples), FAKE_ENGINE_COUNT_SCRAPES
(``vllm:fake_scrapes_total``: how often ``/metrics`` was read, this time included).
Like vLLM (uvicorn), it writes an access-log line per request to stdout, except for the paths
given to ``--disable-access-log-for-endpoints`` (none with ``--disable-uvicorn-access-log``).
Sleep mode, as vLLM's development routes (only with ``VLLM_SERVER_DEV_MODE=1``): ``POST /sleep``,
``POST /wake_up``, ``GET /is_sleeping``; FAKE_ENGINE_SLEEP_DELAY and FAKE_ENGINE_WAKE_DELAY (seconds
each takes), FAKE_ENGINE_WAKE_FAIL (``/wake_up`` answers 500; FAKE_ENGINE_WAKE_FAIL_AFTER=N: once it has
woken N times), FAKE_ENGINE_SLEEP_FAIL (``/sleep``
answers 500, after its delay), FAKE_ENGINE_GARBAGE_AFTER_WAKE (after
a wake, completions answer other text: the canary must catch it). While asleep, generation
answers 500 (the neuron must never send it any). ``vllm:engine_sleep_state`` and
``vllm:fake_sleeps_total``/``vllm:fake_wakes_total`` are in ``/metrics``.
A request body ``"fake_sleep": S`` delays a non-streamed reply by S seconds; as in vLLM, a client
that disconnects meanwhile cancels it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any, cast

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CHUNK_DELAY = float(os.environ.get("FAKE_ENGINE_CHUNK_DELAY", "0.01"))
CHAT, COMPLETIONS, MESSAGES = "/v1/chat/completions", "/v1/completions", "/v1/messages"
RUNNING = 0  # generation requests in flight, exported as vllm:num_requests_running
MAX_RUNNING = int(os.environ.get("FAKE_ENGINE_MAX_RUNNING", "256"))
METRICS_DELAY = float(os.environ.get("FAKE_ENGINE_METRICS_DELAY", "0"))
KV_GAUGE = os.environ.get("FAKE_ENGINE_KV_GAUGE", "vllm:kv_cache_usage_perc")
RUNNING_VALUE = os.environ.get("FAKE_ENGINE_RUNNING_VALUE")
PADDING = int(os.environ.get("FAKE_ENGINE_METRICS_PADDING", "0"))
SCRAPES = 0
DEV_MODE = os.environ.get("VLLM_SERVER_DEV_MODE") == "1"
ASLEEP: int | None = None  # the sleep level, while asleep
SLEEPS = WAKES = 0
WOKEN = False  # has woken at least once (FAKE_ENGINE_GARBAGE_AFTER_WAKE)
KV_PER_REQUEST = 0.125


def log(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def vllm_metrics(model: str) -> str:
    """``/metrics`` as vLLM writes it: requests beyond ``MAX_RUNNING`` wait; each running one
    fills an eighth of the KV cache; a few other families, and one that is not vLLM's."""
    running, waiting = min(RUNNING, MAX_RUNNING), max(0, RUNNING - MAX_RUNNING)
    kv = min(1.0, running * KV_PER_REQUEST)
    labels = f'engine="0",model_name="{model}"'
    padding = "".join(f'vllm:fake_padding{{{labels},n="{i}"}} {i}.0\n' for i in range(PADDING))
    return (
        "# HELP python_gc_objects_collected_total Objects collected during gc\n"
        "# TYPE python_gc_objects_collected_total counter\n"
        'python_gc_objects_collected_total{generation="0"} 42.0\n'
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{labels}}} {RUNNING_VALUE or float(running)}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{labels}}} {float(waiting)}\n"
        f"# HELP {KV_GAUGE} KV-cache usage. 1 means 100 percent usage.\n"
        f"# TYPE {KV_GAUGE} gauge\n"
        f"{KV_GAUGE}{{{labels}}} {kv}\n"
        "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of tokens.\n"
        "# TYPE vllm:prefix_cache_queries_total counter\n"
        f"vllm:prefix_cache_queries_total{{{labels}}} 120.0\n"
        "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of tokens.\n"
        "# TYPE vllm:prefix_cache_hits_total counter\n"
        f"vllm:prefix_cache_hits_total{{{labels}}} 30.0\n"
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n"
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="0.1"}} 3.0\n'
        f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} 4.0\n'
        f"vllm:time_to_first_token_seconds_count{{{labels}}} 4.0\n"
        f"vllm:time_to_first_token_seconds_sum{{{labels}}} 0.5\n"
        + "# HELP vllm:engine_sleep_state Engine sleep state.\n"
        + "# TYPE vllm:engine_sleep_state gauge\n"
        + "".join(
            f'vllm:engine_sleep_state{{{labels},sleep_state="{state}"}} '
            f"{float(state == _sleep_state())}\n"
            for state in ("awake", "weights_offloaded", "discard_all")
        )
        + f"# TYPE vllm:fake_sleeps counter\nvllm:fake_sleeps_total{{{labels}}} {SLEEPS}\n"
        + f"# TYPE vllm:fake_wakes counter\nvllm:fake_wakes_total{{{labels}}} {WAKES}\n"
        + ("# TYPE vllm:fake_padding gauge\n" + padding if PADDING else "")
        + (
            f"# TYPE vllm:fake_scrapes counter\nvllm:fake_scrapes_total{{{labels}}} {SCRAPES}\n"
            if os.environ.get("FAKE_ENGINE_COUNT_SCRAPES")
            else ""
        )
    )


def _sleep_state() -> str:
    return {None: "awake", 2: "discard_all"}.get(ASLEEP, "weights_offloaded")


def error(status: int, message: str, etype: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": etype, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def words(n: int) -> list[str]:
    first = "garbage" if WOKEN and os.environ.get("FAKE_ENGINE_GARBAGE_AFTER_WAKE") else "fake"
    return ([first, "reply"] + [str(i) for i in range(n)])[:n]


def count_tokens(body: dict[str, Any]) -> int:
    parts = [body.get("prompt"), body.get("input"), body.get("system")]
    parts += [m.get("content") for m in body.get("messages", []) if isinstance(m, dict)]
    return max(1, sum(len(json.dumps(p).split()) for p in parts if p))


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


class Slot:
    """Counts one in-flight generation request; release() is idempotent."""

    def __init__(self) -> None:
        global RUNNING
        RUNNING, self.held = RUNNING + 1, True

    def release(self) -> None:
        global RUNNING
        RUNNING, self.held = RUNNING - int(self.held), False


class TrackedStream(StreamingResponse):
    """Closes the generator (running its finally) even if cancelled mid-stream."""

    def __init__(self, gen: AsyncGenerator[bytes, None], slot: Slot) -> None:
        super().__init__(gen, media_type="text/event-stream")
        self.gen, self.slot = gen, slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.gen.aclose()
            self.slot.release()


def complete(path: str, model: str, n: int, prompt: int) -> dict[str, Any]:
    rid, text = f"fake-{uuid.uuid4().hex[:12]}", " ".join(words(n))
    if path == MESSAGES:
        return {
            "id": rid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": n},
        }
    usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": "length"}
    if path == CHAT:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "length",
        }
    obj = "chat.completion" if path == CHAT else "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


async def stream(
    path: str, model: str, n: int, prompt: int, usage: bool, slot: Slot
) -> AsyncGenerator[bytes, None]:
    rid, created = f"fake-{uuid.uuid4().hex[:12]}", int(time.time())
    obj = "chat.completion.chunk" if path == CHAT else "text_completion"
    try:
        if path == MESSAGES:
            msg = complete(path, model, 0, prompt) | {"id": rid, "content": [], "stop_reason": None}
            yield sse({"type": "message_start", "message": msg}, "message_start")
            block = {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
            yield sse(block, "content_block_start")
        for i, tok in enumerate(words(n)):
            await asyncio.sleep(CHUNK_DELAY)
            text = tok if i == 0 else " " + tok
            if path == MESSAGES:
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                }
                yield sse(delta, "content_block_delta")
                continue
            choice: dict[str, Any] = {"index": 0, "text": text}
            if path == CHAT:
                role = {"role": "assistant"} if i == 0 else {}
                choice = {"index": 0, "delta": role | {"content": text}}
            choice["finish_reason"] = "length" if i == n - 1 else None
            yield sse(
                {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
            )
        if path == MESSAGES:
            yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            yield sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": n},
                },
                "message_delta",
            )
            yield sse({"type": "message_stop"}, "message_stop")
            return
        if usage:
            use = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            yield sse(
                {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": use,
                }
            )
        yield sse("[DONE]")
    finally:
        slot.release()


async def disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def build_app(names: list[str]) -> ASGIApp:
    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def models(_: Request) -> Response:
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "vllm"} for n in names]
        return JSONResponse({"object": "list", "data": data})

    async def metrics(_: Request) -> Response:
        global SCRAPES
        SCRAPES += 1
        await asyncio.sleep(METRICS_DELAY)
        if os.environ.get("FAKE_ENGINE_METRICS_BROKEN"):
            text = 'vllm:num_requests_running{model_name="x" 1\nnot prometheus at all {{{\n'
            return Response(text, media_type="text/plain; version=0.0.4")
        return Response(vllm_metrics(names[0]), media_type="text/plain; version=0.0.4")

    async def post(request: Request) -> Response:
        path = request.url.path
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error(400, "request body must be a JSON object", "BadRequestError")
        model = body.get("model", names[0])  # vLLM falls back to the served model if omitted
        if model not in names:
            return error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        if ASLEEP is not None and path in (CHAT, COMPLETIONS, MESSAGES):
            return error(500, "fake engine: generation sent while asleep", "InternalServerError")
        if isinstance(body.get("fake_status"), int):  # an engine-side error, e.g. a bad param
            return error(body["fake_status"], "fake engine error", "BadRequestError")
        prompt = count_tokens(body)
        if path == "/v1/messages/count_tokens":
            return JSONResponse({"input_tokens": prompt})
        if path == "/v1/embeddings":
            raw, vec = body.get("input", ""), [0.125 * k for k in range(8)]
            data = [
                {"object": "embedding", "index": i, "embedding": vec}
                for i in range(len(raw) if isinstance(raw, list) else 1)
            ]
            usage = {"prompt_tokens": prompt, "total_tokens": prompt}
            return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})
        if path not in (CHAT, COMPLETIONS, MESSAGES):
            return JSONResponse({"object": "echo", "path": path, "model": model, "body": body})
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        slot = Slot()
        if body.get("stream"):
            usage_on = bool((body.get("stream_options") or {}).get("include_usage"))
            return TrackedStream(stream(path, model, n, prompt, usage_on, slot), slot)
        try:
            # As vLLM's ``with_cancellation``: a client that leaves cancels the generation.
            work = asyncio.ensure_future(asyncio.sleep(float(body.get("fake_sleep", 0))))
            gone = asyncio.ensure_future(disconnected(request))
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
            work.cancel()
            gone.cancel()
            if gone.done() and not gone.cancelled():
                return Response(status_code=499)  # nobody is there to read it
            return JSONResponse(complete(path, model, n, prompt))
        finally:
            slot.release()

    posts = [
        CHAT,
        COMPLETIONS,
        MESSAGES,
        "/v1/messages/count_tokens",
        "/v1/embeddings",
        "/v1/responses",
        "/tokenize",
        "/detokenize",
    ]

    async def sleep(request: Request) -> Response:
        global ASLEEP, SLEEPS
        level = int(request.query_params.get("level", "1"))
        await asyncio.sleep(float(os.environ.get("FAKE_ENGINE_SLEEP_DELAY", "0")))
        if os.environ.get("FAKE_ENGINE_SLEEP_FAIL"):
            return error(500, "fake engine: sleep failed", "InternalServerError")
        ASLEEP, SLEEPS = level, SLEEPS + 1
        log(f"INFO fake engine asleep at level {level}")
        return Response(status_code=200)

    async def wake_up(_: Request) -> Response:
        global ASLEEP, WAKES, WOKEN
        await asyncio.sleep(float(os.environ.get("FAKE_ENGINE_WAKE_DELAY", "0")))
        fail_after = os.environ.get("FAKE_ENGINE_WAKE_FAIL_AFTER")
        if os.environ.get("FAKE_ENGINE_WAKE_FAIL") or (
            fail_after is not None and WAKES >= int(fail_after)
        ):
            return error(500, "fake engine: wake failed", "InternalServerError")
        if ASLEEP is not None:
            WAKES, WOKEN = WAKES + 1, True
        ASLEEP = None
        return JSONResponse({"status": "awake"})

    async def is_sleeping(_: Request) -> Response:
        return JSONResponse({"is_sleeping": ASLEEP is not None})

    routes = [Route("/health", health), Route("/v1/models", models), Route("/metrics", metrics)]
    if DEV_MODE:  # as vLLM: these routes exist only in development mode
        routes += [
            Route("/sleep", sleep, methods=["POST"]),
            Route("/wake_up", wake_up, methods=["POST"]),
            Route("/is_sleeping", is_sleeping, methods=["GET"]),
        ]
    app = Starlette(routes=routes + [Route(p, post, methods=["POST"]) for p in posts])

    async def with_headers(scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        rid = headers.get(b"x-request-id")
        saw_auth = b"yes" if b"authorization" in headers else b"no"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-fake-engine", b"1"), (b"x-fake-engine-saw-authorization", saw_auth)]
                extra += [(b"x-request-id", rid)] if rid else []
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await app(scope, receive, send_with_headers if scope["type"] == "http" else send)

    return with_headers


def access_log(app: ASGIApp, excluded: frozenset[str] | None) -> ASGIApp:
    """uvicorn's access-log line (``INFO: <client> - "GET /path HTTP/1.1" 200``) per request
    whose path is not ``excluded`` (``None``: no access log at all)."""

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or excluded is None or scope["path"] in excluded:
            await app(scope, receive, send)
            return

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                host, port = scope.get("client") or ("-", 0)
                request = f"{scope['method']} {scope['path']} HTTP/{scope['http_version']}"
                log(f'INFO:     {host}:{port} - "{request}" {message["status"]}')
            await send(message)

        await app(scope, receive, send_logged)

    return logged


def quiet_cancel(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Hide hypercorn's harmless CancelledError tracebacks when SIGTERM cuts open streams."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


async def main(args: argparse.Namespace, names: list[str]) -> None:
    asyncio.get_running_loop().set_exception_handler(quiet_cancel)
    config = Config()
    config.bind, config.accesslog = [f"{args.host}:{args.port}"], None
    config.loglevel, config.graceful_timeout = "WARNING", 0.5  # quiet stderr, fast SIGTERM
    # As vLLM: idle connections are closed after VLLM_HTTP_TIMEOUT_KEEP_ALIVE (uvicorn's 5 s).
    config.keep_alive_timeout = float(os.environ.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", "5"))
    exit_after = os.environ.get("FAKE_ENGINE_EXIT_AFTER")
    excluded = None
    if not args.disable_uvicorn_access_log:
        excluded = frozenset(p for p in args.disable_access_log_for_endpoints.split(",") if p)
    app = access_log(build_app(names), excluded)
    server = asyncio.create_task(serve(cast(Any, app), config))
    while exit_after:  # wait until the port accepts connections ("healthy"), then arm the crash
        try:
            (await asyncio.open_connection(args.host, args.port))[1].close()
            break
        except OSError:
            await asyncio.sleep(0.01)
    if exit_after:
        await asyncio.sleep(float(exit_after))
        log("ERROR fake engine: simulated crash (FAKE_ENGINE_EXIT_AFTER)")
        os._exit(7)
    await server


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="fake vLLM OpenAI server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--disable-access-log-for-endpoints", default="")
    parser.add_argument("--disable-uvicorn-access-log", action="store_true")
    args, unknown = parser.parse_known_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # hypercorn takes over once serving
    served = args.served_model_name or [args.model]
    log(f"INFO fake engine starting model={args.model} served={','.join(served)}")
    log(f"INFO fake engine ignoring args: {' '.join(unknown) or '-'}")
    fail = os.environ.get("FAKE_ENGINE_FAIL")
    if fail or args.model.startswith("/nonexistent"):
        log("INFO loading weights")
        log(f"ERROR fake engine: {fail or f'model source not found: {args.model}'}")
        sys.exit(3 if fail else 1)
    time.sleep(float(os.environ.get("FAKE_ENGINE_STARTUP_DELAY", "0")))
    spam = int(os.environ.get("FAKE_ENGINE_SPAM_LINES", "0"))
    for i in range(spam):  # a chatty engine: blocks here if nobody drains the pipe
        sys.stderr.write(f"WARNING spam line {i} " + "x" * 100 + "\n")
    sys.stderr.flush()
    log(f"INFO fake engine serving on http://{args.host}:{args.port}")
    asyncio.run(main(args, served))
