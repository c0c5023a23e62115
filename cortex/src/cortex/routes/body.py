"""Reading a request body: bounded in size, one JSON object, with errors a user can act on."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.requests import Request

from cortex.errors import BadRequest, PayloadTooLarge

BodyReader = Callable[[int], Awaitable[bytes | None]]
"""``read(limit)``: the whole request body, or None once it grows past ``limit`` bytes."""


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes without reading it all."""
    return await read_bounded(request.scope["headers"], asgi_reader(request), limit)


def asgi_reader(request: Request) -> BodyReader:
    """``request``'s body as a :data:`BodyReader`."""
    return functools.partial(read_within, request)


async def read_bounded(
    headers: Iterable[tuple[bytes, bytes]], read: BodyReader, limit: int
) -> bytes:
    """The body from ``read``; PayloadTooLarge past ``limit``, before reading if declared."""
    for name, declared in headers:
        if name == b"content-length":
            if declared.isdigit() and int(declared) > limit:
                raise PayloadTooLarge(
                    f"request body is {declared.decode()} bytes; the limit is {limit}"
                )
            break
    body = await read(limit)
    if body is None:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return body


async def read_within(request: Request, limit: int) -> bytes | None:
    """An ASGI request's body, or None as soon as it is longer than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def parse_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object, or BadRequest saying what is wrong with it."""
    if not body.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:  # the C decoder's own depth check: ``[`` a hundred thousand times
        raise BadRequest("request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer past sys.get_int_max_str_digits()
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(value).__name__}")
    return value


async def read_object(request: Request, limit: int) -> dict[str, Any]:
    return parse_object(await read_body(request, limit))
