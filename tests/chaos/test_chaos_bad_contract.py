"""One malformed field in a neuron's ``/models`` or ``/health``, or a ``/models`` that is not a
JSON list at all (issue 14, item 12 and the typed contract): that neuron is marked down with
a logged reason, the poller goes on (the fleet view keeps changing), and the neuron comes
back once it answers well again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from chaos_support import CortexProcess, chat, cortex, neuron, nonce

MALFORMED = {
    "in_flight_not_a_number": {"in_flight": "lots"},
    "device_not_an_object": {"devices": ["gpu0"]},
    "device_fields_of_wrong_types": {"devices": [{"index": "zero", "vram_free_mb": "lots"}]},
    "models_not_json": {"models_body": "<html>502 Bad Gateway</html>"},
    "models_an_object_not_a_list": {"models_body": '{"id": "m2", "status": "ready"}'},
}


async def _until(what: str, gw: CortexProcess, check: Any, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            fleet = await gw.fleet()
            if check(fleet):
                return fleet
            await asyncio.sleep(0.2)
    raise AssertionError(what)  # unreachable: the timeout raises first


def _node(fleet: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in fleet["neurons"] if n["name"] == name)


@pytest.mark.parametrize("bad", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_bad_neuron_answer_never_stops_the_poller(
    tmp_path: Path, bad: dict[str, Any]
) -> None:
    with (
        neuron(tmp_path, "good", models=["m1"]) as good,
        neuron(tmp_path, "bad", models=["m2"]) as bad_one,
        cortex(tmp_path, [good, bad_one]) as gw,
    ):
        await bad_one.script(**bad)
        try:
            fleet = await _until("bad marked down", gw, lambda f: not _node(f, "bad")["up"])
        except TimeoutError:
            raise AssertionError(f"the bad neuron is still up: {await gw.fleet()}") from None
        assert _node(fleet, "bad")["error"], "marked down without a reason"
        assert any("bad" in line for line in gw.log().splitlines() if "WARNING" in line)

        # The poller is alive: a model the good neuron starts serving now shows up.
        await good.script(models=["m1", "m3"])
        try:
            await _until("m3 listed", gw, lambda f: "m3" in f["models"])
        except TimeoutError:
            raise AssertionError("the fleet view froze: the poller has stopped") from None
        mine = nonce()
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            answer = await client.post("/v1/chat/completions", json=chat(mine, model="m3"))
        assert answer.status_code == 200 and answer.json()["id"] == mine

        await bad_one.script(in_flight=0, devices=[], models_body=None)  # fixed: it comes back
        await _until("bad back up", gw, lambda f: _node(f, "bad")["up"])
        assert gw.alive()
