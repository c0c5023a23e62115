"""The neuron's one exception tree, rendered by one handler as the OpenAI error envelope.

    NeuronError                      500 internal_error
    ├── BadRequest                   400 invalid_request_error
    │   └── UnknownHarness           400 invalid_request_error / unknown_harness
    ├── Unauthorized                 401 authentication_error
    ├── ModelNotFound                404 not_found_error / model_not_found
    ├── DoesNotFit                   409 insufficient_resources / does_not_fit
    │   └── NoSleep                  409 insufficient_resources / no_sleep (sleep off, or its
    │                                    host RAM / sleeper budget full: stop it instead)
    ├── LoadCancelled                409 conflict_error / load_cancelled (unloaded while loading)
    ├── Fenced                       409 conflict_error, with the neuron's ``state`` in the body
    │   ├── StaleEpoch               409 stale_epoch (the state moved on since the command's epoch)
    │   └── ModelBusy                409 model_busy (an unload or eviction of a model in use)
    ├── PayloadTooLarge              413 invalid_request_error / payload_too_large
    ├── EngineFailed                 502 engine_error / engine_failed (an engine would not start)
    ├── EngineUnavailable            502 engine_error / engine_unavailable (cannot reach it)
    ├── EngineTimeout                504 engine_error / engine_timeout (silent too long)
    └── Unavailable                  503 + Retry-After
        ├── ModelLoading             503 model_loading
        ├── ModelUnloading           503 model_unloading
        ├── CannotWake               503 cannot_wake (a request reached a sleeper that cannot
        │                                wake now: no room, or unloaded meanwhile)
        └── ShuttingDown             503 shutting_down

Every error a client can see is one of these; anything else is logged with its
traceback and answered as a bare 500 ``internal_error``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from starlette.responses import JSONResponse


class NeuronError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    code: ClassVar[str | None] = None
    retry_after: ClassVar[int | None] = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.extra: dict[str, Any] = {}
        """More top-level members of the answer's body (a :class:`Fenced` one's ``state``)."""

    def envelope(self) -> dict[str, Any]:
        return envelope(self.message, self.type, self.code, self.param)

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return JSONResponse(
            {**self.envelope(), **self.extra}, status_code=self.status, headers=headers
        )


class BadRequest(NeuronError):
    status = 400
    type = "invalid_request_error"


class UnknownHarness(BadRequest):
    code = "unknown_harness"


class Unauthorized(NeuronError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(NeuronError):
    status = 404
    type = "not_found_error"
    code = "model_not_found"


class DoesNotFit(NeuronError):
    status = 409
    type = "insufficient_resources"
    code = "does_not_fit"


class NoSleep(DoesNotFit):
    code = "no_sleep"


class LoadCancelled(NeuronError):
    status = 409
    type = "conflict_error"
    code = "load_cancelled"


class Fenced(NeuronError):
    """A command refused because of the neuron's state; the answer carries that state, so
    the sender (one cortex replica of several) plans again from it."""

    status = 409
    type = "conflict_error"


class StaleEpoch(Fenced):
    code = "stale_epoch"


class ModelBusy(Fenced):
    code = "model_busy"


class PayloadTooLarge(NeuronError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class EngineFailed(NeuronError):
    status = 502
    type = "engine_error"
    code = "engine_failed"


class EngineUnavailable(NeuronError):
    status = 502
    type = "engine_error"
    code = "engine_unavailable"


class EngineTimeout(NeuronError):
    status = 504
    type = "engine_error"
    code = "engine_timeout"


class Unavailable(NeuronError):
    status = 503
    type = "service_unavailable"
    retry_after = 5


class ModelLoading(Unavailable):
    code = "model_loading"


class ModelUnloading(Unavailable):
    code = "model_unloading"


class CannotWake(Unavailable):
    """A request reached a sleeping model that cannot wake now (no room, or it was unloaded
    or fenced meanwhile): a conflict of the fleet's, not of the client's, so 503 and
    Retry-After, never 409; cortex retries it on another neuron."""

    code = "cannot_wake"


class ShuttingDown(Unavailable):
    code = "shutting_down"
    retry_after = 10


def envelope(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
