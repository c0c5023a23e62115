"""Before any token is checked, a connection is bounded: at most ``max_connections`` are open,
and one that has not made a request with the token ``head_timeout`` seconds after it was
accepted is closed, however slowly it keeps sending. The neuron keeps serving throughout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator

import h11
import httpx
import pytest
from hypercorn.config import Config
from neuron_testing import Running, free_port, running, settings_for
from starlette.types import Receive, Scope, Send

from neuron.listener import Listener, busy_answer
from neuron.metrics import NeuronMetrics

TOKEN = {"authorization": "Bearer s3cret"}


def closed(neuron: Running, reason: str) -> float:
    """``neuron_connections_closed_total{reason}``, as the neuron's ``/metrics`` shows it."""
    value = neuron.neuron.metrics.registry.get_sample_value(
        "neuron_connections_closed_total", {"reason": reason}
    )
    assert value is not None
    return value


ATTACKER = """
import asyncio, contextlib, json, sys, time

async def slowloris(port, every):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    writer.write(b"GET /models HTTP/1.1\\r\\nhost: neuron\\r\\n")
    try:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                if await asyncio.wait_for(reader.read(1), every) == b"":
                    break
            writer.write(b"x-slow: loris\\r\\n")
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()
    return time.monotonic() - began

async def main(port, count):
    lived = await asyncio.gather(*(slowloris(port, 0.2) for _ in range(count)))
    print(json.dumps(lived))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


async def slowloris(port: int, count: int) -> list[float]:
    """``count`` connections from another process, each trickling an endless head; the
    seconds each lived after it connected."""
    attacker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ATTACKER, str(port), str(count), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(attacker.communicate(), 60)
    assert attacker.returncode == 0
    lived: list[float] = json.loads(out)
    return lived


async def poll_health(neuron: Running, stop: asyncio.Event) -> list[float]:
    """Seconds each authenticated request took while the attack ran (one kept-alive connection)."""
    took = []
    while not stop.is_set():
        began = time.monotonic()
        response = await neuron.client.get("/models", headers=TOKEN)
        assert response.status_code == 200
        took.append(time.monotonic() - began)
        await asyncio.sleep(0.05)
    return took


async def test_300_slowloris_connections_are_closed_within_the_head_timeout() -> None:
    settings = settings_for(auth_token="s3cret", head_timeout=1.5)
    async with running(settings) as neuron:
        stop = asyncio.Event()
        poller = asyncio.create_task(poll_health(neuron, stop))
        lived = await slowloris(settings.port, 300)
        stop.set()
        took = await poller
        assert max(lived) < 1.5 + 1.0, sorted(lived)[-5:]
        assert max(took) < 1.0, max(took)
        assert closed(neuron, "head_timeout") == 300
        assert neuron.neuron.listener.open <= 1  # the poller's connection
        fresh = await neuron.client.get("/models", headers=TOKEN)
        assert fresh.status_code == 200


async def test_past_max_connections_a_connection_gets_503_and_trusted_ones_keep_serving() -> None:
    settings = settings_for(auth_token="s3cret", max_connections=20, head_timeout=2.0)
    async with running(settings) as neuron:
        assert (await neuron.client.get("/models", headers=TOKEN)).status_code == 200
        idle = [await asyncio.open_connection("127.0.0.1", settings.port) for _ in range(19)]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
        answer = await asyncio.wait_for(reader.read(), 2.0)  # the whole answer, then EOF
        writer.close()
        assert answer == busy_answer(20)
        assert closed(neuron, "max_connections") == 1
        assert (await neuron.client.get("/models", headers=TOKEN)).status_code == 200
        for r, _ in idle:  # closed by the head timeout, having sent nothing
            assert await asyncio.wait_for(r.read(), 3.0) == b""
        for _, w in idle:
            w.close()
        for _ in range(100):  # the server's side of each closes on its next loop turns
            if neuron.neuron.listener.open == 1:
                break
            await asyncio.sleep(0.01)
        assert neuron.neuron.listener.open == 1  # the trusted one
        async with running_client(settings.port) as fresh:
            assert (await fresh.get("/models", headers=TOKEN)).status_code == 200


async def test_a_request_without_the_token_closes_its_connection() -> None:
    settings = settings_for(auth_token="s3cret", head_timeout=1.0)
    async with running(settings) as neuron:
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
        writer.write(b"GET /models HTTP/1.1\r\nhost: neuron\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 2.0)
        assert answer.startswith(b"HTTP/1.1 401 ")
        assert b"\r\nconnection: close\r\n" in answer.lower()
        writer.close()
        # Token-less /health is answered, but does not make the connection trusted.
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
        began = time.monotonic()
        writer.write(b"GET /health HTTP/1.1\r\nhost: neuron\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        while await asyncio.wait_for(reader.read(65536), 3.0):
            pass
        assert 0.9 < time.monotonic() - began < 2.0
        writer.close()
        # A connection that made a request with the token outlives the head timeout.
        assert (await neuron.client.get("/models", headers=TOKEN)).status_code == 200
        expired = closed(neuron, "head_timeout")
        await asyncio.sleep(1.5)
        assert (await neuron.client.get("/models", headers=TOKEN)).status_code == 200
        assert closed(neuron, "head_timeout") == expired


def test_the_busy_answer_is_one_whole_http_response() -> None:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "neuron")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(busy_answer(7))
    head = conn.next_event()
    assert isinstance(head, h11.Response)
    assert head.status_code == 503
    headers = dict(head.headers)
    assert headers[b"retry-after"] == b"1"
    assert headers[b"connection"] == b"close"
    body = conn.next_event()
    assert isinstance(body, h11.Data)
    assert json.loads(body.data)["error"]["code"] == "too_many_connections"
    assert isinstance(conn.next_event(), h11.EndOfMessage)


@contextlib.asynccontextmanager
async def running_client(port: int) -> AsyncIterator[httpx.AsyncClient]:
    """A client with a pool of its own: its first request opens a new connection."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        yield client


async def test_a_connection_cut_at_shutdown_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """A request still running when the grace is over is cancelled quietly: on Python 3.11,
    asyncio logs a connection task that ends cancelled as "Exception in callback" (ERROR)."""
    entered = asyncio.Event()

    async def never_answers(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        entered.set()
        await asyncio.Event().wait()

    port = free_port()
    config = Config()
    config.bind, config.accesslog, config.graceful_timeout = [f"127.0.0.1:{port}"], None, 0.1
    listener = Listener(NeuronMetrics(), max_connections=8, head_timeout=5.0)
    stop = asyncio.Event()
    server = asyncio.create_task(listener.serve(never_answers, config, shutdown_trigger=stop.wait))
    for _ in range(100):
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        await asyncio.sleep(0.02)
    writer.write(b"GET /models HTTP/1.1\r\nhost: neuron\r\n\r\n")
    await asyncio.wait_for(entered.wait(), 5.0)
    stop.set()
    await asyncio.wait_for(server, 5.0)
    answer = await asyncio.wait_for(reader.read(), 2.0)  # then closed
    assert answer == b"" or answer.startswith(b"HTTP/1.1 5"), answer
    writer.close()
    await asyncio.sleep(0.05)  # the done-callbacks of the cancelled task run
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
