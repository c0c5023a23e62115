"""cortex's one exception tree, rendered in the envelope of the API the client called.

    CortexError                 500 api_error
    ├── BadRequest              400 invalid_request_error
    ├── Unauthorized            401 authentication_error
    ├── Forbidden               403 permission_error / forbidden (a user key on an admin path)
    │   └── ModelNotAllowed     403 model_not_allowed (a model outside the key's ``models``)
    ├── ModelNotFound           404 not_found_error / model_not_found
    │   └── Unplaceable         404 model_unplaceable (no neuron could ever hold it)
    ├── RouteNotFound           404 not_found_error
    ├── MethodNotAllowed        405 invalid_request_error
    ├── RequestTimeout          408 invalid_request_error / request_timeout (head, body too slow)
    ├── PayloadTooLarge         413 invalid_request_error / payload_too_large
    ├── HeadTooLarge            431 invalid_request_error / header_too_large
    ├── UpstreamError           502 api_error / upstream_error (no neuron could be reached)
    │   └── LoadFailed          502 load_failed (the neuron could not start the model)
    ├── UpstreamTimeout         504 api_error / upstream_timeout
    └── Unavailable             503 overloaded_error + Retry-After
        ├── ModelNotReady       503 model_not_ready (known, not ready anywhere)
        ├── NoCapacity          503 no_capacity (could fit, nothing can be evicted now)
        ├── StillLoading        503 model_loading (the cold start outlasted the wait)
        ├── TooManyConnections  503 too_many_connections (gateway.max_connections)
        ├── BodiesTooLarge      503 request_bodies_full (gateway.max_body_memory)
        └── ShuttingDown        503 shutting_down

OpenAI paths get ``{"error": {"message","type","param","code"}}``; Anthropic paths
(``/v1/messages*``) get ``{"type": "error", "error": {"type","message"}}``. After the first
byte of a stream, the same error is sent in-band in the stream's own format
(:func:`sse_error`), then the stream ends.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from starlette.responses import JSONResponse


class CortexError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = None
    retry_after: int | None = None

    def __init__(
        self, message: str, *, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if retry_after is not None:
            self.retry_after = retry_after

    def body(self, anthropic: bool) -> dict[str, Any]:
        if anthropic:
            return {"type": "error", "error": {"type": self.type, "message": self.message}}
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, path: str) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return JSONResponse(self.body(is_anthropic(path)), self.status, headers=headers)


class BadRequest(CortexError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(CortexError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(CortexError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class ModelNotAllowed(Forbidden):
    code = "model_not_allowed"


class ModelNotFound(CortexError):
    status = 404
    type = "not_found_error"
    code = "model_not_found"


class Unplaceable(ModelNotFound):
    code = "model_unplaceable"


class RouteNotFound(CortexError):
    status = 404
    type = "not_found_error"


class MethodNotAllowed(CortexError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLarge(CortexError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RequestTimeout(CortexError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class HeadTooLarge(CortexError):
    status = 431
    type = "invalid_request_error"
    code = "header_too_large"


class UpstreamError(CortexError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class LoadFailed(UpstreamError):
    code = "load_failed"


class UpstreamTimeout(CortexError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"


class Unavailable(CortexError):
    status = 503
    type = "overloaded_error"
    retry_after = 5


class ModelNotReady(Unavailable):
    code = "model_not_ready"


class NoCapacity(Unavailable):
    code = "no_capacity"


class StillLoading(Unavailable):
    code = "model_loading"


class ShuttingDown(Unavailable):
    code = "shutting_down"


class TooManyConnections(Unavailable):
    code = "too_many_connections"


class BodiesTooLarge(Unavailable):
    code = "request_bodies_full"


def upstream_message(body: bytes) -> str:
    """What a neuron's error answer says: its envelope's ``message``, else the body's start."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str):
        return message
    return body[:200].decode("utf-8", "replace") or "(empty answer)"


def is_anthropic(path: str) -> bool:
    return path.startswith("/v1/messages")


def sse_error(error: CortexError, path: str) -> bytes:
    """The in-band error event for a stream already under way."""
    body = json.dumps(error.body(is_anthropic(path)))
    if is_anthropic(path):
        return f"event: error\ndata: {body}\n\n".encode()
    return f"data: {body}\n\n".encode()
