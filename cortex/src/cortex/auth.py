"""Who is calling and what they may do: API keys with roles, and refusing work while draining.

Keys are accepted as ``Authorization: Bearer <key>`` (OpenAI clients) or ``x-api-key``
(Anthropic clients), compared in constant time against every configured key. A key carries
a name (what metrics and logs show; never the secret), a role and, optionally, the models it
may use:

- ``user``: the inference paths and ``/v1/models``; anything else is 403.
- ``admin``: everything, ``/admin/*`` and ``/fleet`` included.

Without any configured key there is no authentication and every caller is the admin
:data:`ANONYMOUS`. The decision is made once per request by :meth:`Gatekeeper.refusal`
(over ASGI, and by cortex's own server for inference), which leaves the caller in
``scope["auth"]`` (Starlette's ``request.auth``); the relay asks that caller about the model
(:meth:`Caller.check_model`) once the body has named it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from cortex.errors import CortexError, Forbidden, ModelNotAllowed, ShuttingDown, Unauthorized
from cortex.settings import Auth

OPEN_PATHS = frozenset({"/health"})
ANONYMOUS_NAME = "_anonymous"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a configured key's name and rights, or :data:`ANONYMOUS`."""

    name: str
    admin: bool
    models: frozenset[str] | None = None
    """The models this caller may use; None: every model."""

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def check_model(self, model: str) -> None:
        """Raise :class:`ModelNotAllowed` unless this caller may use ``model``."""
        if not self.may_use(model):
            raise ModelNotAllowed(
                f"the API key {self.name!r} may not use model {model!r}", param="model"
            )


ANONYMOUS = Caller(ANONYMOUS_NAME, admin=True)


class Keyring:
    """The configured keys; :meth:`identify` finds the caller a presented key belongs to."""

    def __init__(self, auth: Auth) -> None:
        callers = [
            (key.encode(), Caller(f"api_keys[{i}]", admin=False))
            for i, key in enumerate(auth.api_keys)
        ]
        for entry in auth.keys:
            assert entry.key is not None  # noqa: S101 - the settings resolved every secret
            models = frozenset(entry.models) if entry.models is not None else None
            caller = Caller(entry.name, admin=entry.role == "admin", models=models)
            callers.append((entry.key.encode(), caller))
        self._callers = callers

    @property
    def enabled(self) -> bool:
        return bool(self._callers)

    @property
    def has_admin(self) -> bool:
        return any(caller.admin for _, caller in self._callers)

    def identify(self, given: bytes) -> Caller | None:
        # Compare against every key, always, so timing does not tell which one was close.
        found = None
        for key, caller in self._callers:
            if hmac.compare_digest(given, key):
                found = caller
        return found


class Gatekeeper:
    """Pure ASGI middleware in front of the whole API app; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keyring: Keyring,
        user_paths: Iterable[str],
        draining: list[bool],
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.user_paths = frozenset(user_paths)
        self.draining = draining  # one shared flag, flipped by the signal handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = self.refusal(scope)
            if error is not None:
                await error.response(scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> CortexError | None:
        """Why the request in ``scope`` is refused (no key, a bad key, a user key on a path
        that needs an admin, or draining), or None, with the caller left in ``scope["auth"]``.
        """
        path: str = scope["path"]
        if path in OPEN_PATHS:
            return None
        caller = ANONYMOUS
        if self.keyring.enabled:
            headers = dict(scope["headers"])
            given = headers.get(b"x-api-key") or _bearer(headers.get(b"authorization", b""))
            if not given:
                return Unauthorized(
                    "missing API key (send Authorization: Bearer <key> or x-api-key: <key>)"
                )
            found = self.keyring.identify(given)
            if found is None:
                return Unauthorized("invalid API key")
            caller = found
        scope["auth"] = caller
        # Deny by default: a path a user key may call is listed; everything else needs admin.
        if not caller.admin and path not in self.user_paths:
            return Forbidden(
                f"{path} needs an admin key; the API key {caller.name!r} is a user key"
            )
        if self.draining[0]:
            return ShuttingDown("this gateway is shutting down; retry shortly", retry_after=5)
        return None


def caller_of(scope: Scope) -> Caller:
    """The caller :class:`Gatekeeper` admitted (every request but ``/health`` has one)."""
    caller: Caller = scope["auth"]
    return caller


def _bearer(value: bytes) -> bytes:
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""
