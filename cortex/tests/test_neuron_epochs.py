"""cortex reads the state a neuron names (instance, epoch, last use) and never lets an older
answer undo a newer one."""

from __future__ import annotations

import aiohttp
import pytest

from cortex.fleet import contract
from cortex.fleet.poller import Poller
from cortex.fleet.state import Fleet
from cortex.metrics import CortexMetrics
from cortex.settings import Catalogue, NeuronEntry, Poll


def info(model: str, status: str = "ready", **extra: object) -> dict[str, object]:
    return {"id": model, "status": status, "in_flight": 0, **extra}


def test_last_use_is_read_and_a_bad_value_is_unknown() -> None:
    good = contract.model(info("m", last_used=1.7e9, idle_s=3.5))
    assert (good["last_used"], good["idle_s"]) == (1.7e9, 3.5)
    for bad in (-1, "soon", float("nan"), float("inf"), [3]):
        read = contract.model(info("m", last_used=bad, idle_s=bad))
        assert (read["last_used"], read["idle_s"]) == (None, None), bad


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"X-Neuron-Instance": "abc", "X-Neuron-Epoch": "42"}, ("abc", 42)),
        ({"X-Neuron-Epoch": "42"}, (None, None)),
        ({"X-Neuron-Instance": "abc"}, (None, None)),
        ({"X-Neuron-Instance": "abc", "X-Neuron-Epoch": "-1"}, (None, None)),
        ({"X-Neuron-Instance": "abc", "X-Neuron-Epoch": "٣"}, (None, None)),
        ({"X-Neuron-Instance": "abc", "X-Neuron-Epoch": "9" * 5000}, (None, None)),
        ({"X-Neuron-Instance": "x" * 65, "X-Neuron-Epoch": "1"}, (None, None)),
    ],
)
def test_the_models_headers_name_a_state_or_nothing(
    headers: dict[str, str], named: tuple[str | None, int | None]
) -> None:
    assert contract.named(headers) == named


def test_a_state_that_breaks_the_contract_is_an_error_naming_where() -> None:
    with pytest.raises(contract.BreachError, match="epoch"):
        contract.named_state({"instance": "a", "epoch": "three", "models": []})
    assert contract.named_state(None) is None
    state = contract.state(b'{"instance":"a","epoch":3,"status":"ready","models":[]}')
    assert (state.instance, state.epoch, state.status) == ("a", 3, "ready")


async def test_an_older_epoch_never_undoes_a_newer_one_but_a_new_boot_does() -> None:
    fleet = Fleet.build([NeuronEntry(name="n1", endpoint="http://127.0.0.1:1")], Catalogue())
    node = fleet.nodes[0]
    async with aiohttp.ClientSession() as session:
        poller = Poller(fleet, session, Poll(), CortexMetrics())
        kept = poller.apply(
            node, {"m": info("m", idle_s=2.0, last_used=1.7e9)}, instance="boot1", epoch=5, asked=0
        )
        assert kept and node.epoch == 5 and node.status_of("m") == "ready"
        assert node.used_at("m") == 1.7e9  # the neuron's own number, not when it arrived
        late = poller.apply(node, {"m": info("m", "loading")}, instance="boot1", epoch=4, asked=0)
        assert not late and node.status_of("m") == "ready"
        same = poller.apply(node, {}, instance="boot1", epoch=5, asked=0.0)
        assert same and node.models == {}
        reboot = poller.apply(node, {"x": info("x")}, instance="boot2", epoch=0, asked=0.0)
        assert reboot and node.instance == "boot2" and set(node.models) == {"x"}
