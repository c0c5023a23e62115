"""The commands this cortex sends a neuron (``/models/load``, ``/models/unload``; the idle
``/models/sleep`` is sent through :meth:`Commands.post` by the housekeeper, which reads its
answer) and what their answers mean: the neuron state an answer carries is applied
to the :class:`Node` (:meth:`Commands.apply`); a refusal is :class:`Refused` (try another
neuron), a fenced one :class:`Fenced` (plan again). Every answer is read within
``poll.max_answer_bytes``; every command within ``loading.load_timeout``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aiohttp

from cortex.errors import LoadFailed, UpstreamError, upstream_message
from cortex.fleet import contract
from cortex.fleet.poller import Poller
from cortex.fleet.state import Fleet, Node
from cortex.metrics import CortexMetrics
from cortex.settings import CatalogueModel, CortexSettings
from cortex.upstream.client import read_at_most

log = logging.getLogger("cortex.loader")

JSON = {"Content-Type": "application/json"}
FENCED = frozenset({"stale_epoch", "model_busy"})


class Refused(Exception):
    """A neuron would not take the load now (409, 503, unreachable): try another one."""


class Fenced(Exception):
    """The neuron's state moved on from the plan (its new state is applied): plan again."""


class Commands:
    def __init__(
        self,
        fleet: Fleet,
        session: aiohttp.ClientSession,
        settings: CortexSettings,
        metrics: CortexMetrics,
        poller: Poller,
    ) -> None:
        self.fleet = fleet
        self._poller = poller
        self._instance = settings.instance
        self._session = session
        self._cfg = settings.loading
        self._max_answer = settings.poll.max_answer_bytes
        self._metrics = metrics

    async def post(self, node: Node, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        """``POST path`` on ``node``: the answer's status and body (at most
        ``poll.max_answer_bytes``), within ``loading.load_timeout``. Raises what aiohttp
        raises (``TooLarge`` included), and TimeoutError."""
        async with self._session.post(
            node.base + path,
            data=json.dumps(body),
            headers={**JSON, **node.headers(), **self._from()},
            timeout=aiohttp.ClientTimeout(total=self._cfg.load_timeout),
        ) as response:
            return response.status, await read_at_most(response, self._max_answer)

    async def load(
        self,
        node: Node,
        entry: CatalogueModel,
        *,
        epoch: int | None = None,
        instance: str | None = None,
        evict: tuple[str, ...] = (),
    ) -> tuple[dict[str, Any] | None, bool, bool, tuple[str, ...]]:
        """``POST /models/load`` on ``node`` (with ``epoch``, ``instance`` and ``evict`` when
        given).

        Returns the ready ``ModelInfo`` when the neuron sent no state (else the state is
        applied to ``node`` and this is ``None``), whether this load started the engine,
        whether it woke a sleeping one, and what the neuron evicted for it. Raises
        :class:`Fenced` (plan again), :class:`Refused` (try elsewhere) or
        :class:`LoadFailed` (the model itself).
        """
        body: dict[str, Any] = entry.spec()
        if epoch is not None:
            body |= {"epoch": epoch, "evict": list(evict)}
            if instance is not None:
                body["instance"] = instance
            log.info("loading %s on %s (epoch %d, evicting %s)", entry.id, node.name, epoch, evict)
        else:
            log.info("loading %s on %s", entry.id, node.name)
        asked = time.monotonic()
        try:
            status, raw = await self.post(node, "/models/load", body)
        except TimeoutError:
            raise LoadFailed(
                f"neuron {node.name} did not finish loading {entry.id} "
                f"in {self._cfg.load_timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise Refused(f"unreachable: {exc}") from None
        message = upstream_message(raw)
        answer = json_object(raw)
        named = self.apply(node, answer, asked)
        if status == 200:
            started = answer.get("started", True) is not False
            woken = answer.get("woken") is True
            evicted = answer.get("evicted")
            gone = (
                tuple(m for m in evicted if isinstance(m, str))
                if isinstance(evicted, list)
                else evict
            )
            if named:
                return None, started, woken, gone
            try:
                return contract.model(answer.get("model")), started, woken, gone
            except contract.BreachError:  # loaded all the same; the next poll says the rest
                ready = contract.model({"id": entry.id, "status": "ready"})
                return ready, started, woken, gone
        if status == 409 and named and error_code(answer) in FENCED:
            raise Fenced(message)
        if status in (409, 503):
            raise Refused(message)
        raise LoadFailed(f"neuron {node.name} could not load {entry.id}: {message}")

    def apply(self, node: Node, answer: dict[str, Any], asked: float) -> bool:
        """Keep the neuron state an answer carries; False if it carries none (or a bad one)."""
        try:
            state = contract.named_state(answer.get("state"))
        except contract.BreachError as exc:
            log.warning("neuron %s: %s", node.name, exc)
            return False
        if state is None:
            return False
        self._poller.apply(
            node,
            contract.by_id(state.models),
            instance=state.instance,
            epoch=state.epoch,
            asked=asked,
            ours_before=dict(node.model_in_flight),
            status=state.status,
        )
        return True

    def _from(self) -> dict[str, str]:
        return {"X-Cortex-Instance": self._instance}

    async def evict(self, node: Node, models: tuple[str, ...], reason: str) -> None:
        if models:
            await asyncio.gather(*(self.unload(node, m, reason) for m in models))

    async def unload(
        self,
        node: Node,
        model: str,
        reason: str,
        *,
        epoch: int | None = None,
        instance: str | None = None,
        idle: float | None = None,
        force: bool = False,
    ) -> bool:
        """Unload ``model`` from ``node``; False if the neuron did not have it.

        ``epoch``: the neuron state the decision was made from; ``instance``: the boot of
        the neuron it was made on (another boot refuses it); ``idle``: the neuron must
        have seen no use of it for this long; ``force``: requests in flight finish first
        (else the neuron refuses). Raises :class:`Fenced` (the neuron said no, and its state
        is applied) or :class:`UpstreamError`.
        """
        log.info("unloading %s from %s (%s)", model, node.name, reason)
        body: dict[str, Any] = {"model_id": model}
        if epoch is not None:
            body["epoch"] = epoch
        if instance is not None:
            body["instance"] = instance
        if idle is not None:
            body["idle_at_least"] = idle
        if force:
            body["force"] = True
        node.evicting.add(model)
        self.fleet.changed()
        asked = time.monotonic()
        try:
            status, raw = await self.post(node, "/models/unload", body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"neuron {node.name} could not unload {model}: {exc}") from None
        finally:
            node.evicting.discard(model)
            self.fleet.changed()
        answer = json_object(raw)
        named = self.apply(node, answer, asked)
        if status == 404:
            if not named:
                node.models.pop(model, None)
                self.fleet.changed()
                node.changed = time.monotonic()
            return False
        if status == 409 and named and error_code(answer) in FENCED:
            raise Fenced(upstream_message(raw))
        if status != 200:
            raise UpstreamError(
                f"neuron {node.name} could not unload {model}: {upstream_message(raw)}"
            )
        if not named:
            node.models.pop(model, None)
            self.fleet.changed()
            node.changed = time.monotonic()
        node.last_used.pop(model, None)
        self._metrics.evictions.labels(model, node.name, reason).inc()
        self._metrics.observe_node(node)
        return True


def error_code(answer: dict[str, Any]) -> str | None:
    """The OpenAI envelope's ``error.code`` in a neuron's answer, if any."""
    error = answer.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def json_object(body: bytes) -> dict[str, Any]:
    """A neuron's answer as a JSON object (``{}`` if it is not one)."""
    with contextlib.suppress(ValueError, RecursionError):
        data = json.loads(body)
        if isinstance(data, dict):
            return data
    return {}
