"""JSON built to hurt (nesting past the recursion limit, integers too long to read) is a 400.

Not a 500 with a traceback, on the relay's fast path, on ASGI and on the admin routes, and
cortex keeps serving afterwards.
"""

from __future__ import annotations

import pytest
from cortex_testing import cortex
from fake_neuron import FakeNeuron

DEEP = b"[" * 50_000  # under the admin routes' 64 KiB limit, far past any depth limit
LONG = b'{"model": "m1", "n": ' + b"9" * 5000 + b"}"
DEEP_IN_OBJECT = b'{"model": "m1", "messages": ' + b"[" * 25_000 + b"]" * 25_000 + b"}"


@pytest.mark.parametrize("body", [DEEP, LONG, DEEP_IN_OBJECT], ids=["deep", "long", "nested"])
@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/messages", "/admin/models/load", "/admin/models/unload"]
)
async def test_hostile_json_is_a_400(body: bytes, path: str) -> None:
    async with cortex(FakeNeuron("n1")) as c:
        response = await c.client.post(path, content=body)
        assert response.status_code == 400, response.text
        assert "not valid JSON" in response.json()["error"]["message"]
        assert (
            await c.client.post("/v1/chat/completions", json={"model": "m1"})
        ).status_code == 200
