"""A scripted neuron for the chaos suite: a small asyncio server speaking raw HTTP/1.1 bytes.

Run as its own process (``python chaos_neuron.py --port P --name N [--script JSON]``) so a
test can SIGSTOP or kill it, and so its work never competes with the test's event loop.

It speaks the neuron contract cortex polls (``/health``, ``/models``, ``/discovery``) and
answers inference POSTs by echoing a per-request nonce (the first message's ``content``), so
a test can tell whether every client got its own answer. The script says how it misbehaves:

``mode`` (inference only):
    ``good``               a correct answer (a stream when the body asks for one)
    ``garbage``            bytes that are not HTTP, then close
    ``double``             the right answer and an unasked-for second one, in one write
    ``truncate``           a head promising more body than is sent, then close
    ``truncate_stream``    a chunked event stream that stops after two events, then close
    ``silence``            read the request, answer nothing, keep the connection open
    ``silence_after_head`` send a stream's head and one event, then nothing
    ``close_after_body``   read the whole request, then close without a byte of answer
    ``close_when_reused``  answer a connection's first request; read its second, then close
    ``late_double``        the right answer, then a copy of it 2-200 ms later (``late``:
                           ``[min_s, max_s]``), while cortex may have sent the next request
    ``endless_head``       a status line, then header lines until cortex hangs up
    ``endless_event``      a stream's head and one event, then one event that never ends
    ``huge``               a whole answer of ``size`` bytes (its ``Content-Length`` says so)
``chunks``/``chunk_delay`` a stream's length and pace; ``chunks: 0`` streams until the
    client goes. ``crlf``: frame events with ``\\r\\n\\r\\n``. ``usage``: the token counts sent.
``models``, ``in_flight`` (reported per model; may be a bad value on purpose),
``devices`` (``/health``'s list; may hold non-objects on purpose), ``models_body`` (when set,
``/models`` answers these bytes as they are, JSON or not).
``flap``: ``[up_s, down_s]``: the listener alternates, and going down drops every connection.

Every inference answer echoes the request's ``x-cortex-request`` header, as the neuron does.
``models_size``: when set, ``/models`` answers that many bytes (a JSON list padded with
spaces), written in 1 MiB pieces.

``GET /-/stats`` answers what it saw (nonces per path, headers per nonce, streams open,
started, finished and cut by the peer, connections open, and those that carried inference); ``POST /-/script`` merges a JSON
object into the script. Neither is part of the neuron contract; cortex never asks for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import time
from typing import Any

ECHO = "x-cortex-request"
DEFAULT_SCRIPT: dict[str, Any] = {
    "mode": "good",
    "models": ["m1"],
    "in_flight": 0,
    "devices": [],
    "chunks": 3,
    "chunk_delay": 0.0,
    "crlf": False,
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    "flap": None,
    "models_body": None,
    "models_size": None,
    "late": [0.002, 0.2],
    "size": 0,
}


class Neuron:
    def __init__(self, name: str, port: int, script: dict[str, Any]) -> None:
        self.name = name
        self.port = port
        self.script = {**DEFAULT_SCRIPT, **script}
        self.started = time.monotonic()
        self.seen: dict[str, list[str]] = {}
        """Nonces of inference requests read in full, by path."""
        self.headers: dict[str, list[list[str]]] = {}
        """The request's headers (name, value), by nonce."""
        self.streams_open = 0
        self.streams_started = 0
        self.streams_finished = 0
        self.streams_cut = 0
        """Streams that ended because the peer closed the connection."""
        self.writers: set[asyncio.StreamWriter] = set()
        self.served: dict[asyncio.StreamWriter, int] = {}
        """Inference requests read on each open connection."""
        self.relaying: set[asyncio.StreamWriter] = set()
        """Open connections that have carried an inference request."""
        self.server: asyncio.Server | None = None
        self.echo = b""

    async def listen(self) -> None:
        self.server = await asyncio.start_server(
            self.connection, "127.0.0.1", self.port, limit=1 << 20, reuse_address=True, backlog=4096
        )

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()

    async def flap(self) -> None:
        while True:
            flap = self.script.get("flap")
            if not flap:
                await asyncio.sleep(0.1)
                continue
            up_s, down_s = flap
            await asyncio.sleep(up_s)
            if not self.script.get("flap"):
                continue
            await self.down()
            await asyncio.sleep(down_s)
            await self.listen()

    def stats(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "headers": self.headers,
            "streams_open": self.streams_open,
            "streams_started": self.streams_started,
            "streams_finished": self.streams_finished,
            "streams_cut": self.streams_cut,
            "connections": len(self.writers),
            "relay_connections": len(self.relaying),
        }

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while await self.exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            self.served.pop(writer, None)
            self.relaying.discard(writer)
            writer.transport.abort()

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; False when the connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        line, *lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = [tuple(h.split(":", 1)) for h in lines]
        fields = {n.strip().lower(): v.strip() for n, v in headers}
        body = b""
        if "content-length" in fields:
            body = await reader.readexactly(int(fields["content-length"]))
        if target.startswith("/-/"):
            return await self.control(writer, method, target, body)
        if method == "GET":
            return await self.contract(writer, target)
        self.relaying.add(writer)
        return await self.infer(reader, writer, target, body, headers)

    async def control(
        self, writer: asyncio.StreamWriter, method: str, target: str, body: bytes
    ) -> bool:
        if method == "POST" and target == "/-/script":
            self.script.update(json.loads(body))
            return await whole(writer, {"script": self.script})
        return await whole(writer, self.stats())

    async def contract(self, writer: asyncio.StreamWriter, target: str) -> bool:
        s = self.script
        if target == "/health":
            answer: Any = {
                "status": "ready",
                "uptime_secs": round(time.monotonic() - self.started, 1),
                "in_flight": self.streams_open,
                "devices": s["devices"],
            }
        elif target == "/models" and s["models_size"]:
            size = int(s["models_size"])
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n[]" % size
            )
            piece = b" " * (1 << 20)
            for at in range(2, size, len(piece)):
                writer.write(piece[: size - at])
                await writer.drain()
            return True
        elif target == "/models" and s["models_body"] is not None:
            body = str(s["models_body"]).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            return True
        elif target == "/models":
            answer = [
                {
                    "id": m,
                    "harness": "vllm",
                    "status": "ready",
                    "devices": [],
                    "vram_used_mb": 0,
                    "in_flight": s["in_flight"],
                    "error": None,
                }
                for m in s["models"]
            ]
        elif target == "/discovery":
            answer = {"hostname": self.name, "devices": [], "harnesses": ["vllm"]}
        else:
            return await whole(writer, {"error": {"message": "no such path"}}, 404)
        return await whole(writer, answer)

    async def infer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str,
        body: bytes,
        headers: list[tuple[str, ...]],
    ) -> bool:
        payload = json.loads(body)
        nonce = str(payload["messages"][0]["content"])
        self.seen.setdefault(path, []).append(nonce)
        self.headers[nonce] = [[n.strip().lower(), v.strip()] for n, v in headers]
        echo = next((v.strip() for n, v in headers if n.strip().lower() == ECHO), "")
        self.echo = b"X-Cortex-Request: %s\r\n" % echo.encode() if echo else b""
        mode = self.script["mode"]
        stream = bool(payload.get("stream"))
        served = self.served[writer] = self.served.get(writer, 0) + 1
        if mode == "close_when_reused" and served > 1:
            return False
        if mode == "endless_head":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            line = b"x-junk: " + b"j" * 1000 + b"\r\n"
            while True:  # until cortex hangs up (ConnectionError ends the connection)
                writer.write(line * 64)
                await writer.drain()
        if mode == "huge":
            size = int(self.script["size"])
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s"
                b"Content-Length: %d\r\n\r\n" % (self.echo, size)
            )
            piece = b"h" * (1 << 20)
            for at in range(0, size, len(piece)):
                writer.write(piece[: size - at])
                await writer.drain()
            return True
        if mode == "garbage":
            writer.write(b"\x00\xffNOT HTTP AT ALL\r\n\r\n\x13\x37")
            await writer.drain()
            return False
        if mode == "close_after_body":
            return False
        if mode == "silence":
            await reader.read()  # until cortex gives up and closes
            return False
        if mode == "truncate":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(b'Content-Length: 400\r\n\r\n{"id": "' + nonce.encode())
            await writer.drain()
            return False
        if stream or mode in ("truncate_stream", "silence_after_head"):
            return await self.stream(reader, writer, nonce, payload)
        answer = completion(nonce, self.script["usage"])
        if mode == "double":
            extra = completion("unasked-" + nonce, self.script["usage"])
            writer.write(encode_whole(answer, echo=self.echo) + encode_whole(extra))
            await writer.drain()
            return True
        if mode == "late_double":
            sent = encode_whole(answer, echo=self.echo)
            writer.write(sent)
            await writer.drain()
            low, high = self.script["late"]
            await asyncio.sleep(random.uniform(low, high))
            writer.write(sent)
            await writer.drain()
            return True
        return await whole(writer, answer, echo=self.echo)

    async def stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        nonce: str,
        payload: dict[str, Any],
    ) -> bool:
        s = self.script
        gap = b"\r\n\r\n" if s["crlf"] else b"\n\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n%s"
            b"Transfer-Encoding: chunked\r\n\r\n" % self.echo
        )
        self.streams_open += 1
        self.streams_started += 1
        gone = asyncio.ensure_future(reader.read(1))  # b"" when the peer closes
        try:
            i = 0
            if s["mode"] == "endless_event":
                event = {"id": nonce, "i": 0, "choices": [{"delta": {"content": nonce}}]}
                writer.write(chunk(b"data: " + json.dumps(event).encode() + gap))
                writer.write(chunk(b"data: "))
                piece = chunk(b"e" * 65536)
                while not gone.done():
                    writer.write(piece)
                    await writer.drain()
                self.streams_cut += 1
                return False
            while s["chunks"] == 0 or i < s["chunks"]:
                if s["mode"] == "truncate_stream" and i == 2:
                    return False
                if s["mode"] == "silence_after_head" and i == 1:
                    await gone
                    self.streams_cut += 1
                    return False
                event = {"id": nonce, "i": i, "choices": [{"delta": {"content": nonce}}]}
                writer.write(chunk(b"data: " + json.dumps(event).encode() + gap))
                await writer.drain()
                i += 1
                if s["chunk_delay"]:
                    await asyncio.wait({gone}, timeout=s["chunk_delay"])
                if gone.done():
                    self.streams_cut += 1
                    return False
            if (payload.get("stream_options") or {}).get("include_usage"):
                usage = {"id": nonce, "choices": [], "usage": s["usage"]}
                writer.write(chunk(b"data: " + json.dumps(usage).encode() + gap))
            writer.write(chunk(b"data: [DONE]" + gap) + b"0\r\n\r\n")
            await writer.drain()
            self.streams_finished += 1
            return True
        except ConnectionError:
            self.streams_cut += 1
            return False
        finally:
            self.streams_open -= 1
            gone.cancel()


def completion(nonce: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": nonce,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": nonce}}],
        "usage": usage,
    }


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def encode_whole(answer: Any, status: int = 200, echo: bytes = b"") -> bytes:
    body = json.dumps(answer).encode()
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        status,
        echo,
        len(body),
        body,
    )


async def whole(
    writer: asyncio.StreamWriter, answer: Any, status: int = 200, echo: bytes = b""
) -> bool:
    writer.write(encode_whole(answer, status, echo))
    await writer.drain()
    return True


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--script", default="{}")
    args = parser.parse_args()
    neuron = Neuron(args.name, args.port, json.loads(args.script))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await neuron.listen()
    flapping = asyncio.create_task(neuron.flap())
    await stop.wait()
    flapping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flapping
    await neuron.down()


if __name__ == "__main__":
    asyncio.run(main())
