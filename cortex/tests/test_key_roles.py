"""A user key cannot change or read the fleet: /admin/* and /fleet need an admin key (403)."""

from __future__ import annotations

import asyncio

import pytest
from cortex_testing import cortex
from fake_neuron import FakeNeuron

from cortex.cli import main

KEYS = {
    "api_keys": ["plain-user"],
    "keys": [
        {"name": "team-b", "key": "sk-team-b", "role": "user"},
        {"name": "ops", "key": "sk-ops", "role": "admin"},
    ],
}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize("key", ["sk-team-b", "plain-user"])
async def test_a_user_key_gets_403_on_admin_paths_and_changes_nothing(key: str) -> None:
    neuron = FakeNeuron("n1", models={"a": "ready"})
    async with cortex(neuron, catalogue=("a", "b"), auth=KEYS) as c:
        await c.poll()
        name = "team-b" if key == "sk-team-b" else "api_keys[0]"
        for method, path, body in [
            ("POST", "/admin/models/unload", {"model": "a"}),
            ("POST", "/admin/models/load", {"model": "b"}),
            ("GET", "/fleet", None),
            ("GET", "/no/such/path", None),  # deny by default: not a user path
        ]:
            response = await c.client.request(method, path, json=body, headers=bearer(key))
            assert response.status_code == 403, path
            assert response.json() == {
                "error": {
                    "message": f"{path} needs an admin key; the API key {name!r} is a user key",
                    "type": "permission_error",
                    "param": None,
                    "code": "forbidden",
                }
            }
        assert neuron.unloads == [] and neuron.loads == []
        assert neuron.models == {"a": "ready"}
        # What a user key is for still works.
        assert (await c.client.get("/v1/models", headers=bearer(key))).status_code == 200
        chat = await c.client.post("/v1/chat/completions", json={"model": "a"}, headers=bearer(key))
        assert chat.status_code == 200


async def test_an_admin_key_reads_and_changes_the_fleet() -> None:
    neuron = FakeNeuron("n1", models={"a": "ready"}, max_loaded_models=2)
    async with cortex(neuron, catalogue=("a", "b"), auth=KEYS) as c:
        await c.poll()
        fleet = await c.client.get("/fleet", headers=bearer("sk-ops"))
        assert fleet.status_code == 200
        assert fleet.json()["neurons"][0]["name"] == "n1"
        loaded = await c.client.post(
            "/admin/models/load", json={"model": "b"}, headers=bearer("sk-ops")
        )
        assert loaded.status_code == 200, loaded.text
        unloaded = await c.client.post(
            "/admin/models/unload", json={"model": "a"}, headers=bearer("sk-ops")
        )
        assert unloaded.status_code == 200
        assert neuron.unloads == ["a"]


async def test_cortex_status_load_and_unload_need_the_admin_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORTEX_API_KEY", raising=False)
    neuron = FakeNeuron("n1", models={"a": "ready"})
    async with cortex(neuron, catalogue=("a",), auth=KEYS) as c:
        await c.poll()
        endpoint = ["--endpoint", str(c.client.base_url)]
        for command in (["status"], ["unload", "a"], ["load", "a"]):
            monkeypatch.setenv("CORTEX_ADMIN_KEY", "sk-team-b")
            assert await asyncio.to_thread(main, [*command, *endpoint]) == 1
            err = capsys.readouterr().err
            assert "HTTP 403: " in err and "needs an admin key" in err, err
        assert neuron.unloads == []
        monkeypatch.setenv("CORTEX_ADMIN_KEY", "sk-ops")
        assert await asyncio.to_thread(main, ["status", *endpoint]) == 0
        assert "n1" in capsys.readouterr().out
        assert await asyncio.to_thread(main, ["unload", "a", *endpoint]) == 0
        assert neuron.unloads == ["a"]
